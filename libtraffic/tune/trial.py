"""One tuning trial: the function trainable Ray Tune runs."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from libtraffic.config import ConfigParser
from libtraffic.data.prepared import PreparedData, RawData
from libtraffic.pipeline.build import build_run
from libtraffic.tune import ray_private
from libtraffic.tune.context import trial_config
from libtraffic.tune.session import quiet_exit_in_callbacks
from libtraffic.utils.seed import derive_seed

CHECKPOINT_FILE = "state.pt"
TRIAL_DIR_PREFIX = "trial_"


@dataclass(frozen=True)
class TrialSettings:
    base_seed: int
    threads: int


@dataclass(frozen=True)
class TrialNames:
    """Ray's trial_dirname_creator and trial_name_creator: a trial is 'trial_<number>' in its folder name,
    in Ray's status table and in everything we print and save, numbered from 0 in creation order
    whatever the searcher (as epochs are). The same on every run and resume, so seeds derived from it
    repeat. ``first``: the creation index of the searcher's first trial (ray_private.first_creation_index)."""

    first: int = 0

    def __call__(self, trial) -> str:
        return f"{TRIAL_DIR_PREFIX}{ray_private.creation_index(trial) - self.first:05d}"


def trial_index(context) -> int:
    """Number of the running trial (from 0), from the folder name TrialNames gave it."""
    return int(Path(context.get_trial_dir()).name.removeprefix(TRIAL_DIR_PREFIX))


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The executor state a trial checkpoint holds (tensors and plain values only: no code runs)."""
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)


def train_trial(sampled: dict[str, Any], base_config: ConfigParser, shared: PreparedData | RawData,
                settings: TrialSettings) -> None:
    """Train one sampled configuration, reporting its validation loss (and best_metric, when that is an
    evaluator metric) each epoch.

    ``shared`` comes through Ray's object store: the driver's prepared data, or (when the space
    tunes data settings) the raw arrays, cut and scaled here for this trial's settings. No file of
    the driver's machine is opened, so the trial runs on any node of a cluster.

    A checkpoint (the executor's state dict) goes with every epoch that improves best_metric, so
    the one checkpoint Ray keeps is the trial's best epoch; resuming restarts after it.
    """
    started = time.time()  # the report orders the optimisation history by it (a resumed trial keeps its first)
    torch.set_num_threads(settings.threads)
    quiet_exit_in_callbacks()
    ray_private.quiet_ray_loggers()
    seed = derive_seed(settings.base_seed, trial_index(tune.get_context()))
    config = trial_config(base_config, sampled, seed)
    run = build_run(config, shared)
    executor = run.executor
    node = ray.get_runtime_context().get_node_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            executor.load_state(load_checkpoint(folder, executor.device))

    def report(epoch: int, metrics: dict[str, float]) -> None:
        row = {**metrics, "epoch": epoch, "best_loss": executor.best_val_loss, "best_value": executor.best_value,
               "best_epoch": executor.best_epoch,
               "trial_seed": seed, "max_epoch": config["max_epoch"], "node": node, "started": started}
        if epoch != executor.best_epoch:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(executor.state(epoch), Path(folder) / CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))

    executor.train(run.train_data, run.valid_data, hooks=[report])
