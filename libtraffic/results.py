"""The results of a tuning experiment: file names, the trial-record schema, and reading and writing them.

This is the contract between tuning (libtraffic/tune, which writes) and the report
(libtraffic/report, which reads); neither imports the other, and nothing here imports Ray.

Files in ``libtraffic/cache/<exp_id>/``:
- ``hyper_tune_results.json``: the list of trial records (TrialRecord as a dict, best first). With
  --final_seeds it is ``{"trials": [...], "final_seeds": [...]}``; an interrupted run's is
  ``{"trials": [...], "final_seeds": [...], "interrupted": true}``. A final-seeds entry is
  ``{"trial_id", "config", "runs": [{"seed", "test": {"MAE@1": ..., ...}} or {"seed", "error"}]}``.
- ``hyper_tune_results.csv``: one row per trial (config keys as ``config.<key>``, curves as JSON).
- ``hyper_tune_experiment.json``: the command and settings the experiment started with.
- ``hyper_tune_final_runs.json``: every final run that returned, saved as it returns.
- ``<model>_<dataset>_best_config.json``: the best configuration, for run_model.py --config_file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.jsonio import load_json
from libtraffic.utils.safe_write import write_json, write_text

RESULTS_JSON = "hyper_tune_results.json"
RESULTS_CSV = "hyper_tune_results.csv"
SETTINGS_FILE = "hyper_tune_experiment.json"
FINAL_RUNS_FILE = "hyper_tune_final_runs.json"
BEST_CONFIG_SUFFIX = "_best_config.json"

#: Statuses of a trial: it ran to max_epoch, was stopped early (scheduler or early stopping), failed,
#: or had not ended when the run stopped (with epochs: by Ctrl-C, or by --time_budget_s; or none).
STATUSES = ("DONE", "STOPPED EARLY", "ERROR", "INTERRUPTED", "TIME BUDGET", "NOT STARTED")


@dataclass
class TrialRecord:
    """One trial of a search, as the results files hold it."""

    trial_id: str
    config: dict[str, Any]  # the sampled values
    seed: int | None  # the trial's seed; None when it never ran
    status: str  # one of STATUSES
    epochs_run: int
    best_epoch: int | None  # the epoch with the best `metric`
    best_loss: float  # the validation loss of best_epoch
    loss_curve: list[float] = field(default_factory=list)  # validation loss per epoch
    metric: str = "loss"  # what ranks trials (--metric)
    metric_mode: str = "min"  # "max" when higher is better (R2, EVAR)
    best_value: float = math.nan  # `metric` at best_epoch
    metric_curve: list[float] = field(default_factory=list)  # `metric` per epoch
    epoch_seconds: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    error: str = ""
    node: str = ""  # Ray node ID the trial last ran on (`ray list nodes`)
    started: float | None = None  # when the trial first started (unix seconds); None: it never ran

    @property
    def finished(self) -> bool:
        """It has a best epoch: a candidate for the best trial."""
        return self.status != "ERROR" and self.epochs_run > 0


#: What the report needs of every record in a results file.
REQUIRED_KEYS = ("trial_id", "config", "status", "best_loss", "metric", "best_value")
_CURVES = ("loss_curve", "metric_curve", "epoch_seconds")


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """Best first by each record's metric (lowest, or highest for R2 / EVAR); trials without a value last."""
    def key(r: TrialRecord) -> tuple[bool, float]:
        missing = math.isnan(r.best_value)
        return missing, 0.0 if missing else (-r.best_value if r.metric_mode == "max" else r.best_value)

    return sorted(records, key=key)


def best_config_path(folder: Path, model: str, dataset: str) -> Path:
    return folder / f"{model}_{dataset}{BEST_CONFIG_SUFFIX}"


def write_results(folder: Path, records: list[TrialRecord], finals: list[dict[str, Any]] | None = None,
                  interrupted: bool = False) -> tuple[Path, Path]:
    """The results json and csv in ``folder``; returns (csv, json) paths."""
    json_path, csv_path = folder / RESULTS_JSON, folder / RESULTS_CSV
    trials = [asdict(r) for r in records]
    if interrupted:
        write_json(json_path, {"trials": trials, "final_seeds": finals or [], "interrupted": True})
    else:
        write_json(json_path, {"trials": trials, "final_seeds": finals} if finals else trials)
    rows = [{**{k: v for k, v in asdict(r).items() if k != "config" and k not in _CURVES},
             **{f"config.{k}": v for k, v in r.config.items()}, **{k: json.dumps(getattr(r, k)) for k in _CURVES}}
            for r in records]
    write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    return csv_path, json_path


@dataclass
class Results:
    """What hyper_tune_results.json holds: trial records as dicts, the final-seeds entries, and whether
    the run that wrote it was interrupted."""

    trials: list[dict[str, Any]]
    final_seeds: list[dict[str, Any]]
    interrupted: bool
    path: Path


def read_results(folder: Path) -> Results | None:
    """The results file of ``folder``, or None when it does not exist; a file of another shape is refused."""
    path = folder / RESULTS_JSON
    if not path.is_file():
        return None
    raw = load_json(path, "results file")
    trials = raw.get("trials") if isinstance(raw, dict) else raw
    if not isinstance(trials, list) or not all(isinstance(r, dict) and all(k in r for k in REQUIRED_KEYS)
                                              for r in trials):
        raise LibTrafficError(f"{path} is not a tuning results file: expected a list of trial records with "
                              f"{', '.join(REQUIRED_KEYS)} (as hyper_tune.py writes them).")
    extra = raw if isinstance(raw, dict) else {}
    return Results(trials, list(extra.get("final_seeds") or []), bool(extra.get("interrupted")), path)


def read_settings(folder: Path) -> dict[str, Any] | None:
    """The experiment's settings file, or None when it does not exist."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return None
    settings = load_json(path, "experiment settings file")
    if not isinstance(settings, dict):
        raise LibTrafficError(
            f"The experiment settings file {path} holds a JSON {type(settings).__name__}, not the object hyper_tune.py "
            "writes (command, search space, options): it was damaged or replaced. Restore it, or start a new "
            "experiment with a new --exp_id.")
    return settings
