"""Loss/metric functions and their name tables against NumPy references written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from libtraffic.model import loss
from libtraffic.model.loss import METRICS, TRAIN_LOSSES, get_train_loss
from libtraffic.utils.errors import LibTrafficError


def _mae(p, y):
    return np.mean(np.abs(p - y))


def _mse(p, y):
    return np.mean((p - y) ** 2)


def _rmse(p, y):
    return np.sqrt(_mse(p, y))


def _mape(p, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(np.abs(p - y) / np.abs(y))


def _nonzero(ref):
    """The plain metric over the entries whose label is not 0."""
    return lambda p, y: ref(p[y != 0], y[y != 0])


def _huber(p, y):
    e = np.abs(p - y)
    return np.mean(np.where(e <= 1.0, 0.5 * e**2, e - 0.5))


def _logcosh(p, y):
    return np.mean(np.log(np.cosh(p - y)))


def _quantile(p, y):
    e = y - p
    return np.mean(np.maximum(0.25 * e, -0.75 * e))


def _r2(p, y):
    p, y = p.ravel(), y.ravel()
    return 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)


def _evar(p, y):
    p, y = p.ravel(), y.ravel()
    return 1 - np.var(y - p) / np.var(y)


TRAIN_REFS = {
    "mae": _mae, "mse": _mse, "rmse": _rmse, "mape": _mape,
    "masked_mae": _nonzero(_mae), "masked_mse": _nonzero(_mse),
    "masked_rmse": _nonzero(_rmse), "masked_mape": _nonzero(_mape),
    "huber": _huber, "logcosh": _logcosh, "quantile": _quantile, "r2": _r2, "evar": _evar,
}
METRIC_REFS = {
    "MAE": _mae, "MSE": _mse, "RMSE": _rmse, "MAPE": _mape,
    "masked_MAE": _nonzero(_mae), "masked_MSE": _nonzero(_mse),
    "masked_RMSE": _nonzero(_rmse), "masked_MAPE": _nonzero(_mape),
    "R2": _r2, "EVAR": _evar,
}


def _data(zeros: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """preds, labels [8, 3, 5, 2] around 50; with ``zeros`` about a fifth of labels are 0."""
    rng = np.random.default_rng(seed)
    labels = rng.uniform(20.0, 80.0, size=(8, 3, 5, 2))
    preds = labels + rng.normal(0.0, 3.0, size=labels.shape)
    if zeros:
        labels[rng.random(labels.shape) < 0.2] = 0.0
    return preds, labels


def _call(fn, p: np.ndarray, y: np.ndarray) -> float:
    out = fn(torch.from_numpy(p), torch.from_numpy(y))
    assert out.dim() == 0
    return out.item()


def test_tables_hold_exactly_the_libcity_names():
    assert set(TRAIN_LOSSES) == set(TRAIN_REFS)
    assert set(METRICS) == set(METRIC_REFS)
    assert "none" not in TRAIN_LOSSES


@pytest.mark.parametrize("zeros", [False, True], ids=["positive", "with_zeros"])
@pytest.mark.parametrize("table,refs", [(TRAIN_LOSSES, TRAIN_REFS), (METRICS, METRIC_REFS)],
                         ids=["train_losses", "metrics"])
def test_every_entry_matches_numpy(table, refs, zeros):
    p, y = _data(zeros)
    for name, fn in table.items():
        # assert_allclose treats inf == inf (unmasked MAPE with zero labels).
        np.testing.assert_allclose(_call(fn, p, y), refs[name](p, y), rtol=1e-10, err_msg=name)


def test_masked_metrics_ignore_zero_labels_exactly():
    p, y = _data(zeros=True, seed=1)
    keep = y != 0
    for masked, plain in [("masked_MAE", "MAE"), ("masked_MSE", "MSE"),
                          ("masked_RMSE", "RMSE"), ("masked_MAPE", "MAPE")]:
        on_kept = METRICS[plain](torch.from_numpy(p[keep]), torch.from_numpy(y[keep]))
        np.testing.assert_allclose(_call(METRICS[masked], p, y), on_kept.item(), rtol=1e-12)


def test_unmasked_ignores_nan_labels():
    p, y = _data(zeros=False, seed=2)
    y[0, 0, :3, 0] = np.nan
    keep = ~np.isnan(y)
    np.testing.assert_allclose(_call(TRAIN_LOSSES["mae"], p, y), _mae(p[keep], y[keep]), rtol=1e-12)
    np.testing.assert_allclose(_call(TRAIN_LOSSES["mse"], p, y), _mse(p[keep], y[keep]), rtol=1e-12)


@pytest.mark.parametrize("name", ["masked_MAE", "masked_MSE", "masked_RMSE", "masked_MAPE"])
def test_metric_with_no_valid_label_is_nan_not_zero(name):
    p = np.full((4, 3), 5.0)
    y = np.zeros((4, 3))
    assert np.isnan(_call(METRICS[name], p, y))


@pytest.mark.parametrize("name", ["masked_mae", "masked_mse", "masked_rmse", "masked_mape"])
def test_train_loss_with_no_valid_label_is_zero_with_zero_gradient(name):
    preds = torch.full((4, 3), 5.0, dtype=torch.float64, requires_grad=True)
    value = get_train_loss(name)(preds, torch.zeros((4, 3), dtype=torch.float64))
    value.backward()
    assert value.item() == 0.0 and torch.equal(preds.grad, torch.zeros_like(preds))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ["MAE", "MSE", "RMSE", "MAPE", "masked_MAE", "masked_MSE", "masked_RMSE",
                                  "masked_MAPE"])
def test_non_finite_prediction_is_never_scored_as_zero(name, bad):
    """Only labels mask: a diverged model's NaN/inf prediction must make the metric non-finite."""
    p, y = _data(zeros=True, seed=4)
    p[0, 0, 1, 0] = bad
    y[0, 0, 1, 0] = 50.0  # a valid label under the bad prediction
    assert not np.isfinite(_call(METRICS[name], p, y))


