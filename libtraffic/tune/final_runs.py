"""--final_seeds K --final_top N: after the search, retrain the N best configurations K times each with
fresh seeds, on Ray like the trials, and score every run on the test split.

Each run goes to one of --max_concurrent Ray actors with a trial's resources, receiving the data
the trials received (through the object store): it trains on the train split, keeps its best epoch by
validation (best_metric, i.e. --metric) and returns that model's test metrics per horizon. The seeds
come from --seed on a stream of their own (derive_seed(seed, configuration, run, FINAL_STREAM)), so they
differ from the search's trial seeds (derive_seed(seed, trial index)) and repeat with the same --seed.

Each run is saved as soon as it returns (FinishedRuns: hyper_tune_final_runs.json in the experiment
folder, rewritten atomically), so a Ctrl-C or a crash during the final runs loses none that finished:
``--resume`` reuses every finished run whose trial, configuration and seed are in its plan and runs the
others (failed ones included). A new experiment never reads the file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch

from libtraffic.config import ConfigParser
from libtraffic.data.prepared import PreparedData, RawData
from libtraffic.pipeline.build import build_run
from libtraffic.report.tables import mean_std_frame
from libtraffic.results import TrialRecord
from libtraffic.tune.context import trial_config
from libtraffic.tune.interrupt import Terminated, ctrl_c_deferred
from libtraffic.tune.records import error_text
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.jsonio import load_json
from libtraffic.utils.safe_write import write_json
from libtraffic.utils.seed import derive_seed


FINAL_STREAM = 7  # the last number of a final run's seed index: non-zero, so no trial index gives the same seed


@dataclass(frozen=True)
class FinalRun:
    rank: int  # 0 = the best configuration
    trial_id: str
    config: dict[str, Any]
    seed: int


def plan(records: list[TrialRecord], top: int, runs: int, base_seed: int) -> list[FinalRun]:
    """K runs for each of the ``top`` best finished trials (records come best first)."""
    finished = [r for r in records if r.finished][:top]
    return [FinalRun(rank, r.trial_id, r.config, derive_seed(base_seed, rank, k, FINAL_STREAM))
            for rank, r in enumerate(finished) for k in range(runs)]


def train_and_test(sampled: dict[str, Any], seed: int, base_config: ConfigParser, shared: PreparedData | RawData,
                   threads: int) -> dict[str, float]:
    """One run (on a Ray actor, _Runner): train with ``seed``, keep the best epoch by validation, score the test split."""
    torch.set_num_threads(threads)
    run = build_run(trial_config(base_config, sampled, seed), shared)
    executor = run.executor
    executor.train(run.train_data, run.valid_data)
    if executor.best_state is not None:  # the best epoch by validation, whatever load_best_epoch says
        executor.model.load_state_dict(executor.best_state["model_state_dict"])
    return executor.score(run.test_data)


def describe(seeds: int, top: int, trials: int) -> str:
    """The dry run's words on the final runs that follow ``trials`` trials."""
    what = "(the best configurations retrained with fresh seeds, scored on the test split)"
    if top <= trials:
        return f"then --final_seeds {seeds} x --final_top {top} = {seeds * top} final run(s) {what}"
    return (f"then --final_seeds {seeds} x {trials} configuration(s) = {seeds * trials} final run(s) {what}; "
            f"--final_top {top} asks for more configurations than there are trials")


def _key(trial_id: str, config: dict[str, Any], seed: int) -> str:
    """What identifies a run across processes: its trial, configuration (as JSON) and seed."""
    return json.dumps([trial_id, config, seed], sort_keys=True)


