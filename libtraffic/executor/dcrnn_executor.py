"""DCRNNExecutor: TrafficStateExecutor that tells DCRNN how many optimiser steps came before each
training batch (LibCity's DCRNNExecutor), the clock of DCRNN's curriculum learning.

The count is the executor's batches_seen: 0 for the first batch of a run, kept in every checkpoint,
so a resumed run (--epoch K) continues the curriculum where it stopped. The teacher-forcing draws
come from numpy's global generator, whose state checkpoints also keep. Validation and testing run
the model in eval mode, where it feeds back its own outputs, as in LibCity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from libtraffic.executor.traffic_state_executor import TrafficStateExecutor


class DCRNNExecutor(TrafficStateExecutor):
    def _train_step(self, batch: Mapping[str, torch.Tensor], where: str) -> list[float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._batch_loss(batch, batches_seen=self.batches_seen)
        return [self._optimizer_step(loss, where)]
