"""Scalers with fit / transform / inverse_transform, fitted on the training part only.

Each works on NumPy arrays and on torch tensors (inverse_transform runs on model outputs).
Statistics are global scalars over the fitted values, as in LibCity.
"""

from __future__ import annotations

import numpy as np
import torch

from libtraffic.utils.registry import lookup


def _exp(x):
    return torch.exp(x) if isinstance(x, torch.Tensor) else np.exp(x)


def _log(x):
    return torch.log(x) if isinstance(x, torch.Tensor) else np.log(x)


class NoneScaler:
    """Identity."""

    def fit(self, data: np.ndarray) -> "NoneScaler":
        return self

    def transform(self, x):
        return x

    def inverse_transform(self, x):
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v:.6g}' for k, v in vars(self).items())})"


class NormalScaler(NoneScaler):
    """x / max."""

    def fit(self, data):
        self.max = float(np.max(data))
        return self

    def transform(self, x):
        return x / self.max

    def inverse_transform(self, x):
        return x * self.max


class StandardScaler(NoneScaler):
    """(x - mean) / std."""

    def fit(self, data):
        self.mean = float(np.mean(data, dtype=np.float64))
        self.std = float(np.std(data, dtype=np.float64))
        return self

    def transform(self, x):
        return (x - self.mean) / self.std

    def inverse_transform(self, x):
        return x * self.std + self.mean


class MinMax01Scaler(NoneScaler):
    """(x - min) / (max - min), into [0, 1]."""

    def fit(self, data):
        self.min = float(np.min(data))
        self.max = float(np.max(data))
        return self

    def transform(self, x):
        return (x - self.min) / (self.max - self.min)

    def inverse_transform(self, x):
        return x * (self.max - self.min) + self.min


class MinMax11Scaler(MinMax01Scaler):
    """(x - min) / (max - min) * 2 - 1, into [-1, 1]."""

    def transform(self, x):
        return (x - self.min) / (self.max - self.min) * 2.0 - 1.0

    def inverse_transform(self, x):
        return (x + 1.0) / 2.0 * (self.max - self.min) + self.min


class LogScaler(NoneScaler):
    """log(x + eps), eps = 1e-4."""

    def __init__(self, eps: float = 1e-4) -> None:
        self.eps = eps

    def transform(self, x):
        return _log(x + self.eps)

    def inverse_transform(self, x):
        return _exp(x) - self.eps


SCALERS = {
    "none": NoneScaler,
    "normal": NormalScaler,
    "standard": StandardScaler,
    "minmax01": MinMax01Scaler,
    "minmax11": MinMax11Scaler,
    "log": LogScaler,
}


def get_scaler(name: str, key: str = "scaler") -> NoneScaler:
    """A new, unfitted scaler named by config key ``key`` ('scaler' or 'ext_scaler')."""
    return lookup(SCALERS, name, "scaler", where=f"config key '{key}'")()