def test_nan_prediction_under_a_masked_label_is_ignored():
    p, y = _data(zeros=True, seed=5)
    y[0, 0, 2, 0] = 0.0
    p[0, 0, 2, 0] = np.nan
    keep = y != 0
    np.testing.assert_allclose(_call(METRICS["masked_MAE"], p, y), _mae(p[keep], y[keep]), rtol=1e-12)


def test_mask_val_ignores_labels_below_it():
    p, y = np.array([1.0, 2.0, 30.0, 0.0]), np.array([4.0, 12.0, 20.0, 0.0])
    value = METRICS["masked_MAE"](torch.from_numpy(p), torch.from_numpy(y), min_label=10.0).item()
    assert value == pytest.approx((10.0 + 10.0) / 2)


def test_unmasked_mape_with_a_zero_label_is_inf():
    p, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 4.0])
    assert _call(METRICS["MAPE"], p, y) == np.inf
    assert _call(METRICS["masked_MAPE"], p, y) == pytest.approx((0.0 + 0.25) / 2)


def test_masked_loss_gradients_stay_finite_with_zero_and_nan_labels():
    p, y = _data(zeros=True, seed=3)
    y[0, 0, 0, 0] = np.nan
    # Unmasked "mape" is left out: with zero labels the loss itself is inf.
    for name in ["mae", "mse", "rmse", "masked_mae", "masked_rmse", "masked_mape"]:
        preds = torch.from_numpy(p).requires_grad_()
        get_train_loss(name)(preds, torch.from_numpy(y)).backward()
        assert torch.isfinite(preds.grad).all(), name


def test_hand_computed_values():
    p = torch.tensor([1.0, 2.0, 4.0])
    y = torch.tensor([1.0, 4.0, 3.0])  # errors y - p: 0, 2, -1
    assert loss.masked_mae(p, y).item() == pytest.approx(1.0)
    assert loss.huber(p, y).item() == pytest.approx((0.0 + 1.5 + 0.5) / 3)
    assert loss.quantile(p, y).item() == pytest.approx((0.0 + 0.5 + 0.75) / 3)


def test_log_cosh_is_stable_for_large_errors():
    p, y = torch.tensor([0.0, 0.0]), torch.tensor([1e4, -2e4])
    assert loss.log_cosh(p, y).item() == pytest.approx((1e4 + 2e4) / 2 - np.log(2.0), rel=1e-6)


def test_scores_on_constant_target_follow_sklearn():
    y = torch.full((5,), 3.0)
    for fn in (loss.r2_score, loss.explained_variance):
        assert fn(y.clone(), y).item() == 1.0
        assert fn(y + torch.arange(5.0), y).item() == 0.0


def test_get_train_loss_returns_table_entry():
    assert get_train_loss("masked_mae") is TRAIN_LOSSES["masked_mae"]


def test_unknown_train_loss_suggests_closest():
    with pytest.raises(LibTrafficError, match="maked_mae") as err:
        get_train_loss("maked_mae")
    assert "Did you mean 'masked_mae'?" in str(err.value)
    assert "train_loss" in str(err.value)
