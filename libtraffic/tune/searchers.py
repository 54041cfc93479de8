"""--search_alg and --scheduler: name -> how to build it, one row each.

The concurrency limit is part of every searcher (LibCity applied it to HyperOpt/BayesOpt only);
schedulers count epochs (training_iteration), up to the largest max_epoch a trial can get.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from libtraffic.tune.context import TuneRun
from libtraffic.tune.spaces import SearchSpace

# Optuna, HyperOpt and BayesOpt (with scikit-learn) are imported by the searcher that uses them only:
# together they took ~1.1 s of CPU at the start of every run, dry runs included.


def _basic(run: TuneRun) -> Any:
    return BasicVariantGenerator(random_state=run.sampler_seed, max_concurrent=run.options.max_concurrent)


def _limited(searcher: Any, run: TuneRun) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(searcher, max_concurrent=run.options.max_concurrent)


def optuna_searcher(space: SearchSpace, metric: str, mode: str, seed: int, num_samples: int) -> Any:
    """Optuna's TPE (an OptunaSearch) seeded with ``seed`` over the whole space (every type, see
    spaces.py); grid values are fixed per trial by enqueued trials, each grid point ``num_samples`` times."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per run
    return OptunaSearch(space=space.optuna_space(), metric=metric, mode=mode,
                        sampler=optuna.samplers.TPESampler(seed=seed),
                        points_to_evaluate=space.grid_points(num_samples) or None)


def _optuna(run: TuneRun) -> Any:
    best = run.ranking
    return _limited(optuna_searcher(run.space, best.name, best.mode, run.sampler_seed, run.options.num_samples), run)


def _hyperopt(run: TuneRun) -> Any:
    from ray.tune.search.hyperopt import HyperOptSearch

    return _limited(HyperOptSearch(random_state_seed=run.sampler_seed), run)


def _bayesopt(run: TuneRun) -> Any:
    from ray.tune.search.bayesopt import BayesOptSearch

    return _limited(BayesOptSearch(random_state=run.sampler_seed), run)


@dataclass(frozen=True)
class Searcher:
    build: Callable[[TuneRun], Any]
    own_space: bool = False  # given the space itself (the Tuner's param_space stays empty; grids are its trials)


SEARCHERS: dict[str, Searcher] = {
    "BasicSearch": Searcher(_basic),
    "HyperOpt": Searcher(_hyperopt),
    "BayesOptSearch": Searcher(_bayesopt),
    "OptunaSearch": Searcher(_optuna, own_space=True),
}

SCHEDULERS: dict[str, Callable[[int], Any]] = {
    "FIFO": lambda max_t: FIFOScheduler(),
    "ASHA": lambda max_t: ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=1,
                                        reduction_factor=2),
    "MedianStoppingRule": lambda max_t: MedianStoppingRule(time_attr="training_iteration", grace_period=1,
                                                           min_samples_required=2),
    "HyperBand": lambda max_t: HyperBandScheduler(time_attr="training_iteration", max_t=max_t, reduction_factor=2),
}
