"""What every traffic state model takes from the data and the config, and its loss in real units
(LibCity's AbstractTrafficStateModel)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from libtraffic.model import loss


class TrafficStateModel(nn.Module):
    """A model of [B, input_window, N, feature_dim] -> [B, output_window, N, output_dim]: the data's sizes
    and scaler, the windows, predict = forward, and LibCity's usual loss."""

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

    def real_units_loss(self, name: str, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """TRAIN_LOSSES[name] on the first output_dim features of both, inverse-scaled."""
        y_true = self.scaler.inverse_transform(y_true[..., : self.output_dim])
        y_pred = self.scaler.inverse_transform(y_pred[..., : self.output_dim])
        return loss.TRAIN_LOSSES[name](y_pred, y_true)

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Masked MAE on inverse-scaled values, zero readings ignored (LibCity's usual model loss)."""
        return self.real_units_loss("masked_mae", batch["y"], self.predict(batch))
