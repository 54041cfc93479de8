"""TrafficStateModel: what every traffic-state model reads from the data and config, and LibCity's
default training loss (LibCity's AbstractTrafficStateModel)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from libtraffic.model import loss


class TrafficStateModel(nn.Module):
    """A model of [B, input_window, N, feature_dim] windows -> [B, output_window, N, output_dim]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__()
        self.scaler = data_feature["scaler"]
        self.num_nodes = data_feature["num_nodes"]
        self.feature_dim = data_feature["feature_dim"]
        self.output_dim = data_feature["output_dim"]
        self.input_window = config["input_window"]
        self.output_window = config["output_window"]

    def predict(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.forward(batch)

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Masked MAE on inverse-scaled values, zero readings ignored (LibCity's usual model loss)."""
        y_true = self.scaler.inverse_transform(batch["y"][..., : self.output_dim])
        y_pred = self.scaler.inverse_transform(self.predict(batch)[..., : self.output_dim])
        return loss.TRAIN_LOSSES["masked_mae"](y_pred, y_true)
