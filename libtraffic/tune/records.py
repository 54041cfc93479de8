"""Ray Tune's results -> one TrialRecord per trial (libtraffic.results holds the schema and the files)."""

from __future__ import annotations

import math
from pathlib import Path

from ray.tune import ExperimentAnalysis

from libtraffic.executor.best_metric import BestMetric
from libtraffic.results import TrialRecord, ranked
from libtraffic.utils.values import plain

#: Ray's states of a trial that has not ended: in an interrupted (or time-budgeted) run.
_NOT_ENDED = ("PENDING", "RUNNING", "PAUSED")


def error_text(error: BaseException | str | None) -> str:
    """The last line of an error Ray wrapped, or of the error file it wrote ("ExcType: message"), or ''."""
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def trial_id(result) -> str:
    """A trial's id everywhere we print or save it: its folder name, trial_<number> (trial.TrialNames)."""
    return Path(result.path or "").name


def _ray_trials(results) -> dict[str, tuple[str, dict]]:
    """Ray's state (TERMINATED, ERROR, PENDING, RUNNING, PAUSED) and sampled config of each trial by trial
    folder, read back from the experiment's saved state (Ray's Result objects carry neither for a trial
    that never reported)."""
    analysis = ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    return {trial.path: (trial.status, dict(trial.config or {})) for trial in analysis.trials}


def trial_status(failed: bool, epochs: int, max_epoch: int, state: str, budget_spent: bool = False) -> str:
    """DONE, STOPPED EARLY (by the scheduler or early stopping), ERROR; for a trial that had not ended when
    the run stopped: INTERRUPTED (it has epochs; TIME BUDGET when --time_budget_s stopped the run) or
    NOT STARTED (no epoch)."""
    if failed:
        return "ERROR"
    if not epochs:
        return "NOT STARTED"
    if state in _NOT_ENDED:
        return "TIME BUDGET" if budget_spent else "INTERRUPTED"
    return "DONE" if epochs >= max_epoch else "STOPPED EARLY"


def _record(result, metric: BestMetric, state: str, sampled: dict, budget_spent: bool) -> TrialRecord:
    df = result.metrics_dataframe
    has_rows = df is not None and len(df) and "loss" in df and metric.name in df
    if has_rows:  # a resumed trial may repeat the epochs after its checkpoint: keep the last run
        df = df.drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
    losses = [float(x) for x in df["loss"]] if has_rows else []
    values = [float(x) for x in df[metric.name]] if has_rows else []
    pick = max if metric.mode == "max" else min
    best_i = pick(range(len(values)), key=values.__getitem__) if values else None
    max_epoch = int(df["max_epoch"].iloc[-1]) if has_rows else 0
    return TrialRecord(
        trial_id=trial_id(result),
        config={k: plain(v) for k, v in (result.config or sampled).items()},
        status=trial_status(bool(result.error), len(losses), max_epoch, state, budget_spent),
        seed=int(df["trial_seed"].iloc[0]) if has_rows else None, epochs_run=len(losses),
        best_epoch=int(df["epoch"].iloc[best_i]) if best_i is not None else None,
        best_loss=losses[best_i] if best_i is not None else math.nan, loss_curve=losses, metric=metric.name,
        metric_mode=metric.mode, best_value=values[best_i] if best_i is not None else math.nan, metric_curve=values,
        epoch_seconds=[float(x) for x in df["epoch_time"]] if has_rows else [],
        wall_time_s=float(df["time_total_s"].iloc[-1]) if has_rows else 0.0, error=error_text(result.error),
        node=str(df["node"].iloc[-1]) if has_rows and "node" in df else "",
        started=float(df["started"].min()) if has_rows and "started" in df else None,
    )


def unfinished(results, expected_trials: int) -> bool:
    """Trials still pending, running or paused when fit() returned, or fewer trials than the search would
    create. Read from the experiment's saved state: after a graceful stop Ray marks every trial it holds in
    memory TERMINATED, the ones that never started included."""
    trials = _ray_trials(results)
    return len(trials) < expected_trials or any(state in _NOT_ENDED for state, _ in trials.values())


def collect_records(results, metric: BestMetric, budget_spent: bool = False) -> list[TrialRecord]:
    """One record per trial, best first by ``metric``; each trial's best epoch is its best by ``metric``.
    ``budget_spent``: --time_budget_s ended the run (the trials it stopped are TIME BUDGET)."""
    trials = _ray_trials(results)
    return ranked([_record(result, metric, *trials.get(result.path, ("TERMINATED", {})), budget_spent)
                   for result in results])
