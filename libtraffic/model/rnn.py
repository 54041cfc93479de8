"""RNN: LibCity's GRU / LSTM / RNN baseline for traffic state prediction (one class).

The input window [B, input_window, N, F] is flattened over nodes to [B, input_window, N*F]; a
recurrent net reads it and a linear layer maps its last output to the next step [B, N, output_dim].
That prediction slides into the window (or, with probability teacher_forcing_ratio during
training, the true step does) and the net re-runs, output_window times.

Two implementations with identical math and shared parameters (``rnn_impl``):
  'plain'  re-runs torch.nn.GRU/LSTM/RNN over each window (best on GPUs with cuDNN);
  'fast'   runs all output steps' windows together, one recurrent step per distinct input step,
           with the first layer's input projection computed once per step and a fused GRU step
           (see recurrence.py); 'auto' picks fast on CPU.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from libtraffic.model.base import TrafficStateModel
from libtraffic.model.recurrence import make_runner
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

RNN_CLASSES = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}
RNN_IMPLS = ("auto", "fast", "plain")


class RNN(TrafficStateModel):
    """Autoregressive recurrent forecaster; outputs [B, output_window, N, output_dim]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__(config, data_feature)
        self.rnn_type = config["rnn_type"]
        self.hidden_size = config["hidden_size"]
        self.num_layers = config["num_layers"]
        self.bidirectional = config["bidirectional"]
        self.teacher_forcing_ratio = config["teacher_forcing_ratio"]
        self.rnn_impl = config["rnn_impl"]
        if self.rnn_impl not in RNN_IMPLS:
            raise LibTrafficError(f"rnn_impl must be one of {', '.join(RNN_IMPLS)}, got {self.rnn_impl!r}.")
        if not 0 <= config["dropout"] < 1:
            raise LibTrafficError(f"dropout must be in [0, 1), got {config['dropout']}.")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise LibTrafficError("hidden_size and num_layers must be positive integers.")
        rnn_class = lookup(RNN_CLASSES, self.rnn_type, "rnn_type", where="config key 'rnn_type'")
        self.rnn = rnn_class(
            input_size=self.num_nodes * self.feature_dim, hidden_size=self.hidden_size,
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            # torch applies this only between layers; with one layer it would be a no-op.
            dropout=config["dropout"] if self.num_layers > 1 else 0.0,
        )
        # Dropout on the last recurrent output, so `dropout` acts with any number of layers.
        self.dropout = nn.Dropout(config["dropout"])
        self.fc = nn.Linear(self.hidden_size * self.num_directions, self.num_nodes * self.output_dim)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def use_fast(self, device: torch.device) -> bool:
        return self.rnn_impl == "fast" or (self.rnn_impl == "auto" and device.type == "cpu")

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x, y = batch["X"], batch["y"]
        batch_size = x.shape[0]
        window = list(x.reshape(batch_size, self.input_window, -1).unbind(1))  # steps [B, N*F]
        fast = self.use_fast(x.device)
        runner = make_runner(self.rnn, self.rnn_type, torch.stack(window, 1), self.input_window,
                             self.output_window) if fast else None
        outputs = []
        for i in range(self.output_window):
            last = runner.last(i) if fast else self._plain_last(window[i : i + self.input_window])
            pred = self.fc(self.dropout(last)).reshape(batch_size, self.num_nodes, self.output_dim)
            outputs.append(pred)
            nxt = pred
            if self.training and random.random() < self.teacher_forcing_ratio:
                nxt = y[:, i, :, : self.output_dim]
            if self.output_dim < self.feature_dim:
                nxt = torch.cat([nxt, y[:, i, :, self.output_dim :]], dim=-1)
            nxt = nxt.reshape(batch_size, -1)
            window.append(nxt)
            if fast and i + 1 < self.output_window:
                runner.append(nxt)
        return torch.stack(outputs, dim=1)

    def _plain_last(self, steps: list[Tensor]) -> Tensor:
        out, _ = self.rnn(torch.stack(steps, dim=0))
        return out[-1]

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Masked MAE on inverse-scaled values, zero readings ignored (LibCity's default loss)."""
        return self.real_units_loss("masked_mae", batch["y"], self.predict(batch))
