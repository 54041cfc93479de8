"""TrafficStatePointDataset: LibCity's point-based traffic state dataset."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader

from libtraffic.data.prepared import PreparedData, prepare_data, warn_ineffective
from libtraffic.data.windows import make_loader, split_indices
from libtraffic.utils.errors import LibTrafficError


class DataFeatures(dict):
    """The data features of a run; reading 'adj_mx' when the .rel file gives no usable graph raises
    that problem, so only a model that uses the graph fails (a GRU on one sensor does not)."""

    def __init__(self, features: Mapping[str, Any], adj_problem: str = "") -> None:
        super().__init__(features)
        self.adj_problem = adj_problem

    def __getitem__(self, key: str) -> Any:  # noqa: ANN401
        if key == "adj_mx" and self.adj_problem:
            raise LibTrafficError(f"{self.adj_problem} This model uses the sensor graph from the .rel file.")
        return super().__getitem__(key)


class TrafficStatePointDataset:
    """Loaders of {'X': [B, input_window, N, F], 'y': [B, output_window, N, F]} batches.

    ``prepared`` lets many runs (tuning trials) share one prepared array instead of re-reading files.
    """

    def __init__(self, config: Mapping[str, Any], prepared: PreparedData | None = None) -> None:
        self.config = config
        for key in ("batch_size", "input_window", "output_window"):
            if config[key] < 1:
                raise LibTrafficError(f"{key} must be a positive integer, got {config[key]}.")
        if not (0 < config["train_rate"] < 1 and 0 <= config["eval_rate"] < 1 and config["train_rate"] + config["eval_rate"] < 1):
            raise LibTrafficError(
                f"train_rate ({config['train_rate']}) and eval_rate ({config['eval_rate']}) must be in (0, 1) with "
                "a sum below 1, leaving the rest for testing."
            )
        if config["num_workers"] < 0:
            raise LibTrafficError(f"num_workers must be >= 0, got {config['num_workers']}.")
        warn_ineffective(config, logging.getLogger("libtraffic"))
        self.prepared = prepared
        self._warned = False

    def prepare(self) -> PreparedData:
        if self.prepared is None:
            self.prepared = prepare_data(self.config)
        return self.prepared

    def get_data(self) -> tuple[DataLoader, DataLoader, DataLoader]:
        """(train, valid, test) loaders. Training batches are shuffled and validation draws as if shuffled
        (LibCity shuffles both), from torch's global generator; validation and test run in time order."""
        p = self.prepare()
        cfg = self.config
        batch_size = self.batch_size()
        starts = split_indices(p.split, batch_size, cfg["pad_with_last_sample"], cfg["eval_pad_with_last_sample"])
        return tuple(
            make_loader(p.data, idx, p.input_window, p.output_window, batch_size, order,
                        num_workers=cfg["num_workers"])
            for order, idx in zip(("shuffled", "time, drawing as shuffled", "time"), starts)
        )

    def batch_size(self) -> int:
        """batch_size, capped at the number of training samples: beyond it, LibCity's padding with the
        last sample would fill almost every batch with copies of one window (minutes per epoch)."""
        num_train = self.prepare().split[0]
        if self.config["batch_size"] <= num_train:
            return self.config["batch_size"]
        if not self._warned:
            logging.getLogger("libtraffic").warning(
                "batch_size %d is larger than the %d training samples; using %d (one batch of real samples, not "
                "padded with copies of the last one).", self.config["batch_size"], num_train, num_train)
            self._warned = True
        return num_train

    def get_data_feature(self) -> dict[str, Any]:
        p = self.prepare()
        return DataFeatures({
            "scaler": p.scaler, "ext_scaler": p.ext_scaler, "adj_mx": p.adj_mx, "num_nodes": p.num_nodes,
            "feature_dim": p.feature_dim, "output_dim": p.output_dim, "ext_dim": p.ext_dim,
            "num_batches": -(-p.split[0] // self.batch_size()),
        }, p.adj_problem)
