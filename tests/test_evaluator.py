"""TrafficStateEvaluator: per-horizon values against NumPy, accumulation, files, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from libtraffic.evaluator import EVALUATORS, TrafficStateEvaluator, get_evaluator
from libtraffic.utils.errors import LibTrafficError

OUT = 3

# Independent NumPy references for the metrics the tests use.
REFS = {
    "MAE": lambda p, y: np.mean(np.abs(p - y)),
    "RMSE": lambda p, y: np.sqrt(np.mean((p - y) ** 2)),
    "masked_MAPE": lambda p, y: np.mean(np.abs(p - y)[y != 0] / np.abs(y[y != 0])),
    "R2": lambda p, y: 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2),
}


def _config(**overrides):
    config = {
        "metrics": list(REFS),
        "evaluator_mode": "single",
        "save_mode": ["csv", "json"],
        "output_window": OUT,
        "model": "GRU",
        "dataset": "TOY",
        "evaluator": "TrafficStateEvaluator",
        "eval_mask_val": None,
        "mask_val": None,
    }
    config.update(overrides)
    return config


def _data(samples: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y_true, y_pred [samples, OUT, 4, 1] float32; some true values are 0 (missing)."""
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(10.0, 70.0, size=(samples, OUT, 4, 1)).astype(np.float32)
    y_true[rng.random(y_true.shape) < 0.15] = 0.0
    # Error grows with the step, so single and average modes differ.
    step = np.arange(1, OUT + 1, dtype=np.float32).reshape(1, OUT, 1, 1)
    y_pred = (y_true + step * rng.normal(0.0, 2.0, size=y_true.shape)).astype(np.float32)
    return y_true, y_pred