class FinishedRuns:
    """The final runs that returned ({"trial_id", "config", "seed", "test" or "error", "wall_s"}), saved atomically
    after each one. A resumed experiment starts from the file's runs that have test metrics (failed ones
    run again); a new one starts empty and never reads the file."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.runs: dict[str, dict[str, Any]] = self._read() if resume and path.is_file() else {}

    def _read(self) -> dict[str, dict[str, Any]]:
        saved = load_json(self.path, "final-runs file")
        try:
            return {_key(r["trial_id"], r["config"], r["seed"]): r for r in saved["runs"] if "test" in r}
        except (KeyError, TypeError) as err:
            raise LibTrafficError(f"The final-runs file {self.path} is not one hyper_tune.py wrote (expected "
                                  '{"runs": [{"trial_id", "config", "seed", "test"}, ...]}); delete it to run every '
                                  "final run again.") from err

    def reusable(self, run: FinalRun) -> dict[str, Any] | None:
        """The saved outcome ({"seed", "test"}) of ``run``, if it finished before."""
        saved = self.runs.get(_key(run.trial_id, run.config, run.seed))
        return None if saved is None else {"seed": run.seed, "test": saved["test"]}

    def save(self, run: FinalRun, outcome: dict[str, Any], wall_s: float) -> None:
        """``wall_s``: seconds from handing the run to an actor until it returned (the first run on an actor
        includes the actor's start)."""
        self.runs[_key(run.trial_id, run.config, run.seed)] = {"trial_id": run.trial_id, "config": run.config,
                                                               **outcome, "wall_s": round(wall_s, 3)}
        self.write()

    def write(self) -> None:
        write_json(self.path, {"runs": list(self.runs.values())})


class _Runner:
    """A Ray actor training final runs one after another: one per --max_concurrent slot, so each slot
    pays for its process and imports once."""

    def run(self, sampled: dict[str, Any], seed: int, base_config: ConfigParser, shared: PreparedData | RawData,
            threads: int) -> dict[str, float]:
        return train_and_test(sampled, seed, base_config, shared, threads)


class _Runners:
    """The actors of the final runs, each with a trial's resources. Ended by ``end`` (ray.kill), also on
    Ctrl-C, so a shared cluster is freed at once. (Actors rather than tasks: ray.cancel of a task that is
    about to return can abort the driver in Ray 2.x, "Tried to complete task that was not pending".)"""

    def __init__(self, count: int, cpus: int, gpus: float) -> None:
        self._actor = ray.remote(_Runner).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)
        self.idle = [self._actor.remote() for _ in range(count)]
        self._all = list(self.idle)

    def replace(self) -> Any:
        """A new actor for one whose process died."""
        runner = self._actor.remote()
        self._all.append(runner)
        return runner

    def end(self) -> None:
        for runner in self._all:
            ray.kill(runner)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the final runs; ``entries``: those that had finished (as run_all returns them). The
    message says what is kept; the caller adds how to resume."""

    def __init__(self, message: str, finished_entries: list[dict[str, Any]], terminated: bool = False) -> None:
        super().__init__(message)
        self.entries = finished_entries
        self.terminated = terminated  # by SIGTERM, not Ctrl-C


def run_all(runs: list[FinalRun], base_config: ConfigParser, shared: PreparedData | RawData, cpus: int,
            gpus: float, max_concurrent: int, logger: logging.Logger, finished: FinishedRuns) -> list[dict[str, Any]]:
    """Run every planned run not in ``finished`` on the connected Ray session, saving each in ``finished``;
    returns the results file's final_seeds entries ({"trial_id", "config", "runs": [{"seed", "test"} or
    {"seed", "error"}]}), best configuration first, runs in plan order."""
    done = {i: outcome for i, run in enumerate(runs) if (outcome := finished.reusable(run)) is not None}
    if done:
        logger.info("Reusing %d of %d final run(s) finished before the interruption (%s); running the other %d",
                    len(done), len(runs), finished.path, len(runs) - len(done))
    finished.write()  # from now on the file holds exactly this run's finished runs
    todo = [i for i in range(len(runs)) if i not in done]
    if todo:
        configs = len({r.rank for r in runs})
        logger.info("Retraining %d configuration(s) %d time(s) each with fresh seeds: %d run(s), %d at once",
                    configs, len(runs) // configs, len(todo), max_concurrent)
        start, count = time.perf_counter(), len(todo)
        data = ray.put(shared)
        runners = _Runners(min(max_concurrent, count), cpus, gpus)
        try:
            _drain(runs, todo, runners, lambda runner, run: runner.run.remote(run.config, run.seed, base_config, data,
                                                                               cpus), done, finished, logger)
        finally:
            runners.end()
        logger.info("Final runs: %d run(s) in %.1f s", count, time.perf_counter() - start)
    return entries(runs, done)


def entries(runs: list[FinalRun], done: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The results file's final_seeds entries of the runs in ``done`` (plan index -> {"seed", "test" or
    "error"}): one per configuration that has any, best first, runs in plan order."""
    grouped: dict[int, dict[str, Any]] = {}
    for i, run in enumerate(runs):
        if i in done:
            entry = grouped.setdefault(run.rank, {"trial_id": run.trial_id, "config": run.config, "runs": []})
            entry["runs"].append(done[i])
    return [grouped[rank] for rank in sorted(grouped)]


def _drain(runs: list[FinalRun], todo: list[int], runners: _Runners, submit, done: dict[int, dict[str, Any]],
           finished: FinishedRuns, logger: logging.Logger) -> None:
    """Keep every runner busy with the runs of ``todo`` (plan indices) until all returned, saving each outcome
    in ``done`` and ``finished``. A Ctrl-C ends with the resume hint, saying what is kept."""
    pending: dict[Any, tuple[int, Any, float]] = {}
    try:
        while todo or pending:
            while todo and runners.idle:
                i, runner = todo.pop(0), runners.idle.pop()
                pending[submit(runner, runs[i])] = (i, runner, time.perf_counter())
            ready, _ = ray.wait(list(pending), num_returns=1)
            # A run that returned is recorded in memory and in its file together, or not at all: the
            # results file of an interruption lists exactly the runs a resume reuses.
            with ctrl_c_deferred():
                i, runner, submitted = pending.pop(ready[0])
                try:
                    done[i] = {"seed": runs[i].seed, "test": ray.get(ready[0])}
                except ray.exceptions.RayError as err:
                    done[i] = {"seed": runs[i].seed, "error": error_text(err)}
                    logger.warning("Final run of trial %s with seed %d failed: %s", runs[i].trial_id, runs[i].seed,
                                   done[i]["error"])
                    if isinstance(err, ray.exceptions.RayActorError):  # its process is gone
                        runner = runners.replace()
                finished.save(runs[i], done[i], time.perf_counter() - submitted)
                runners.idle.append(runner)
    except KeyboardInterrupt as stop:
        ok = sum("test" in outcome for outcome in done.values())
        raise Interrupted(f"The {ok} of {len(runs)} final run(s) that finished are kept too ({finished.path}); a "
                          "resume runs only the others.", entries(runs, done), isinstance(stop, Terminated)) from None


def summary(entries: list[dict[str, Any]]) -> str:
    """The terminal table: per configuration, test metrics per horizon as mean ± std over its runs."""
    parts = []
    for rank, entry in enumerate(entries, 1):
        ok = [run for run in entry["runs"] if "test" in run]
        head = (f"#{rank} trial {entry['trial_id']} {entry['config']}: {len(ok)} of {len(entry['runs'])} runs "
                f"(seeds {', '.join(str(run['seed']) for run in entry['runs'])})")
        table = mean_std_frame(entry)
        parts.append(head + "\n" + (table.to_string() if isinstance(table, pd.DataFrame) else "  no run finished"))
    return "\n\n".join(parts)
