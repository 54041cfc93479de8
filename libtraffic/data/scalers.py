"""Scalers with fit / transform / inverse_transform, fitted on the training part only.

Each works on NumPy arrays and on torch tensors (inverse_transform runs on model outputs).
Statistics are global scalars over the fitted values, as in LibCity. ``fit_on_targets`` says what
LibCity fits on: max/min-based scalers see the training inputs and targets, the standard scaler
the training inputs only. LibCity fits on its stacked, overlapping training windows, so a time step
counts once per window that holds it: ``fit`` takes those counts as per-step ``weights`` (they
change the mean and standard deviation, never a max or min). A zero spread (constant data)
becomes 1, with a warning, as scikit-learn.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from libtraffic.utils.registry import lookup

logger = logging.getLogger(__name__)


def _nonzero_spread(value: float, what: str) -> float:
    if value != 0:
        return value
    logger.warning("The scaler's %s over the training data is 0 (constant readings); using 1, so values are only "
                   "shifted, not scaled.", what)
    return 1.0


def _exp(x):
    return torch.exp(x) if isinstance(x, torch.Tensor) else np.exp(x)


def _log(x):
    return torch.log(x) if isinstance(x, torch.Tensor) else np.log(x)


class NoneScaler:
    """Identity."""

    fit_on_targets = False

    def fit(self, data: np.ndarray, weights: np.ndarray | None = None) -> "NoneScaler":
        """Fit on ``data`` (S, ...): the readings of S time steps; ``weights`` (S,) counts how often
        each step is seen (None: once each)."""
        return self

    def transform(self, x):
        return x

    def inverse_transform(self, x):
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v:.6g}' for k, v in vars(self).items())})"


class NormalScaler(NoneScaler):
    """x / max."""

    fit_on_targets = True

    def fit(self, data, weights=None):
        self.max = _nonzero_spread(float(np.max(data)), "maximum")
        return self

    def transform(self, x):
        return x / self.max

    def inverse_transform(self, x):
        return x * self.max


class StandardScaler(NoneScaler):
    """(x - mean) / std."""

    def fit(self, data, weights=None):
        # Sums per step, then weighted over steps, in float64: LibCity's x_train.mean() / .std()
        # over the stacked windows without building them.
        values = np.asarray(data, dtype=np.float64).reshape(len(data), -1)  # (S, values per step)
        counts = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        total = counts.sum() * values.shape[1]
        self.mean = float(counts @ values.sum(axis=1) / total)
        variance = counts @ np.square(values - self.mean).sum(axis=1) / total
        self.std = _nonzero_spread(float(np.sqrt(variance)), "standard deviation")
        return self

    def transform(self, x):
        return (x - self.mean) / self.std

    def inverse_transform(self, x):
        return x * self.std + self.mean


class MinMax01Scaler(NoneScaler):
    """(x - min) / (max - min), into [0, 1]."""

    fit_on_targets = True

    def fit(self, data, weights=None):
        self.min = float(np.min(data))
        self.max = self.min + _nonzero_spread(float(np.max(data)) - self.min, "range (max - min)")
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
    """log(x + eps), eps = 0.999 (LibCity's; a reading of 0 maps to log 0.999, near 0)."""

    def __init__(self, eps: float = 0.999) -> None:
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