def _batch(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {"y_true": torch.from_numpy(y_true), "y_pred": torch.from_numpy(y_pred)}


def _evaluated(mode: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    evaluator = TrafficStateEvaluator(_config(evaluator_mode=mode))
    evaluator.collect(_batch(y_true, y_pred))
    return evaluator.evaluate()


@pytest.mark.parametrize("mode", ["single", "average"])
def test_values_per_horizon_match_numpy(mode):
    y_true, y_pred = _data()
    result = _evaluated(mode, y_true, y_pred)
    assert list(result) == [f"{m}@{i}" for i in range(1, OUT + 1) for m in REFS]
    t, p = y_true.astype(np.float64), y_pred.astype(np.float64)
    for i in range(1, OUT + 1):
        steps = slice(i - 1, i) if mode == "single" else slice(0, i)
        for name, ref in REFS.items():
            value = result[f"{name}@{i}"]
            assert type(value) is float
            np.testing.assert_allclose(value, ref(p[:, steps], t[:, steps]), rtol=1e-5,
                                       err_msg=f"{name}@{i}")


def test_single_and_average_agree_at_first_horizon_only():
    y_true, y_pred = _data()
    single, average = _evaluated("single", y_true, y_pred), _evaluated("average", y_true, y_pred)
    assert single["MAE@1"] == average["MAE@1"]
    assert single[f"MAE@{OUT}"] != average[f"MAE@{OUT}"]


def test_two_collects_equal_one_big_collect():
    y_true, y_pred = _data(samples=12)
    whole = _evaluated("average", y_true, y_pred)
    evaluator = TrafficStateEvaluator(_config(evaluator_mode="average"))
    evaluator.collect(_batch(y_true[:5], y_pred[:5]))
    evaluator.collect(_batch(y_true[5:], y_pred[5:]))
    assert evaluator.evaluate() == whole


def test_clear_forgets_collected_data():
    y_true, y_pred = _data()
    evaluator = TrafficStateEvaluator(_config())
    evaluator.collect(_batch(*_data(seed=5)))
    evaluator.clear()
    with pytest.raises(RuntimeError):
        evaluator.evaluate()
    evaluator.collect(_batch(y_true, y_pred))
    assert evaluator.evaluate() == _evaluated("single", y_true, y_pred)


def test_collect_rejects_mismatched_shapes():
    y_true, y_pred = _data()
    evaluator = TrafficStateEvaluator(_config())
    with pytest.raises(ValueError):
        evaluator.collect(_batch(y_true, y_pred[:, :, :2]))
    with pytest.raises(ValueError):
        evaluator.collect(_batch(y_true[:, :2], y_pred[:, :2]))


def test_save_result_round_trips_csv_and_json(tmp_path):
    evaluator = TrafficStateEvaluator(_config())
    evaluator.collect(_batch(*_data()))
    result = evaluator.evaluate()
    out_dir = tmp_path / "evaluate_cache" / "nested"
    paths = evaluator.save_result(out_dir, "res")
    assert sorted(p.name for p in paths) == ["res.csv", "res.json"]
    assert json.loads((out_dir / "res.json").read_text()) == result
    table = pd.read_csv(out_dir / "res.csv", index_col=0)
    assert list(table.columns) == list(REFS)
    assert list(table.index) == list(range(1, OUT + 1))
    for i in range(1, OUT + 1):
        for name in REFS:
            np.testing.assert_allclose(table.loc[i, name], result[f"{name}@{i}"], rtol=1e-12)


def test_save_result_default_name_and_string_save_mode(tmp_path):
    evaluator = TrafficStateEvaluator(_config(save_mode="json"))
    evaluator.collect(_batch(*_data()))
    (path,) = evaluator.save_result(tmp_path)
    assert re.fullmatch(r"\d{4}(_\d{2}){5}_GRU_TOY\.json", path.name)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_format_table_shows_every_metric_and_horizon():
    evaluator = TrafficStateEvaluator(_config(metrics=["MAE", "masked_RMSE", "EVAR"]))
    evaluator.collect(_batch(*_data()))
    result = evaluator.evaluate()
    table = evaluator.format_table(result)
    for name in ["MAE", "masked_RMSE", "EVAR"]:
        assert name in table
        for i in range(1, OUT + 1):
            assert f"{result[f'{name}@{i}']:.4f}" in table
    assert len(table.splitlines()) >= OUT + 1


@pytest.mark.parametrize("overrides,fragment", [
    ({"metrics": ["MAE", "MAEE"]}, "MAEE"),
    ({"metrics": "masked_mae"}, "Did you mean 'masked_MAE'?"),
    ({"evaluator_mode": "avg"}, "evaluator_mode"),
    ({"save_mode": ["csv", "xlsx"]}, "xlsx"),
    ({"output_window": 0}, "output_window"),
])
def test_bad_config_raises_user_error(overrides, fragment):
    with pytest.raises(LibTrafficError, match=re.escape(fragment)):
        TrafficStateEvaluator(_config(**overrides))


def test_get_evaluator_by_name():
    assert EVALUATORS == {"TrafficStateEvaluator": TrafficStateEvaluator}
    assert isinstance(get_evaluator(_config()), TrafficStateEvaluator)
    with pytest.raises(LibTrafficError, match="--evaluator"):
        get_evaluator(_config(evaluator="TrafficStateEvaluater"))


@pytest.mark.parametrize("key", ["eval_mask_val", "mask_val"])
def test_mask_val_drops_low_labels_from_masked_mae_and_mape_only(key):
    y_true, y_pred = _data(seed=7)
    ev = TrafficStateEvaluator(_config(**{key: 30.0}))
    ev.collect({"y_true": torch.from_numpy(y_true), "y_pred": torch.from_numpy(y_pred)})
    result = ev.evaluate()
    for i in range(1, OUT + 1):
        t, p = y_true[:, i - 1], y_pred[:, i - 1]
        keep = t >= 30.0
        assert result[f"masked_MAPE@{i}"] == pytest.approx(np.mean(np.abs(p - t)[keep] / t[keep]), rel=1e-5)
        assert result[f"MAE@{i}"] == pytest.approx(REFS["MAE"](p, t), rel=1e-5)


def test_mask_val_must_be_a_number():
    with pytest.raises(LibTrafficError, match="mask_val"):
        TrafficStateEvaluator(_config(mask_val="ten"))
