"""STID: Spatial-Temporal IDentity (Shao et al., CIKM 2022, arXiv 2208.05233), as LibCity runs it.

Each node's input window of readings is embedded by a 1x1 convolution over its input_window
values. Learnt identity embeddings are concatenated to it: the node's own, and those of the time
of day and the day of week at the window's last step. A stack of residual MLPs (1x1 convolutions)
and a 1x1 regression map each node's vector to its next output_window readings. No recurrence and
no graph: nodes are told apart by their embeddings only.

The time features are read where LibCity's dataset puts them: feature 1 is the time of day (a
fraction of the day), features 2..8 the one-hot day of week (Monday first). Parameter names and
shapes are LibCity's, created in LibCity's order, so its checkpoints load and a seed gives the same
initial weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from libtraffic.data.prepared import time_features
from libtraffic.data.windows import SECONDS_PER_DAY
from libtraffic.model import loss
from libtraffic.utils.errors import LibTrafficError

DAYS_PER_WEEK = 7
TIME_OF_DAY = 1  # feature index of the time of day
DAY_OF_WEEK = slice(2, 2 + DAYS_PER_WEEK)  # feature indices of the one-hot day of week
DROPOUT = 0.15  # fixed in the paper's code and LibCity's


class ResidualMLP(nn.Module):
    """x + fc2(dropout(relu(fc1(x)))) over the channels of [B, D, N, 1]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, dim, kernel_size=(1, 1))
        self.fc2 = nn.Conv2d(dim, dim, kernel_size=(1, 1))
        self.act = nn.ReLU()
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(x))))


def _embedding(rows: int, dim: int) -> nn.Parameter:
    table = nn.Parameter(torch.empty(rows, dim))
    nn.init.xavier_uniform_(table)
    return table


class STID(nn.Module):
    """[B, input_window, N, F] -> [B, output_window, N, 1]."""

    def __init__(self, config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
        super().__init__()
        check_inputs(config, data_feature)
        self.scaler = data_feature["scaler"]
        self.output_dim = data_feature["output_dim"]
        self.if_spatial, self.if_time_in_day, self.if_day_in_week = config["if_spatial"], config["if_TiD"], config["if_DiW"]
        self.steps_per_day = SECONDS_PER_DAY // config["time_intervals"]
        if self.if_spatial:
            self.node_emb = _embedding(data_feature["num_nodes"], config["spatial_emb_dim"])
        if self.if_time_in_day:
            self.time_in_day_emb = _embedding(self.steps_per_day, config["temp_dim_tid"])
        if self.if_day_in_week:
            self.day_in_week_emb = _embedding(DAYS_PER_WEEK, config["temp_dim_diw"])
        self.time_series_emb_layer = nn.Conv2d(config["input_window"], config["time_series_emb_dim"], kernel_size=(1, 1))
        # LibCity adds temp_dim_tid when if_DiW and temp_dim_diw when if_TiD: the same sum whenever its
        # forward runs, so this (the sum of what is concatenated) loads every LibCity checkpoint.
        hidden = (config["time_series_emb_dim"] + config["spatial_emb_dim"] * self.if_spatial
                  + config["temp_dim_tid"] * self.if_time_in_day + config["temp_dim_diw"] * self.if_day_in_week)
        self.encoder = nn.Sequential(*[ResidualMLP(hidden) for _ in range(config["num_block"])])
        self.regression_layer = nn.Conv2d(hidden, config["output_window"], kernel_size=(1, 1))

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["X"]                                                  # [B, L, N, F]
        batch_size = x.shape[0]
        last = x[:, -1]                                                 # [B, N, F], the window's last step
        parts = [self.time_series_emb_layer(x[..., :1])]                # L readings as channels -> [B, E, N, 1]
        if self.if_spatial:
            parts.append(self.node_emb.T[None, :, :, None].expand(batch_size, -1, -1, -1))  # [B, Es, N, 1]
        if self.if_time_in_day:
            slot = (last[..., TIME_OF_DAY] * self.steps_per_day).long()  # [B, N], truncated as LibCity
            parts.append(self.time_in_day_emb[slot].transpose(1, 2).unsqueeze(-1))  # [B, Et, N, 1]
        if self.if_day_in_week:
            day = last[..., DAY_OF_WEEK].argmax(dim=-1)                 # [B, N]
            parts.append(self.day_in_week_emb[day].transpose(1, 2).unsqueeze(-1))   # [B, Ed, N, 1]
        hidden = self.encoder(torch.cat(parts, dim=1))                  # [B, H, N, 1]
        return self.regression_layer(hidden)                            # [B, output_window, N, 1]

    def predict(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.forward(batch)

    def calculate_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Masked MAE on inverse-scaled values, zero readings ignored (LibCity's STID loss)."""
        y_true = self.scaler.inverse_transform(batch["y"][..., : self.output_dim])
        y_pred = self.scaler.inverse_transform(self.predict(batch)[..., : self.output_dim])
        return loss.TRAIN_LOSSES["masked_mae"](y_pred, y_true)


def check_inputs(config: Mapping[str, Any], data_feature: Mapping[str, Any]) -> None:
    """Refuse data STID cannot read: it predicts one feature and finds the time features by position."""
    if data_feature["output_dim"] != 1:
        raise LibTrafficError(
            f"STID predicts one reading per node, but output_dim is {data_feature['output_dim']}: set output_dim 1 "
            "(the first data column, as LibCity's STID reads) in the dataset's config.json or with --output_dim 1."
        )
    for key in ("time_series_emb_dim", "spatial_emb_dim", "temp_dim_tid", "temp_dim_diw"):
        if config[key] < 1:
            raise LibTrafficError(f"{key} must be a positive integer, got {config[key]}.")
    if config["num_block"] < 0:
        raise LibTrafficError(f"num_block must be 0 or more, got {config['num_block']}.")
    time_of_day, day_of_week = time_features(config)
    needs = {"if_TiD": (time_of_day, "the time of day as input feature 1", "--load_external true --add_time_in_day true"),
             "if_DiW": (time_of_day and day_of_week, "the one-hot day of week as input features 2-8, after the time of day",
                        "--load_external true --add_time_in_day true --add_day_in_week true")}
    for key, (present, what, fix) in needs.items():
        if config[key] and not present:
            raise LibTrafficError(
                f"STID with {key} true reads {what}, which this run does not add (load_external "
                f"{_flag(config['load_external'])}, add_time_in_day {_flag(config['add_time_in_day'])}, add_day_in_week "
                f"{_flag(config['add_day_in_week'])}). Use {fix}, or --{key} false."
            )
    if config["if_TiD"]:
        if SECONDS_PER_DAY % config["time_intervals"]:
            raise LibTrafficError(
                f"STID's time-of-day embedding needs a whole number of steps per day, but time_intervals "
                f"{config['time_intervals']} s does not divide a day ({SECONDS_PER_DAY} s). Fix time_intervals in the "
                "dataset's config.json, or use --if_TiD false."
            )
        if config["normal_external"] and config["ext_scaler"] != "none":
            raise LibTrafficError(
                f"STID looks up its time-of-day embedding by the time of day as a fraction of the day, but "
                f"normal_external true scales it with ext_scaler {config['ext_scaler']!r}. Use --normal_external false "
                "(or --ext_scaler none), or --if_TiD false."
            )


def _flag(value: bool) -> str:
    return str(bool(value)).lower()
