"""--search_alg OptunaSearch over every space-file type: a define-by-run space for Ray's Optuna integration.

Ray's own conversion of a param_space to Optuna distributions has no normal distribution and no
grid, so the searcher gets the space as a function of the Optuna trial instead (Ray calls it once
per trial and passes the returned values on as the trial's config):

- uniform / loguniform / quniform -> suggest_float (log scale, step q); randint / lograndint /
  qrandint -> suggest_int over the same integers Ray would draw;
- choice -> suggest_categorical over the listed values (over their positions when the values are
  not plain scalars or two compare equal, e.g. lists, or 1 and 1.0);
- randn -> TPE models a uniform u in (0, 1); the trial gets mean + sd * Phi^-1(u), whose prior is
  exactly N(mean, sd);
- grid_search -> a categorical whose value is fixed per trial by enqueued trials: every combination
  of the grids runs --num_samples times (in Ray's order, as with BasicSearch) while TPE samples the
  other entries, and TPE and the importance analysis still see the grid value.

The object is pickled with the searcher state, so --resume continues the same study.
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist
from typing import Any

from libtraffic.pipeline.search_space import SearchSpace

# randn's uniform stays this far from 0 and 1, so Phi^-1(u) is finite (|z| <= 8.3 sd).
_RANDN_EPS = 1e-16
_NORMAL = NormalDist()


def _plain_choices(values: list) -> bool:
    """Optuna categories must be scalars; equal values (1, 1.0, True) would share one category."""
    if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        return False
    return not any(a == b for i, a in enumerate(values) for b in values[i + 1:])


def _categories(values: list) -> list:
    return list(values) if _plain_choices(values) else list(range(len(values)))


class OptunaSpace:
    """The define-by-run function: suggests every entry of a validated space on an Optuna trial."""

    def __init__(self, space: SearchSpace) -> None:
        self.entries = {key: dict(entry) for key, entry in space.entries.items()}

    def __call__(self, trial) -> dict[str, Any]:
        decoded = {}
        for key, entry in self.entries.items():
            value = self._suggest(trial, key, entry)
            if entry["type"] == "randn":
                decoded[key] = entry["mean"] + entry["sd"] * _NORMAL.inv_cdf(value)
            elif entry["type"] in ("choice", "grid_search") and not _plain_choices(entry["list"]):
                decoded[key] = entry["list"][value]
        return decoded  # overrides what was suggested under the same names

    @staticmethod
    def _suggest(trial, key: str, entry: dict) -> Any:
        kind = entry["type"]
        if kind in ("choice", "grid_search"):
            return trial.suggest_categorical(key, _categories(entry["list"]))
        if kind == "randn":
            return trial.suggest_float(key, _RANDN_EPS, 1 - _RANDN_EPS)
        lower, upper = entry.get("lower", 0), entry["upper"]
        if kind == "uniform":
            return trial.suggest_float(key, lower, math.nextafter(upper, -math.inf))
        if kind == "loguniform":
            return trial.suggest_float(key, lower, math.nextafter(upper, -math.inf), log=True)
        if kind == "quniform":
            return trial.suggest_float(key, lower, upper, step=entry["q"])
        if kind == "qrandint":
            q = int(entry["q"])
            return trial.suggest_int(key, math.ceil(lower / q) * q, math.floor(upper / q) * q, step=q)
        return trial.suggest_int(key, int(lower), int(upper) - 1, log=kind == "lograndint")


def grid_points(space: SearchSpace, num_samples: int) -> list[dict[str, Any]]:
    """The grid value of each trial, in run order: every combination, --num_samples times."""
    grids = {key: e["list"] for key, e in space.entries.items() if e["type"] == "grid_search"}
    if not grids:
        return []
    combos = list(itertools.product(*(_categories(values) for values in grids.values())))
    return [dict(zip(grids, combo)) for _ in range(num_samples) for combo in combos]


def optuna_searcher(space: SearchSpace, metric: str, mode: str, seed: int, num_samples: int):
    """Ray's OptunaSearch with TPE seeded by ``seed`` over ``space`` (param_space for the Tuner is then empty)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per run
    return OptunaSearch(space=OptunaSpace(space), metric=metric, mode=mode,
                        sampler=optuna.samplers.TPESampler(seed=seed),
                        points_to_evaluate=grid_points(space, num_samples) or None)
