"""What hyper_tune prints while Ray Tune runs.

By default one compact line per finished trial (its id, sampled values, best validation value and
epoch, epochs run, status, time) and one progress line (trials done / running / pending and about
how long the search has left). With --verbose, Ray's own status table as well, every 30 s, its
columns named as our final table names them, without Ray's "Result logdir" (a staging folder under
/tmp/ray, not where the results go).

Numbering is the one of the logs: trials trial_00000, trial_00001, ... (their folder names, whatever
the searcher) and epochs from 0, as LibCity logs them.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from libtraffic.tune import ray_private
from libtraffic.tune.context import TuneRun
from libtraffic.tune.records import error_text, trial_status

_ENDED = ("TERMINATED", "ERROR")
REPORT_EVERY_S = 30  # Ray's status table with --verbose


def duration(seconds: float) -> str:
    """'42 s', '3 min 20 s', '2 h 05 min': a duration as a person reads it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def value_text(value: Any) -> str:
    """A sampled value, short: floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(list(value)) if isinstance(value, tuple) else str(value)


def time_left(durations: Sequence[float], running_elapsed: Sequence[float], pending: int, slots: int) -> float | None:
    """Seconds the search has left, estimated from the finished trials' mean duration: what the running
    trials still need (the mean minus their time so far) plus a mean per pending trial, shared by the
    trials that run at once (``slots``: at most --max_concurrent, at most what is left). None before any
    trial has finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = sum(max(mean - elapsed, 0.0) for elapsed in running_elapsed) + pending * mean
    at_once = max(1, min(slots, len(running_elapsed) + pending))
    return work / at_once


def metric_label(metric: str) -> str:
    """The name the best-epoch value goes by in every table and line: 'best val loss', 'best val masked_MAE@12'."""
    return f"best val {metric}"


class TrialLines(tune.Callback):
    """A Ray Tune callback printing a line per finished trial and the progress of the search."""

    def __init__(self, params: Iterable[str], metric: str, expected_trials: int, max_concurrent: int) -> None:
        self.params = list(params)
        self.metric = metric
        self.expected = expected_trials
        self.max_concurrent = max_concurrent
        self._started: dict[str, float] = {}
        self._peak_running = 1

    def __getstate__(self) -> dict:  # Ray Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "_started": {}}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._started[trial.trial_id] = time.monotonic()
        self._peak_running = max(self._peak_running, sum(t.status == "RUNNING" for t in trials) + 1)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finished(trials, trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finished(trials, trial, failed=True)

    def _seconds(self, trial) -> float:
        """Time a trial has trained: Ray's total of its reports, or since it started here."""
        reported = float((trial.last_result or {}).get("time_total_s") or 0.0)
        started = self._started.get(trial.trial_id)
        return max(reported, time.monotonic() - started) if started is not None else reported

    def _finished(self, trials: list, trial, failed: bool) -> None:
        self._started.pop(trial.trial_id, None)
        print(self.trial_line(trial, failed), flush=True)
        ended = [t for t in trials if t is trial or t.status in _ENDED]
        running = [t for t in trials if t is not trial and t.status == "RUNNING"]
        pending = max(self.expected - len(ended) - len(running), 0)
        durations = [float(t.last_result["time_total_s"]) for t in ended if (t.last_result or {}).get("time_total_s")]
        left = time_left(durations, [self._seconds(t) for t in running], pending,
                         min(self.max_concurrent, self._peak_running))
        print(self.progress_line(len(ended), len(running), pending, left), flush=True)

    def trial_line(self, trial, failed: bool) -> str:
        """'trial_00002 DONE hidden_size=16 learning_rate=0.006 | best val loss 2.9815 at epoch 1 | 2 epochs, 7 s'."""
        result = trial.last_result or {}
        epochs = int(result["epoch"]) + 1 if "epoch" in result else 0
        status = trial_status(failed, epochs, int(result.get("max_epoch", epochs)), "TERMINATED")
        values = " ".join(f"{p}={value_text(trial.config.get(p))}" for p in self.params)
        took = f"{epochs} epoch{'' if epochs == 1 else 's'}, {duration(self._seconds(trial))}"
        if failed:
            return f"{trial} {status} {values} | failed after {took}: {_error(trial)}"
        best = f"{metric_label(self.metric)} {result.get('best_value', math.nan):.4f} at epoch {result.get('best_epoch')}"
        return f"{trial} {status} {values} | {best} | {took}"

    def progress_line(self, done: int, running: int, pending: int, left: float | None) -> str:
        if left is None or not (running or pending):
            estimate = ""
        else:
            estimate = f"; about {duration(left)} left" if left >= 0.5 else "; about to finish"
        return f"  trials: {done} of {self.expected} done, {running} running, {pending} pending{estimate}"


def _error(trial) -> str:
    """The last line of the error Ray wrote for a failed trial ('ExcType: message'), or ''."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace")
    return error_text(text) if text.strip() else ""


class StatusTable(tune.CLIReporter):
    """--verbose: Ray's status table, whose "Result logdir" line (Ray's staging folder under /tmp/ray) names
    our trial folders instead, and whose "Current best trial" names trials as we do."""

    def __init__(self, run: TuneRun) -> None:
        metric = run.ranking.name
        columns = {"epoch": "epoch", "loss": "val loss"}
        if metric == "loss":
            columns |= {"best_value": metric_label("loss"), "best_epoch": "best epoch"}
        else:
            columns |= {metric: f"val {metric}", "best_value": metric_label(metric), "best_epoch": "best epoch",
                        "best_loss": "val loss at best epoch"}
        super().__init__(parameter_columns=list(run.space.entries), metric_columns=columns,
                         max_report_frequency=REPORT_EVERY_S, sort_by_metric=True, max_column_length=24)
        self.trial_folders = run.ray_folder

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            super().report(trials, done, *sys_info)
        names = {t.trial_id: str(t) for t in trials}
        staging = sorted({str(t.local_experiment_path) for t in trials if t.local_experiment_path}, key=len, reverse=True)
        lines = []
        for line in table.getvalue().splitlines():
            if line.startswith(ray_private.STATUS_LOGDIR_LINE):
                continue
            if line.startswith(ray_private.STATUS_BEST_LINE):
                trial_id = line.removeprefix(ray_private.STATUS_BEST_LINE).split(" ", 1)[0]
                line = line.replace(trial_id, names.get(trial_id, trial_id), 1)
            lines.append(_our_folders(line, staging, self.trial_folders))
            if line.startswith("Number of trials:"):
                lines.insert(-1, f"Trial folders: {self.trial_folders}")
        print("\n".join(lines), flush=True)


def _our_folders(line: str, staging: list[str], ours: str) -> str:
    """``line`` with Ray's staging folders (the error files' column) replaced by our trial folders; a table
    cell keeps its width when ours is shorter."""
    for folder in staging:
        while folder in line:
            start = line.index(folder)
            end = line.find(" ", start)
            end = len(line) if end < 0 else end
            path = ours + line[start + len(folder):end]
            pad = max(end - start - len(path), 0)
            line = line[:start] + path + " " * pad + line[end:]
    return line
