"""Parameter importance by fANOVA (Hutter et al., 2014), computed with Optuna's evaluator.

The finished trials are added to an in-memory Optuna study, each parameter with the distribution
of its space-file entry (or, without the settings file, the range of values the trials used);
``FanovaImportanceEvaluator`` fits a random forest from parameters to best validation loss and
returns each parameter's share of the loss variance (the shares sum to 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libtraffic.report.experiment import Experiment

MIN_TRIALS = 5  # fewer finished trials give a forest fitted to noise
SEED = 0  # the forest is random: a fixed seed keeps the report reproducible


def _float(entry: dict, values: list[float], log: bool = False):
    from optuna.distributions import FloatDistribution

    low, high = min([entry.get("lower", min(values)), *values]), max([entry.get("upper", max(values)), *values])
    return FloatDistribution(float(low), float(high), log=log)


def _int(entry: dict, values: list[int], log: bool = False):
    from optuna.distributions import IntDistribution

    low, high = min([entry.get("lower", min(values)), *values]), max([entry.get("upper", max(values)) - 1, *values])
    return IntDistribution(int(low), int(high), log=log)


def _categorical(entry: dict, values: list[Any]):
    from optuna.distributions import CategoricalDistribution

    return CategoricalDistribution(sorted({_category(v) for v in values}, key=repr))


# Space-file type -> Optuna distribution builder (entry, observed values). Bounds always include
# the observed values; quantised types use the plain range (their values need not sit on the grid
# Optuna would check), randn uses the observed range.
DISTRIBUTIONS: dict[str, Callable[[dict, list], Any]] = {
    "uniform": _float, "quniform": _float, "randn": lambda e, v: _float({}, v),
    "loguniform": lambda e, v: _float(e, v, log=True),
    "randint": _int, "qrandint": lambda e, v: _int({**e, "upper": e["upper"] + 1}, v),
    "lograndint": lambda e, v: _int(e, v, log=True),
    "choice": _categorical, "grid_search": _categorical,
}


def _category(value: Any) -> Any:
    """Optuna categories must be None, bool, int, float or str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _inferred(values: list[Any]):
    """Without a space-file entry: a range for numbers, categories for anything else."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return _int({"upper": max(values) + 1}, values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return _float({}, values)
    return _categorical({}, values)


def distribution(exp: Experiment, param: str):
    values = [r["config"][param] for r in exp.finished]
    entry = exp.space.get(param, {})
    build = DISTRIBUTIONS.get(entry.get("type"))
    return build(entry, values) if build else _inferred(values)


def importance(exp: Experiment) -> dict[str, float]:
    """Parameter -> fANOVA importance, largest first (needs >= MIN_TRIALS finished trials)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = exp.params
    dists = {p: distribution(exp, p) for p in params}
    study = optuna.create_study(direction="maximize" if exp.maximised else "minimize")
    for r in exp.finished:
        values = {p: r["config"][p] for p in params}
        values = {p: _category(v) if isinstance(dists[p], optuna.distributions.CategoricalDistribution) else v
                  for p, v in values.items()}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=exp.score(r)))
    scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=SEED), params=params)
    return {p: float(s) for p, s in scores.items()}
