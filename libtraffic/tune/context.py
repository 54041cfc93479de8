"""TuneRun: everything one tuning run works with, built once by the driver and handed around whole."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libtraffic.config import ConfigParser
from libtraffic.data.prepared import PreparedData, RawData
from libtraffic.executor.best_metric import BestMetric, parse_best_metric
from libtraffic.tune.options import TuneOptions
from libtraffic.tune.spaces import SearchSpace
from libtraffic.utils import paths


@dataclass
class TuneRun:
    """One tuning run.

    config: the merged base config (fixed values; exp_id claimed; best_metric = --metric); each trial
    derives its own from it. cli_keys: the config keys given as flags (recorded as fixed values).
    shared: what every trial receives through Ray's object store (prepared data, or the raw arrays
    when the space tunes data settings); set once the data is read.
    """

    config: ConfigParser
    space: SearchSpace
    options: TuneOptions
    storage: str  # absolute folder or URI holding Ray's experiment folders
    cli_keys: frozenset[str] = frozenset()
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("libtraffic"))
    shared: PreparedData | RawData | None = None
    #: --time_budget_s ended Tuner.fit() (set when it returns).
    budget_spent: bool = False
    #: What ranks trials and picks each trial's best epoch: config key best_metric (set by --metric);
    #: an unknown metric stops when the run is created.
    ranking: BestMetric = field(init=False)

    def __post_init__(self) -> None:
        self.ranking = parse_best_metric(self.config["best_metric"], self.config["output_window"], where="--metric")

    @property
    def exp_id(self) -> str | int:
        return self.config["exp_id"]

    @property
    def folder(self) -> Path:
        """libtraffic/cache/<exp_id>: results, best model and config, report."""
        return paths.experiment_dir(self.exp_id)

    @property
    def ray_folder(self) -> str:
        """Ray's experiment folder (local path or URI)."""
        return f"{self.storage}/{self.exp_id}"

    @property
    def expected_trials(self) -> int:
        """How many trials the search creates: --num_samples per grid point."""
        return self.options.num_samples * self.space.grid_size()

    @property
    def sampler_seed(self) -> int:
        """--seed for the searchers and samplers, which take 0 <= seed < 2**32: any integer --seed works, as
        in run_model.py (a negative one wraps around; 0 .. 2**32 - 1 are unchanged)."""
        return self.config["seed"] % 2**32

    @property
    def max_t(self) -> int:
        """The most epochs a trial can run (ASHA's and HyperBand's max_t)."""
        return int(self.space.upper_bound("max_epoch") or self.config["max_epoch"])


def trial_config(base: ConfigParser, sampled: Mapping[str, Any], seed: int) -> ConfigParser:
    """A fresh config for one trial (or final run): the sampled values on top of ``base``, its own seed;
    ``base`` is untouched."""
    return base.with_overrides({**sampled, "seed": seed}, source="search space")
