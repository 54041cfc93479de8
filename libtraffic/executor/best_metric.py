"""What "best" means: the validation number that picks the best epoch (and, when tuning, ranks trials).

``loss`` is the validation loss (as LibCity). Any evaluator metric (libtraffic.model.loss.METRICS)
also works, as ``masked_MAE`` (the mean over the output_window horizons) or ``masked_MAE@12`` (one
horizon, 1..output_window). R2 and EVAR are higher-is-better; everything else is minimised.
"""

from __future__ import annotations

from dataclasses import dataclass

from libtraffic.model.loss import METRICS
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

LOSS = "loss"
#: Metrics where a higher value is better.
HIGHER_IS_BETTER = frozenset({"R2", "EVAR"})


@dataclass(frozen=True)
class BestMetric:
    name: str  # as given: 'loss', 'masked_MAE', 'masked_MAE@3'
    base: str  # 'loss' or a METRICS name
    horizon: int | None  # 1-based; None: the mean over the horizons

    @property
    def mode(self) -> str:
        """'min' or 'max', as Ray Tune spells it."""
        return "max" if self.base in HIGHER_IS_BETTER else "min"

    @property
    def is_loss(self) -> bool:
        return self.base == LOSS

    def better(self, value: float, best: float) -> bool:
        return value > best if self.mode == "max" else value < best

    @property
    def worst(self) -> float:
        return float("-inf") if self.mode == "max" else float("inf")


def parse_best_metric(name: str, output_window: int, where: str = "config key 'best_metric'") -> BestMetric:
    """Check ``name`` ('loss', 'masked_MAE', 'masked_MAE@12'); a LibTrafficError names the valid ones."""
    if not isinstance(name, str) or not name:
        raise LibTrafficError(f"{where}: a metric name is needed, got {name!r}. Use loss or one of "
                              f"{', '.join(METRICS)} (optionally @horizon, e.g. masked_MAE@{output_window}).")
    base, at, horizon_text = name.partition("@")
    lookup({LOSS: None, **METRICS}, base, "metric", where=where)
    if not at:
        return BestMetric(name, base, None)
    if base == LOSS:
        raise LibTrafficError(f"{where}: '{name}': the validation loss has no horizons; use loss, or a metric "
                              f"with a horizon such as masked_MAE@{output_window}.")
    if not horizon_text.isdigit() or not 1 <= int(horizon_text) <= output_window:
        raise LibTrafficError(f"{where}: '{name}': the horizon after @ must be a whole number from 1 to "
                              f"output_window ({output_window}), e.g. {base}@{output_window}.")
    return BestMetric(name, base, int(horizon_text))


#: The default: the validation loss, minimised.
BY_LOSS = BestMetric(LOSS, LOSS, None)
