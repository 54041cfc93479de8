"""MTGNNExecutor: TrafficStateExecutor with MTGNN's curriculum and node groups (LibCity's MTGNNExecutor).

Per training batch:
  * every step_size2 batches of an epoch (from its first) the sensors are shuffled (numpy's global
    generator, as LibCity) and cut into num_split groups: num_nodes // num_split sensors each, the
    last group taking the rest;
  * each group is one optimiser step on the loss over those sensors only (the model sees the
    subgraph among them);
  * with use_curriculum_learning the loss covers the first task_level output steps: task_level
    rises by one at optimiser steps 0, step_size1, 2 step_size1, ... (counted over all epochs,
    batches_seen) from the config's task_level up to output_window.

task_level is a function of batches_seen, which checkpoints keep, and the shuffling generator is
part of the saved random state, so a resumed run (--epoch K) continues the same curriculum and
the same node groups.

Two differences from LibCity's executor: with num_split 1 (the default) LibCity passes the model all
sensors in a shuffled order; the model is equivariant to that order, so here they go in their own
order (idx None, nothing drawn), which gives the same loss without gathering. With num_split > 1
LibCity zeroes the gradients once per batch, so each group's step also re-applies the gradients of
the groups before it; here each group's step uses its own gradient (as the MTGNN authors' code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from libtraffic.executor.traffic_state_executor import TrafficStateExecutor
from libtraffic.utils.errors import LibTrafficError


def curriculum_level(batches_seen: int, step_size: int, start: int, output_window: int) -> int:
    """LibCity's task_level while taking optimiser step number ``batches_seen`` (from 0): ``start``
    raised by one at steps 0, step_size, 2 step_size, ... while below output_window."""
    if start >= output_window:
        return start
    return min(output_window, start + batches_seen // step_size + 1)


def node_groups(num_nodes: int, num_split: int) -> list[np.ndarray]:
    """A random permutation of the sensors (numpy's global generator) cut into num_split groups of
    num_nodes // num_split, the last taking the remainder."""
    perm = np.random.permutation(num_nodes)
    size = num_nodes // num_split
    return [perm[j * size:(j + 1) * size] for j in range(num_split - 1)] + [perm[(num_split - 1) * size:]]


class MTGNNExecutor(TrafficStateExecutor):
    def __init__(self, config: Mapping[str, Any], model: nn.Module, data_feature: Mapping[str, Any],
                 logger: logging.Logger | None = None) -> None:
        super().__init__(config, model, data_feature, logger)
        self.num_nodes = data_feature["num_nodes"]
        self.num_split = config["num_split"]
        self.step_size2 = config["step_size2"]
        self.step_size1 = config["step_size1"]
        self.curriculum = config["use_curriculum_learning"]
        self._check(data_feature["num_batches"])
        self._groups: list[torch.Tensor | None] = [None]  # one group of all sensors: the model's full graph
        self._iteration = 0  # training batches so far in this epoch

    def _check(self, num_batches: int) -> None:
        c = self.config
        for key in ("step_size1", "step_size2", "num_split"):
            if c[key] < 1:
                raise LibTrafficError(f"MTGNN: {key} must be a positive integer, got {c[key]}.")
        if self.num_split > self.num_nodes:
            raise LibTrafficError(
                f"MTGNN: num_split {self.num_split} is larger than the number of sensors ({self.num_nodes}): each "
                f"training batch is split into num_split groups of sensors. Use --num_split {self.num_nodes} or less.")
        group = self.num_nodes // self.num_split
        if group < self.model.min_nodes:
            raise LibTrafficError(
                f"MTGNN: with num_split {self.num_split} the smallest group has {group} sensors ({self.num_nodes} // "
                f"{self.num_split}), fewer than subgraph_size {self.model.min_nodes} (edges kept per sensor in the "
                f"learned graph). Use --num_split {self.num_nodes // self.model.min_nodes} or less, or a smaller "
                "--subgraph_size.")
        if self.curriculum and c["max_epoch"] * num_batches < self.step_size1 * c["output_window"]:
            self.logger.warning(
                "step_size1 %d is too big for %d epochs of %d batches: the curriculum will not reach all %d output "
                "steps.", self.step_size1, c["max_epoch"], num_batches, c["output_window"])

    def task_level(self) -> int | None:
        """Output steps the next optimiser step's loss covers (None: all, without the curriculum)."""
        start, window = self.config["task_level"], self.config["output_window"]
        level = curriculum_level(self.batches_seen, self.step_size1, start, window)
        before = curriculum_level(self.batches_seen - 1, self.step_size1, start, window) if self.batches_seen else start
        if level != before:
            self.logger.info("Training: task_level increases from %d to %d at batches_seen %d", before, level,
                             self.batches_seen)
        return level if self.curriculum else None

    def _train_epoch(self, loader: Iterable, epoch: int) -> float:
        self._iteration = 0
        return super()._train_epoch(loader, epoch)

    def _train_step(self, batch: Mapping[str, torch.Tensor], where: str) -> list[float]:
        """One optimiser step per node group (the gradients are zeroed before each)."""
        if self.num_split > 1 and self._iteration % self.step_size2 == 0:
            self._groups = [torch.as_tensor(g, device=self.device) for g in node_groups(self.num_nodes, self.num_split)]
        self._iteration += 1
        losses = []
        for j, idx in enumerate(self._groups):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._batch_loss(batch, idx=idx, task_level=self.task_level())
            losses.append(self._optimizer_step(loss, where if idx is None else f"{where}, node group {j}"))
        return losses

    def _batch_loss(self, batch: Mapping[str, torch.Tensor], idx: torch.Tensor | None = None,
                    task_level: int | None = None) -> torch.Tensor:
        """The loss over sensors ``idx`` (all when None) and the first task_level output steps (all when None)."""
        if self.loss_fn is None:
            return self.model.calculate_loss(batch, idx=idx, task_level=task_level)
        if idx is not None:
            batch = {k: v[:, :, idx] for k, v in batch.items()}
        steps = slice(None, task_level)
        y_true = self.scaler.inverse_transform(batch["y"][:, steps, :, : self.output_dim])
        y_pred = self.scaler.inverse_transform(self.model.predict(batch, idx)[:, steps, :, : self.output_dim])
        return self.loss_fn(y_pred, y_true)
