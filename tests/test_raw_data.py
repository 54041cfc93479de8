"""Raw arrays shared with tuning trials: read once, then cut and scaled per trial's settings."""

from __future__ import annotations

import numpy as np
import pytest

from libtraffic.config import ConfigParser
from libtraffic.data.prepared import DATA_KEYS, RAW_KEYS, from_raw, prepare_data, prepared_for, read_raw


def config(dataset: str, **overrides) -> ConfigParser:
    return ConfigParser("traffic_state_pred", "GRU", dataset, other_args={"cache_dataset": False, **overrides})


def test_raw_keys_are_data_keys() -> None:
    assert set(RAW_KEYS) <= set(DATA_KEYS)


@pytest.mark.parametrize("settings", [{}, {"input_window": 6, "output_window": 3, "scaler": "minmax01"},
                                      {"add_time_in_day": True, "add_day_in_week": True, "train_rate": 0.6},
                                      {"scaler": "standard", "normal_external": True, "add_time_in_day": True}])
def test_from_raw_equals_prepare_data(tiny_dataset: str, settings: dict) -> None:
    """One read of the files serves every data setting a trial may sample, with the same result as
    preparing from the files, and the shared arrays (read-only in Ray's object store) stay as read."""
    raw = read_raw(config(tiny_dataset))
    for array in (raw.data, raw.times, raw.origin, raw.dest):
        array.flags.writeable = False
    before = raw.data.copy()
    cfg = config(tiny_dataset, **settings)
    expected = prepare_data(cfg)
    got = prepared_for(raw, cfg)
    np.testing.assert_array_equal(got.data, expected.data)
    np.testing.assert_array_equal(got.adj_mx, expected.adj_mx)
    assert (got.split, got.input_window, got.output_window, got.output_dim, got.ext_dim, got.cache_key) == (
        expected.split, expected.input_window, expected.output_window, expected.output_dim, expected.ext_dim,
        expected.cache_key)
    np.testing.assert_array_equal(raw.data, before)
    assert prepared_for(expected, cfg) is expected
    assert from_raw(raw, cfg).cache_key == expected.cache_key
