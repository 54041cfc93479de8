"""An experiment folder read back for the report: the files in libtraffic/cache/<exp_id>/ (never Ray
objects; their names and schema are libtraffic.results'), plus the dataset's config.json for its
time_intervals when the settings do not fix it.

Every file is optional (an interrupted experiment has only some of them); what is missing is
collected in ``notes`` so the report can say so instead of failing.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from libtraffic.results import BEST_CONFIG_SUFFIX, RESULTS_JSON, SETTINGS_FILE, read_results, read_settings
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.jsonio import load_json

LOG_TYPES = ("loguniform", "lograndint")  # space types drawn on a log axis
DEFAULT_TIME_INTERVALS = 300


@dataclass
class Predictions:
    """Test-split predictions of the best model: arrays [samples, output_window, nodes, output_dim]."""

    prediction: np.ndarray
    truth: np.ndarray
    path: Path


@dataclass
class Experiment:
    """What the report draws; each part is None when its file is missing (see ``notes``)."""

    folder: Path
    exp_id: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] | None = None
    best_config: dict[str, Any] | None = None
    best_config_path: Path | None = None
    metrics: pd.DataFrame | None = None
    metrics_path: Path | None = None
    predictions: Predictions | None = None
    final_seeds: list[dict[str, Any]] = field(default_factory=list)
    time_intervals: int = DEFAULT_TIME_INTERVALS
    geo_ids: list[str] | None = None  # the sensors' ids in .geo order (the predictions' node order)
    notes: list[str] = field(default_factory=list)

    @cached_property
    def ordered(self) -> list[dict[str, Any]]:
        """Trials in the order they started; those without a start time (they never reported) last."""
        return sorted(self.trials, key=lambda r: (not _finite(r.get("started")), r.get("started") or 0.0,
                                                  str(r["trial_id"])))

    @property
    def metric(self) -> str:
        """What ranked the trials (hyper_tune.py --metric)."""
        return str(self.trials[0]["metric"]) if self.trials else "loss"

    @property
    def maximised(self) -> bool:
        """Whether a higher metric is better (R2, EVAR)."""
        return any(r.get("metric_mode") == "max" for r in self.trials)

    @property
    def metric_label(self) -> str:
        return "validation loss" if self.metric == "loss" else f"validation {self.metric}"

    def score(self, record: Mapping[str, Any]) -> Any:
        """A trial's best value of the ranking metric."""
        return record["best_value"]

    def curve(self, record: Mapping[str, Any]) -> list[float]:
        """A trial's ranking metric per epoch."""
        return list(record.get("metric_curve") or [])

    @cached_property
    def finished(self) -> list[dict[str, Any]]:
        """Trials with a value of the ranking metric (DONE, STOPPED EARLY or INTERRUPTED), best first."""
        done = [r for r in self.trials if r.get("status") != "ERROR" and _finite(self.score(r))]
        return sorted(done, key=lambda r: -self.score(r) if self.maximised else self.score(r))

    @property
    def best(self) -> dict[str, Any] | None:
        return self.finished[0] if self.finished else None

    @cached_property
    def space(self) -> dict[str, dict]:
        """Space-file entries by parameter; inferred as untyped entries when the settings file is missing."""
        if self.settings and isinstance(self.settings.get("space"), dict):
            return self.settings["space"]
        names: dict[str, dict] = {}
        for record in self.trials:
            for key in record.get("config", {}):
                names.setdefault(key, {})
        return names

    @property
    def params(self) -> list[str]:
        """Tuned parameters that took more than one value among the finished trials."""
        return [p for p in self.space if len({repr(r["config"].get(p)) for r in self.finished}) > 1]

    def is_log(self, param: str) -> bool:
        return self.space.get(param, {}).get("type") in LOG_TYPES

    def describe(self, key: str, default: str = "unknown") -> str:
        """A setting from the settings file (or the best-config file name) for the header."""
        if self.settings and self.settings.get(key) is not None:
            return str(self.settings[key])
        if key in ("model", "dataset") and self.best_config_path is not None:
            model, _, dataset = self.best_config_path.name.removesuffix(BEST_CONFIG_SUFFIX).partition("_")
            return model if key == "model" else dataset
        return default


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _newest(folder: Path, pattern: str) -> Path | None:
    """The newest match: evaluator files start with a sortable time stamp."""
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return found[-1] if found else None


def _read_results(exp: Experiment) -> None:
    results = read_results(exp.folder)
    if results is None:
        exp.notes.append(f"{RESULTS_JSON} is missing (no trial finished before the run stopped?): "
                         "no trial panels.")
        return
    exp.trials = trials = results.trials
    exp.final_seeds = results.final_seeds
    if results.interrupted:
        stopped = sum(r.get("status") == "INTERRUPTED" for r in trials)
        waiting = sum(r.get("status") == "NOT STARTED" for r in trials)
        exp.notes.append(f"The run was interrupted: this shows {len(trials)} trial(s) so far ({stopped} stopped mid-way, "
                         f"their curves end there; {waiting} not started) and no best model yet; hyper_tune.py "
                         f"--resume --exp_id {exp.exp_id} continues it.")


