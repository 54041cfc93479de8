"""The meaningful range of each numeric setting, one row per key.

A value of the right type can still mean nothing (a negative gradient norm, a probability of 2, a
negative decay factor that makes the learning rate negative). ConfigParser checks every merged
value against this table, naming where the value came from, so such a run stops before it starts;
in tuning, a sampled value out of range fails its trial. Keys a run does not have are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """low <= value <= high (``open_low`` / ``open_high`` make that end strict); None: no bound."""

    meaning: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))

    def text(self) -> str:
        """'> 0', 'in [0, 1]', 'in [0, 1)', '>= 1'."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"{'<' if self.open_high else '<='} {self.high:g}"


POSITIVE = dict(low=0, open_low=True)
NON_NEGATIVE = dict(low=0)

#: key -> its meaning and range. Every value must also be finite.
RANGES: dict[str, Range] = {
    # optimiser and schedule (learning_rate and weight_decay: executor/optim.py, which also sees inf)
    "lr_epsilon": Range("the optimiser's small constant added to a denominator", **NON_NEGATIVE),
    "lr_beta1": Range("Adam's decay rate of the mean gradient", 0, 1, open_high=True),
    "lr_beta2": Range("Adam's decay rate of the squared gradient", 0, 1, open_high=True),
    "lr_alpha": Range("RMSprop's smoothing constant", **NON_NEGATIVE),
    "lr_momentum": Range("the optimiser's momentum factor (0 turns it off)", **NON_NEGATIVE),
    "lr_decay_ratio": Range("the factor the learning rate is multiplied by at each decay; 0 or less would make "
                            "it zero or negative", **POSITIVE),
    "lr_eta_min": Range("the smallest learning rate of cosine annealing", **NON_NEGATIVE),
    "lr_patience": Range("epochs without improvement before ReduceLROnPlateau lowers the rate", **NON_NEGATIVE),
    "lr_threshold": Range("the smallest change ReduceLROnPlateau counts as an improvement", **NON_NEGATIVE),
    "max_grad_norm": Range("the largest gradient norm that clipping keeps; 0 would stop training and a negative "
                           "norm would reverse the gradient", **POSITIVE),
    "patience": Range("epochs without improvement before early stopping", low=1),
    # model
    "teacher_forcing_ratio": Range("the probability of feeding the true value back instead of the prediction", 0, 1),
    "dropout": Range("a probability of zeroing a unit", 0, 1, open_high=True),
    "hidden_size": Range("a number of units", low=1),
    "num_layers": Range("a number of layers", low=1),
    # data
    "weight_adj_epsilon": Range("the smallest kernel weight kept as an edge", **NON_NEGATIVE),
    "gpu_id": Range("a GPU index", **NON_NEGATIVE),
}


def out_of_range(key: str, value: Any) -> str | None:
    """Why ``value`` is no meaningful ``key`` (None when it is, or when the key has no range)."""
    rule = RANGES.get(key)
    if rule is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if rule.contains(value):
        return None
    return f"{key} must be {rule.text()} ({rule.meaning}), got {value}"
