"""--final_seeds K --final_top N: after the search, retrain the N best configurations K times each with
fresh seeds, on Ray like the trials, and score every run on the test split.

Each run is a Ray task with a trial's resources, at most --max_concurrent at once, receiving the data
the trials received (through the object store): it trains on the train split, keeps its best epoch by
validation (best_metric, i.e. --metric) and returns that model's test metrics per horizon. The seeds
come from --seed on a stream of their own (derive_seed(seed, configuration, run, FINAL_STREAM)), so they
differ from the search's trial seeds (derive_seed(seed, trial index)) and repeat with the same --seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.prepared import PreparedData, RawData, prepared_for
from libtraffic.executor import get_executor
from libtraffic.model import get_model
from libtraffic.pipeline.trial import trial_config
from libtraffic.utils.seed import derive_seed, set_random_seed


FINAL_STREAM = 7  # the last number of a final run's seed index: non-zero, so no trial index gives the same seed


@dataclass(frozen=True)
class FinalRun:
    rank: int  # 0 = the best configuration
    trial_id: str
    config: dict[str, Any]
    seed: int


def plan(records: list, top: int, runs: int, base_seed: int) -> list[FinalRun]:
    """K runs for each of the ``top`` best finished trials (records come best first)."""
    finished = [r for r in records if r.status != "ERROR" and r.epochs_run][:top]
    return [FinalRun(rank, r.trial_id, r.config, derive_seed(base_seed, rank, k, FINAL_STREAM))
            for rank, r in enumerate(finished) for k in range(runs)]


def train_and_test(sampled: dict[str, Any], seed: int, base_config: ConfigParser, shared: PreparedData | RawData,
                   threads: int) -> dict[str, float]:
    """One run (the body of a Ray task): train with ``seed``, keep the best epoch by validation, score the test split."""
    import torch

    torch.set_num_threads(threads)
    config = trial_config(base_config, sampled, seed)
    set_random_seed(seed)
    dataset = get_dataset(config, prepared_for(shared, config))
    train_data, valid_data, test_data = dataset.get_data()
    data_feature = dataset.get_data_feature()
    executor = get_executor(config, get_model(config, data_feature), data_feature)
    executor.train(train_data, valid_data)
    if executor.best_state is not None:  # the best epoch by validation, whatever load_best_epoch says
        executor.model.load_state_dict(executor.best_state["model_state_dict"])
    return executor.score(test_data)


def run_all(runs: list[FinalRun], base_config: ConfigParser, shared: PreparedData | RawData, cpus: int,
            gpus: float, max_concurrent: int, logger: logging.Logger) -> list[dict[str, Any]]:
    """Run every planned run on the connected Ray session; returns the results file's final_seeds entries
    ({"trial_id", "config", "runs": [{"seed", "test"} or {"seed", "error"}]}), best configuration first."""
    import ray

    from libtraffic.pipeline.tune_report import error_text

    task = ray.remote(train_and_test).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    data = ray.put(shared)
    logger.info("Retraining %d configuration(s) %d time(s) each with fresh seeds, %d at once",
                len({r.rank for r in runs}), len(runs) // max(len({r.rank for r in runs}), 1), max_concurrent)
    waiting, pending, done = list(range(len(runs))), {}, {}
    while waiting or pending:
        while waiting and len(pending) < max_concurrent:
            i = waiting.pop(0)
            pending[task.remote(runs[i].config, runs[i].seed, base_config, data, cpus)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            done[i] = {"seed": runs[i].seed, "test": ray.get(ready[0])}
        except ray.exceptions.RayError as err:
            done[i] = {"seed": runs[i].seed, "error": error_text(err)}
            logger.warning("Final run of trial %s with seed %d failed: %s", runs[i].trial_id, runs[i].seed, done[i]["error"])
    entries: dict[int, dict[str, Any]] = {}
    for i, run in enumerate(runs):
        entry = entries.setdefault(run.rank, {"trial_id": run.trial_id, "config": run.config, "runs": []})
        entry["runs"].append(done[i])
    return [entries[rank] for rank in sorted(entries)]


def summary(entries: list[dict[str, Any]]) -> str:
    """The terminal table: per configuration, test metrics per horizon as mean ± std over its runs."""
    from libtraffic.report.tables import mean_std_frame

    parts = []
    for rank, entry in enumerate(entries, 1):
        ok = [run for run in entry["runs"] if "test" in run]
        head = (f"#{rank} trial {entry['trial_id']} {entry['config']}: {len(ok)} of {len(entry['runs'])} runs "
                f"(seeds {', '.join(str(run['seed']) for run in entry['runs'])})")
        table = mean_std_frame(entry)
        parts.append(head + "\n" + (table.to_string() if isinstance(table, pd.DataFrame) else "  no run finished"))
    return "\n\n".join(parts)
