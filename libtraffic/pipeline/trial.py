"""One tuning trial: the function trainable Ray Tune runs (Ray imports live in pipeline/ only)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.prepared import PreparedData, RawData, prepared_for
from libtraffic.executor import get_executor
from libtraffic.model import get_model
from libtraffic.pipeline.ray_session import quiet_exit_in_callbacks
from libtraffic.utils.seed import derive_seed, set_random_seed

CHECKPOINT_FILE = "state.pt"
TRIAL_DIR_PREFIX = "trial_"


@dataclass(frozen=True)
class TrialSettings:
    base_seed: int
    threads: int


def trial_dirname(trial) -> str:
    """Our name for a trial's folder, 'trial_<index>' (Ray's trial_dirname_creator).

    The index is the creation counter Ray's search generators start the trial's experiment tag
    with ('3_hidden_size=8'): the same on every run and resume, so seeds derived from it repeat.
    """
    index, _, _ = str(trial.experiment_tag).partition("_")
    if not index.isdigit():
        raise ValueError(f"Trial {trial} has no creation index in its experiment tag {trial.experiment_tag!r}.")
    return f"{TRIAL_DIR_PREFIX}{int(index):05d}"


def trial_index(context) -> int:
    """Creation index of the running trial, from the folder name trial_dirname gave it."""
    return int(Path(context.get_trial_dir()).name.removeprefix(TRIAL_DIR_PREFIX))


def trial_config(base: ConfigParser, sampled: dict[str, Any], seed: int) -> ConfigParser:
    """A fresh config for one trial: sampled values on top, its own seed; base is untouched."""
    return base.with_overrides({**sampled, "seed": seed}, source="search space")


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
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint otherwise
    seed = derive_seed(settings.base_seed, trial_index(tune.get_context()))
    config = trial_config(base_config, sampled, seed)
    set_random_seed(seed)
    dataset = get_dataset(config, prepared_for(shared, config))
    node = ray.get_runtime_context().get_node_id()
    train_data, valid_data, _ = dataset.get_data()
    data_feature = dataset.get_data_feature()
    executor = get_executor(config, get_model(config, data_feature), data_feature)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            executor.load_state(torch.load(Path(folder) / CHECKPOINT_FILE, map_location=executor.device, weights_only=False))

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

    executor.train(train_data, valid_data, hooks=[report])