def _read_dataset_facts(exp: Experiment) -> None:
    """From the dataset's folder (data_path if it was fixed, else raw_data/<dataset>): the seconds between steps
    (unless fixed on the command line; else 300) and the sensors' geo_ids in .geo order (else None: sensors are
    named by index)."""
    fixed = (exp.settings or {}).get("fixed") or {}
    folder = paths.raw_data_dir(exp.describe("dataset"), str(fixed.get("data_path") or ""))
    info = {}
    if (folder / "config.json").is_file():
        info = load_json(folder / "config.json", "dataset config").get("info", {})
    if "time_intervals" in fixed or "time_intervals" in info:
        exp.time_intervals = int(fixed.get("time_intervals", info.get("time_intervals")))
    else:
        exp.notes.append(f"time_intervals unknown (dataset config {folder / 'config.json'} not found): "
                         f"assuming {DEFAULT_TIME_INTERVALS} s between steps.")
    geo = folder / f"{fixed.get('geo_file') or info.get('geo_file') or exp.describe('dataset')}.geo"
    if geo.is_file():
        try:
            exp.geo_ids = [str(g) for g in pd.read_csv(geo, usecols=["geo_id"])["geo_id"]]
        except (ValueError, pd.errors.ParserError, OSError):
            exp.geo_ids = None  # an unreadable .geo only costs the sensor names


def _read_metrics(exp: Experiment, path: Path) -> pd.DataFrame | None:
    """The test metrics table (horizons x metrics), or None with a note naming a damaged file."""
    try:
        table = pd.read_csv(path, index_col=0)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        exp.notes.append(f"The test metrics file {path} is damaged ({type(err).__name__}: {err}); no test metrics shown.")
        return None
    numeric = table.select_dtypes("number")
    if table.empty or numeric.shape != table.shape:
        exp.notes.append(f"The test metrics file {path} is damaged (no table of numbers per horizon); "
                         "no test metrics shown.")
        return None
    return table


def _read_predictions(exp: Experiment, path: Path) -> Predictions | None:
    """The saved test predictions, or None with a note naming a damaged file (empty, truncated, or
    without its 'prediction' and 'truth' arrays). Never unpickles: object arrays are refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("prediction", "truth") if k not in data.files]
            if missing:
                raise ValueError(f"it has no {' or '.join(missing)} array")
            prediction, truth = data["prediction"], data["truth"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        exp.notes.append(f"The predictions file {path} is damaged ({err}); no prediction figure.")
        return None
    if prediction.shape != truth.shape:
        exp.notes.append(f"The predictions file {path} is damaged (prediction {prediction.shape} and truth "
                         f"{truth.shape} differ); no prediction figure.")
        return None
    return Predictions(prediction, truth, path)


def load_experiment(exp_id: str | int) -> Experiment:
    """Read whatever the experiment folder holds; raises LibTrafficError if there is nothing to show."""
    folder = paths.experiment_dir(exp_id)
    if not folder.is_dir():
        raise LibTrafficError(f"No experiment folder {folder}; check --exp_id (folders are listed in "
                              f"{paths.cache_dir()}).")
    exp = Experiment(folder=folder, exp_id=str(exp_id))
    exp.settings = read_settings(folder)
    if exp.settings is None:
        exp.notes.append(f"Settings file missing ({SETTINGS_FILE}): the command and the search space are "
                         "unknown; tuned parameters are inferred from the trials' configs (no log axes).")
    _read_results(exp)
    exp.best_config_path = _newest(folder, f"*{BEST_CONFIG_SUFFIX}")
    if exp.best_config_path is not None:
        exp.best_config = load_json(exp.best_config_path, "best config file")
    elif exp.trials:
        exp.notes.append("The best-config file is missing (the run stopped before the end?).")
    evaluate = paths.evaluate_cache_dir(exp_id)
    exp.metrics_path = _newest(evaluate, "*.csv")
    if exp.metrics_path is not None:
        exp.metrics = _read_metrics(exp, exp.metrics_path)
    else:
        exp.notes.append(f"No test metrics in {evaluate} (the best model was not evaluated).")
    npz = _newest(evaluate, "*_predictions.npz")
    if npz is not None:
        exp.predictions = _read_predictions(exp, npz)
    _read_dataset_facts(exp)
    if not exp.trials and exp.metrics is None:
        raise LibTrafficError(f"{folder} holds neither {RESULTS_JSON} nor test metrics: nothing to report."
                              + "".join(f"\n{note}" for note in exp.notes if "damaged" in note))
    return exp
