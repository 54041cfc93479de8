"""Loss and metric functions (pure, torch), and the two name tables that select them.

Every function takes ``(preds, labels)``: tensors of the same shape, any layout (typically
[batch, output_window, num_nodes, output_dim]), in the data's own units. Each returns a 0-d
tensor and is differentiable, so the same function serves as a training loss and as a metric.

Masking follows LibCity: with ``null_val=nan`` only NaN labels are ignored (so data without
NaNs gives the plain metric); with ``null_val=0`` zero labels (missing sensor readings) are
ignored exactly, i.e. the result is the plain metric over the non-zero labels. "Zero" means
closer than NULL_TOLERANCE (1e-4): a zero that went through the scaler and back is not exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from libtraffic.utils.registry import lookup

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Labels closer than this to a non-NaN ``null_val`` are ignored by the masked functions.
NULL_TOLERANCE = 1e-4


def _keep_mask(labels: Tensor, null_val: float, min_label: float | None) -> Tensor:
    """Entries that count: by the labels only (never by the predictions).

    ``null_val`` NaN ignores NaN labels; otherwise labels within NULL_TOLERANCE of it (a zero
    reading comes back from the scaler's float32 round trip a few 1e-6 off zero; LibCity zeroes
    |label| < 1e-4). ``min_label`` (LibCity's ``mask_val``) also ignores labels below it.
    """
    keep = ~torch.isnan(labels)
    if not math.isnan(null_val):
        keep &= ~(torch.abs(labels - null_val) < NULL_TOLERANCE)
    if min_label is not None:
        keep &= labels >= min_label
    return keep


def _masked_mean(
    error: Callable[[Tensor, Tensor], Tensor], preds: Tensor, labels: Tensor, null_val: float,
    empty: float = math.nan, min_label: float | None = None,
) -> Tensor:
    """Mean of ``error(preds, labels)`` over the entries whose labels count (see _keep_mask).

    Equal to LibCity's reweighted mean, except that a NaN or inf prediction is never hidden: it
    makes the result NaN/inf (LibCity turned NaN terms into 0, so a diverged model scored 0).
    With no label that counts the result is ``empty``: NaN for metrics, 0 (with a zero gradient)
    for training losses, so a batch of missing readings teaches nothing instead of failing.
    """
    keep = _keep_mask(labels, null_val, min_label)
    if preds.requires_grad and torch.is_grad_enabled():
        # Ignored entries are swapped for a harmless constant before the error is taken: a
        # where() after the fact would still let a NaN/inf local gradient poison backward.
        one = torch.ones((), dtype=preds.dtype, device=preds.device)
        values = error(torch.where(keep, preds, one), torch.where(keep, labels, one))
    else:  # scoring: no backward, so the where() below suffices (and scoring METR_LA is 2x faster)
        values = error(preds, labels)
    count = keep.sum()
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, empty))


def masked_mae(preds: Tensor, labels: Tensor, null_val: float = float("nan"), empty: float = math.nan,
               min_label: float | None = None) -> Tensor:
    """Mean absolute error, ignoring labels equal to ``null_val`` (NaN: ignore NaN labels)."""
    return _masked_mean(lambda p, y: torch.abs(p - y), preds, labels, null_val, empty, min_label)


def masked_mse(preds: Tensor, labels: Tensor, null_val: float = float("nan"), empty: float = math.nan,
               min_label: float | None = None) -> Tensor:
    """Mean squared error (units squared), ignoring labels equal to ``null_val``."""
    return _masked_mean(lambda p, y: torch.square(p - y), preds, labels, null_val, empty, min_label)


def masked_rmse(preds: Tensor, labels: Tensor, null_val: float = float("nan"), empty: float = math.nan,
                min_label: float | None = None) -> Tensor:
    """Root of :func:`masked_mse`."""
    return torch.sqrt(masked_mse(preds, labels, null_val, empty, min_label))


def masked_mape(preds: Tensor, labels: Tensor, null_val: float = float("nan"), empty: float = math.nan,
                min_label: float | None = None) -> Tensor:
    """Mean of |preds - labels| / |labels| (a fraction, not percent).

    Unmasked (``null_val=nan``) a zero label with a non-zero error makes the result inf, as in
    LibCity; use ``null_val=0`` to skip zero labels.
    """
    return _masked_mean(lambda p, y: torch.abs(p - y) / torch.abs(y), preds, labels, null_val, empty, min_label)


def _one_minus_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """1 - numerator / denominator; for a constant target (denominator 0) scikit-learn's
    convention: 1 when predicted perfectly (numerator 0), else 0."""
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    fallback = (numerator == 0).to(numerator.dtype)
    return torch.where(positive, 1 - numerator / safe, fallback)


def r2_score(preds: Tensor, labels: Tensor) -> Tensor:
    """Coefficient of determination 1 - SS_res / SS_tot over all entries (flattened).

    Higher is better (1 is perfect), as scikit-learn's ``r2_score(labels, preds)``.
    """
    p, y = preds.reshape(-1), labels.reshape(-1)
    ss_res = torch.square(y - p).sum()
    ss_tot = torch.square(y - y.mean()).sum()
    return _one_minus_ratio(ss_res, ss_tot)


def explained_variance(preds: Tensor, labels: Tensor) -> Tensor:
    """1 - Var(labels - preds) / Var(labels) over all entries (flattened).

    Higher is better (1 is perfect), as scikit-learn's ``explained_variance_score``.
    """
    p, y = preds.reshape(-1), labels.reshape(-1)
    diff = y - p
    return _one_minus_ratio(torch.var(diff, correction=0), torch.var(y, correction=0))


def huber(preds: Tensor, labels: Tensor, delta: float = 1.0) -> Tensor:
    """Mean Huber loss: 0.5 e^2 where |e| <= delta, else delta * (|e| - 0.5 delta)."""
    return F.huber_loss(preds, labels, reduction="mean", delta=delta)


def log_cosh(preds: Tensor, labels: Tensor) -> Tensor:
    """Mean log(cosh(preds - labels)); written as |e| + log(1 + exp(-2|e|)) - log 2 so large
    errors do not overflow cosh."""
    e = torch.abs(preds - labels)
    return (e + F.softplus(-2 * e) - math.log(2.0)).mean()


def quantile(preds: Tensor, labels: Tensor, delta: float = 0.25) -> Tensor:
    """Mean pinball loss at quantile ``delta``: max(delta * e, (delta - 1) * e),
    with e = labels - preds."""
    e = labels - preds
    return torch.maximum(delta * e, (delta - 1) * e).mean()


# Metrics: no label that counts -> NaN. Training losses: -> 0, so the batch teaches nothing.
_mae = partial(masked_mae, null_val=math.nan)
_mse = partial(masked_mse, null_val=math.nan)
_rmse = partial(masked_rmse, null_val=math.nan)
_mape = partial(masked_mape, null_val=math.nan)
_masked_mae = partial(masked_mae, null_val=0.0)
_masked_mse = partial(masked_mse, null_val=0.0)
_masked_rmse = partial(masked_rmse, null_val=0.0)
_masked_mape = partial(masked_mape, null_val=0.0)


def _train(fn: LossFn) -> LossFn:
    return partial(fn, empty=0.0)


#: LibCity's ``train_loss`` config values. ``r2`` and ``evar`` are scores (higher is better) used
#: as-is, as LibCity does: minimising them makes the model worse, so choose them knowingly.
#: ``none`` (use the model's own ``calculate_loss``) is handled by the executor, not here.
TRAIN_LOSSES: dict[str, LossFn] = {
    "mae": _train(_mae),
    "mse": _train(_mse),
    "rmse": _train(_rmse),
    "mape": _train(_mape),
    "masked_mae": _train(_masked_mae),
    "masked_mse": _train(_masked_mse),
    "masked_rmse": _train(_masked_rmse),
    "masked_mape": _train(_masked_mape),
    "huber": huber,
    "logcosh": log_cosh,
    "quantile": quantile,
    "r2": r2_score,
    "evar": explained_variance,
}

#: Evaluator metric names (config key ``metrics``). ``masked_*`` ignore zero labels.
METRICS: dict[str, LossFn] = {
    "MAE": _mae,
    "MSE": _mse,
    "RMSE": _rmse,
    "MAPE": _mape,
    "masked_MAE": _masked_mae,
    "masked_MSE": _masked_mse,
    "masked_RMSE": _masked_rmse,
    "masked_MAPE": _masked_mape,
    "R2": r2_score,
    "EVAR": explained_variance,
}


#: Metrics that also ignore labels below the evaluator's ``mask_val`` (as LibCity's evaluator).
MASK_VAL_METRICS = frozenset({"masked_MAE", "masked_MAPE"})


def get_train_loss(name: str) -> LossFn:
    """The loss function for a ``train_loss`` config value; unknown names raise LibTrafficError."""
    return lookup(TRAIN_LOSSES, name, "train_loss", where="config key 'train_loss'")
