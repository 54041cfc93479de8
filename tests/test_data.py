"""Data: atomic files -> (T, N, F) array -> scaler -> windows -> batches, against hand-made data.

The hand-made dataset has 3 nodes x 20 steps with value = 100 * (node + 1) + t, so every
window's contents follow from its start index.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import TrafficStatePointDataset, get_dataset
from libtraffic.data import prepared as prepared_module
from libtraffic.data.prepared import cache_key, prepare_data
from libtraffic.data.scalers import SCALERS, get_scaler
from libtraffic.data.windows import num_samples, split_sizes, window_counts
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

from conftest import dyna_text, hand_values

T, N, IN, OUT, BATCH = 20, 3, 3, 2, 4
# 20 - 3 - 2 + 1 = 16 samples: train round(11.2) = 11, test round(3.2) = 3, valid 16 - 14 = 2.
SPLIT = (11, 2, 3)
VALUES = hand_values(T, N)


def make_config(name: str, **overrides) -> ConfigParser:
    """Plain readings (no time features) unless a test asks for them."""
    args = {"input_window": IN, "output_window": OUT, "batch_size": BATCH, "scaler": "none", "load_external": False,
            "add_time_in_day": False, **overrides}
    return ConfigParser("traffic_state_pred", "GRU", name, other_args=args)


def windows_of(starts: np.ndarray, values: np.ndarray = VALUES) -> tuple[np.ndarray, np.ndarray]:
    """Expected X [B, IN, N, 1] and y [B, OUT, N, 1] for sample starts."""
    starts = np.asarray(starts)
    x = values[starts[:, None] + np.arange(IN)][..., None]
    y = values[starts[:, None] + IN + np.arange(OUT)][..., None]
    return x, y


@pytest.fixture
def hand(make_dataset) -> str:
    make_dataset("HAND", VALUES)
    return "HAND"


def test_num_samples_and_split_sizes() -> None:
    assert num_samples(20, 3, 2) == 16
    assert num_samples(34272, 12, 12) == 34249  # METR_LA's sample count in LibCity
    assert split_sizes(16, 0.7, 0.1) == (11, 2, 3)
    assert split_sizes(15, 0.7, 0.1) == (10, 2, 3)  # 10.5 rounds to even, as Python's round in LibCity
    assert split_sizes(7, 0.5, 0.25) == (4, 1, 2)  # train 3.5 -> 4, test 1.75 -> 2
    assert split_sizes(25, 0.6, 0.2) == (15, 5, 5)


def test_prepared_array_and_split(hand: str) -> None:
    prepared = get_dataset(make_config(hand)).prepare()
    assert prepared.data.dtype == np.float32
    np.testing.assert_array_equal(prepared.data, VALUES[..., None])
    assert prepared.split == SPLIT
    assert (prepared.num_nodes, prepared.feature_dim, prepared.output_dim, prepared.ext_dim) == (3, 1, 1, 0)


def _starts(loader) -> list[int]:
    """Start index of every sample of a loader (node 0 reads 100 + t), checking its contents."""
    starts = []
    for batch in loader:
        assert set(batch) == {"X", "y"}
        s = (batch["X"][:, 0, 0, 0] - 100).round().long().numpy()
        x, y = windows_of(s)
        np.testing.assert_array_equal(batch["X"].numpy(), x)
        np.testing.assert_array_equal(batch["y"].numpy(), y)
        starts.extend(s.tolist())
    return starts


def test_loaders_cut_the_windows_in_order(hand: str) -> None:
    train, valid, test = get_dataset(make_config(hand)).get_data()
    first = next(iter(valid))
    assert first["X"].shape == (2, IN, N, 1) and first["y"].shape == (2, OUT, N, 1)
    np.testing.assert_array_equal(first["X"][0, :, :, 0].numpy(), [[111, 211, 311], [112, 212, 312], [113, 213, 313]])
    np.testing.assert_array_equal(first["y"][0, :, :, 0].numpy(), [[114, 214, 314], [115, 215, 315]])
    assert _starts(valid) == [11, 12]
    assert _starts(test) == [13, 14, 15]
    # 11 training samples padded with the last one to 3 full batches of 4.
    assert [len(b["X"]) for b in train] == [4, 4, 4]
    assert sorted(_starts(train)) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]


def test_loaders_draw_from_torch_global_generator_as_libcity(hand: str) -> None:
    """LibCity's loaders (shuffle=True for train and valid, False for test, no generator) take their
    order from torch's global generator after the run's seed. Ours give the same training order, pass
    after pass, and leave the global generator where LibCity's leave it, validating in time order."""
    train, valid, test = get_dataset(make_config(hand)).get_data()
    padded = list(range(11)) + [10]  # the training starts, padded to 3 batches of 4
    libcity = {"train": torch.utils.data.DataLoader(padded, batch_size=BATCH, shuffle=True),
               "valid": torch.utils.data.DataLoader([11, 12], batch_size=BATCH, shuffle=True),
               "test": torch.utils.data.DataLoader([13, 14, 15], batch_size=BATCH, shuffle=False)}
    for seed in (0, 7):
        torch.manual_seed(seed)
        ours = [(_starts(train), _starts(valid)) for _ in range(3)] + [_starts(test)]
        after_ours = torch.get_rng_state()
        torch.manual_seed(seed)
        theirs = [([int(s) for b in libcity["train"] for s in b], sorted(int(s) for b in libcity["valid"] for s in b))
                  for _ in range(3)] + [[int(s) for b in libcity["test"] for s in b]]
        assert ours == theirs
        assert torch.equal(after_ours, torch.get_rng_state())
    assert ours[0][0] != ours[1][0]  # a new order each epoch
    assert ours[0][1] == [11, 12]  # validation in time order


def test_no_padding(hand: str) -> None:
    train, _, test = get_dataset(make_config(hand, pad_with_last_sample=False)).get_data()
    assert [len(b["X"]) for b in train] == [4, 4, 3]
    assert sorted(_starts(train)) == list(range(11))
    assert [len(b["X"]) for b in test] == [3]


def test_data_feature(hand: str) -> None:
    feature = get_dataset(make_config(hand, batch_size=5)).get_data_feature()
    assert (feature["num_nodes"], feature["feature_dim"], feature["output_dim"], feature["ext_dim"]) == (3, 1, 1, 0)
    assert feature["num_batches"] == 3  # ceil(11 / 5)
    assert feature["adj_mx"].shape == (3, 3)


def test_bad_rates_and_sizes(hand: str) -> None:
    with pytest.raises(LibTrafficError, match=r"train_rate \(0.8\) and eval_rate \(0.3\)"):
        TrafficStatePointDataset(make_config(hand, train_rate=0.8, eval_rate=0.3))
    with pytest.raises(LibTrafficError, match="batch_size must be a positive integer, got 0"):
        TrafficStatePointDataset(make_config(hand, batch_size=0))
    with pytest.raises(LibTrafficError, match="too few for input_window 12"):
        get_dataset(make_config(hand, input_window=12, output_window=8)).prepare()


# ----- scalers -----

FIT_STEPS = SPLIT[0] + IN - 1  # 13: the steps that training inputs cover


def test_standard_scaler_fitted_on_libcitys_stacked_training_inputs(make_dataset) -> None:
    """LibCity's StandardScaler(x_train.mean(), x_train.std()) over its overlapping input windows."""
    make_dataset("SCALE", VALUES)
    prepared = get_dataset(make_config("SCALE", scaler="standard")).prepare()
    x_train, _ = windows_of(np.arange(SPLIT[0]))
    x_train = x_train.astype(np.float64)
    mean, std = x_train.mean(), x_train.std()
    assert prepared.scaler.mean == pytest.approx(mean, rel=1e-12)
    assert prepared.scaler.std == pytest.approx(std, rel=1e-12)
    assert mean == pytest.approx(206.0)  # (100 + 200 + 300) / 3 + the windows' mean step 6
    assert std != pytest.approx(VALUES[:FIT_STEPS].std(dtype=np.float64), rel=1e-6)  # each step once: wrong
    np.testing.assert_allclose(prepared.data[..., 0], (VALUES - mean) / std, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_windows, window", [(11, 3), (2, 5), (5, 1), (1, 4), (4, 4)])
def test_window_counts_count_the_stacked_windows(num_windows: int, window: int) -> None:
    held = np.arange(num_windows)[:, None] + np.arange(window)  # the step indices of each window
    np.testing.assert_array_equal(window_counts(num_windows, window), np.bincount(held.ravel()))


def test_weighted_standard_fit_equals_repeated_steps() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(5, 70, (6, 4, 2)).astype(np.float32)
    counts = np.array([1, 2, 3, 3, 2, 1])
    weighted = get_scaler("standard").fit(values, counts)
    repeated = np.repeat(values, counts, axis=0).astype(np.float64)
    assert (weighted.mean, weighted.std) == pytest.approx((repeated.mean(), repeated.std()), rel=1e-13)


@pytest.mark.parametrize("step, changes", [(12, True), (13, False), (19, False)])
def test_scaler_ignores_values_after_training_inputs(make_dataset, step: int, changes: bool) -> None:
    make_dataset("BASE", VALUES)
    changed = VALUES.copy()
    changed[step:] += 1000.0
    make_dataset("CHANGED", changed)
    base = get_dataset(make_config("BASE", scaler="standard")).prepare().scaler
    other = get_dataset(make_config("CHANGED", scaler="standard")).prepare().scaler
    assert ((base.mean, base.std) != (other.mean, other.std)) is changes


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_scalers_round_trip(name: str) -> None:
    rng = np.random.default_rng(0)
    fit = rng.uniform(5, 70, (50, 4, 1)).astype(np.float32)
    x = rng.uniform(1, 80, (20, 4, 1)).astype(np.float32)
    scaler = get_scaler(name).fit(fit)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(x)), x, rtol=1e-5)
    t = torch.from_numpy(x)
    back = scaler.inverse_transform(scaler.transform(t))
    assert isinstance(back, torch.Tensor)
    torch.testing.assert_close(back, t, rtol=1e-5, atol=1e-4)


def test_scaler_formulas() -> None:
    fit = np.array([2.0, 4.0, 10.0], dtype=np.float32)
    x = np.array([2.0, 10.0, 6.0])
    np.testing.assert_allclose(get_scaler("normal").fit(fit).transform(x), [0.2, 1.0, 0.6])
    np.testing.assert_allclose(get_scaler("minmax01").fit(fit).transform(x), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(get_scaler("minmax11").fit(fit).transform(x), [-1.0, 1.0, 0.0])
    np.testing.assert_allclose(get_scaler("log").fit(fit).transform(x), np.log(x + 0.999))  # LibCity's eps
    np.testing.assert_allclose(get_scaler("standard").fit(fit).transform(x), (x - 16 / 3) / np.std([2.0, 4.0, 10.0]))
    np.testing.assert_array_equal(get_scaler("none").fit(fit).transform(x), x)
    with pytest.raises(LibTrafficError, match=r"Unknown scaler 'standart' \(from config key 'scaler'\)\. Did you mean 'standard'\?"):
        get_scaler("standart")


# ----- time features, file layout -----


def test_time_in_day_and_day_in_week(make_dataset) -> None:
    start = np.datetime64("2012-03-04T23:50:00", "s")  # a Sunday, 10 minutes before Monday
    make_dataset("TIMES", VALUES, start=start)
    prepared = get_dataset(make_config("TIMES", scaler="standard", load_external=True, add_time_in_day=True,
                                       add_day_in_week=True)).prepare()
    assert prepared.data.shape == (T, N, 9) and prepared.output_dim == 1 and prepared.ext_dim == 8
    seconds = (23 * 3600 + 50 * 60 + 300 * np.arange(T)) % 86400
    assert seconds[2] == 0
    for node in range(N):
        np.testing.assert_allclose(prepared.data[:, node, 1], seconds / 86400, rtol=0, atol=1e-7)
        weekday = np.zeros((T, 7))
        weekday[:2, 6] = 1  # Sunday
        weekday[2:, 0] = 1  # Monday
        np.testing.assert_array_equal(prepared.data[:, node, 2:], weekday)


def test_shuffled_dyna_rows_load_identically(make_dataset) -> None:
    make_dataset("ORDERED", VALUES)
    make_dataset("SHUFFLED", VALUES, shuffle_seed=3)
    rows = {name: [line.split(",", 1)[1] for line in (Path("raw_data") / name / f"{name}.dyna").read_text().splitlines()[1:]]
            for name in ("ORDERED", "SHUFFLED")}
    assert rows["SHUFFLED"] != rows["ORDERED"] and sorted(rows["SHUFFLED"]) == sorted(rows["ORDERED"])
    ordered = get_dataset(make_config("ORDERED")).prepare()
    shuffled = get_dataset(make_config("SHUFFLED")).prepare()
    np.testing.assert_array_equal(shuffled.data, ordered.data)
    np.testing.assert_array_equal(shuffled.data[..., 0], VALUES)


def test_entity_order_comes_from_geo(make_dataset) -> None:
    # .dyna groups entities 10, 11, 12; .geo lists 12, 10, 11, which defines the node indices.
    make_dataset("GEOORDER", VALUES, geo_ids=[12, 10, 11], dyna=dyna_text(VALUES, [10, 11, 12], ["traffic_speed"]))
    prepared = get_dataset(make_config("GEOORDER")).prepare()
    np.testing.assert_array_equal(prepared.data[..., 0], VALUES[:, [2, 0, 1]])


def test_data_col_and_output_dim(make_dataset) -> None:
    values = np.stack([VALUES, -VALUES], axis=2)
    make_dataset("TWO", values, info={"output_dim": 1})
    both = get_dataset(make_config("TWO")).prepare()
    assert both.data.shape == (T, N, 2) and both.output_dim == 1
    np.testing.assert_array_equal(both.data, values)
    make_dataset("SECOND", values, info={"data_col": ["c1"], "output_dim": 1})
    second = get_dataset(make_config("SECOND")).prepare()
    np.testing.assert_array_equal(second.data[..., 0], -VALUES)


def test_output_dim_defaults_to_one_as_libcity(make_dataset) -> None:
    """A config.json without output_dim predicts the first data column; the others are inputs."""
    values = np.stack([VALUES, -VALUES], axis=2)
    make_dataset("NODIM", values, info={"output_dim": None})
    prepared = get_dataset(make_config("NODIM")).prepare()
    assert (prepared.output_dim, prepared.ext_dim, prepared.feature_dim) == (1, 1, 2)


def test_ext_file_defaults_to_the_dataset_name_as_libcity(make_dataset) -> None:
    """LibCity reads <dataset>.ext when ext_file is not set, whatever data_files names."""
    folder = make_dataset("EXT", VALUES, info={"data_files": ["EXT_2012"], "ext_col": ["rain"]})
    (folder / "EXT.dyna").rename(folder / "EXT_2012.dyna")
    times = np.datetime_as_string(np.datetime64("2012-03-01T00:00:00", "s") + 300 * np.arange(T), unit="s")
    ext_text = "ext_id,time,rain\n" + "".join(f"{i},{t}Z,{i % 3}\n" for i, t in enumerate(times))
    (folder / "EXT_2012.ext").write_text(ext_text.replace(",rain", ",other"))  # not LibCity's file: not read
    config = make_config("EXT", load_external=True, add_time_in_day=False)
    assert get_dataset(config).prepare().ext_dim == 0
    (folder / "EXT.ext").write_text(ext_text)
    prepared = get_dataset(make_config("EXT", load_external=True, add_time_in_day=False, cache_dataset=False)).prepare()
    assert prepared.ext_dim == 1
    np.testing.assert_array_equal(prepared.data[:, 0, 1], np.arange(T) % 3)


def test_nan_readings_become_zero_with_a_count(make_dataset, caplog: pytest.LogCaptureFixture) -> None:
    values = VALUES.copy()
    values[4, 1] = np.nan
    values[17, 2] = np.nan
    make_dataset("NANS", values)
    with caplog.at_level(logging.WARNING, logger="libtraffic"):
        prepared = get_dataset(make_config("NANS")).prepare()
    assert "NANS.dyna: 2 NaN and 0 infinite (or beyond float32's range) readings treated as missing" in caplog.text
    expected = VALUES.copy()
    expected[4, 1] = expected[17, 2] = 0
    np.testing.assert_array_equal(prepared.data[..., 0], expected)


# ----- adjacency -----

REL = [(0, 1, 10.0), (1, 2, 20.0), (0, 2, 30.0), (2, 2, 0.0)]
INF = np.inf


@pytest.mark.parametrize("info, expected", [
    ({"set_weight_link_or_dist": "link", "init_weight_inf_or_zero": "zero"}, [[0, 1, 1], [0, 0, 1], [0, 0, 1]]),
    ({"set_weight_link_or_dist": "link", "init_weight_inf_or_zero": "inf"}, [[0, 1, 1], [0, 0, 1], [0, 0, 1]]),
    ({"set_weight_link_or_dist": "dist", "init_weight_inf_or_zero": "zero"}, [[0, 10, 30], [0, 0, 20], [0, 0, 0]]),
    ({"set_weight_link_or_dist": "dist", "init_weight_inf_or_zero": "inf"},
     [[INF, 10, 30], [INF, INF, 20], [INF, INF, 0]]),
    ({"set_weight_link_or_dist": "dist", "init_weight_inf_or_zero": "zero", "bidir_adj_mx": True},
     [[0, 10, 30], [10, 0, 20], [30, 20, 0]]),
    ({"set_weight_link_or_dist": "link", "init_weight_inf_or_zero": "zero", "bidir_adj_mx": True},
     [[0, 1, 1], [1, 0, 1], [1, 1, 1]]),
], ids=["link-zero", "link-inf", "dist-zero", "dist-inf", "dist-bidir", "link-bidir"])
def test_adjacency_options(make_dataset, info: dict, expected) -> None:
    make_dataset("ADJ", VALUES, rel=REL, info=info)
    adj = get_dataset(make_config("ADJ", cache_dataset=False)).prepare().adj_mx
    assert adj.dtype == np.float32
    np.testing.assert_array_equal(adj, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize("bidir, expected", [
    (True, [[0, 40, 0], [40, 0, 25], [0, 25, 0]]),
    (False, [[0, 10, 0], [40, 0, 25], [0, 0, 0]]),
])
def test_adjacency_rows_apply_in_file_order(make_dataset, bidir: bool, expected) -> None:
    """As LibCity's loop over the .rel rows: a later row overwrites a cell, and with bidir_adj_mx each
    row writes both directions, so a pair listed both ways takes the later row's weight both ways."""
    rel = [(0, 1, 10.0), (1, 0, 40.0), (1, 2, 20.0), (1, 2, 25.0)]
    make_dataset("ORDER", VALUES, rel=rel, info={"set_weight_link_or_dist": "dist", "bidir_adj_mx": bidir})
    adj = get_dataset(make_config("ORDER", cache_dataset=False)).prepare().adj_mx
    np.testing.assert_array_equal(adj, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize("epsilon", [0.1, 0.01])
def test_gaussian_kernel(make_dataset, epsilon: float) -> None:
    make_dataset("KERNEL", VALUES, rel=REL, info={
        "set_weight_link_or_dist": "dist", "init_weight_inf_or_zero": "inf",
        "calculate_weight_adj": True, "weight_adj_epsilon": epsilon,
    })
    adj = get_dataset(make_config("KERNEL", cache_dataset=False)).prepare().adj_mx
    dist = np.full((3, 3), np.inf)
    for o, d, c in REL:
        dist[o, d] = c
    std = np.sqrt(125.0)  # std of the finite distances 10, 20, 30, 0
    assert np.std(dist[np.isfinite(dist)]) == pytest.approx(std)
    reference = np.exp(-np.square(dist / std))
    reference[reference < epsilon] = 0
    np.testing.assert_allclose(adj, reference, rtol=1e-6, atol=0)
    kept = {0.1: [[0, np.exp(-0.8), 0], [0, 0, 0], [0, 0, 1]],
            0.01: [[0, np.exp(-0.8), 0], [0, 0, np.exp(-3.2)], [0, 0, 1]]}[epsilon]
    np.testing.assert_allclose(adj, kept, rtol=1e-6, atol=0)


def test_rel_rows_with_unknown_ids_are_skipped(make_dataset, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_dataset("RELX", VALUES, rel=REL, info={"set_weight_link_or_dist": "dist", "weight_col": ""})
    with open(folder / "RELX.rel", "a") as handle:
        handle.write("4,geo,10,99,5.0\n")
    with caplog.at_level(logging.WARNING, logger="libtraffic"):
        adj = get_dataset(make_config("RELX", cache_dataset=False)).prepare().adj_mx
    assert "1 rows name ids absent from .geo" in caplog.text
    np.testing.assert_array_equal(adj, [[0, 10, 30], [0, 0, 20], [0, 0, 0]])


# ----- the dataset cache -----


def _cache_folders() -> list[str]:
    folder = paths.dataset_cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_cache_is_reused(hand: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(hand, scaler="standard")
    first = prepare_data(config)
    key = cache_key(config, prepared_module._files(config))
    assert first.cache_key == key
    assert _cache_folders() == [f"HAND_{key}"]
    assert sorted(p.name for p in (paths.dataset_cache_dir() / f"HAND_{key}").iterdir()) == ["adj_mx.npy", "data.npy", "meta.json"]

    def no_build(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(prepared_module, "_build", no_build)
    with caplog.at_level(logging.INFO, logger="libtraffic"):
        second = prepare_data(make_config(hand, scaler="standard", batch_size=2, learning_rate=0.5))
    assert "Loaded prepared data from cache" in caplog.text
    np.testing.assert_array_equal(second.data, first.data)
    np.testing.assert_array_equal(second.adj_mx, first.adj_mx)
    assert (second.scaler.mean, second.scaler.std, second.split) == (first.scaler.mean, first.scaler.std, first.split)


@pytest.mark.parametrize("scaler", sorted(SCALERS))
def test_cache_restores_every_scaler_from_json(make_dataset, scaler: str) -> None:
    """meta.json (no pickle) brings back the scalers, split and sizes exactly."""
    make_dataset("TIMES", VALUES, start=np.datetime64("2012-03-04T23:50:00", "s"))
    config = make_config("TIMES", scaler=scaler, load_external=True, add_time_in_day=True, normal_external=True,
                         ext_scaler=scaler)
    first = prepare_data(config)
    (folder,) = paths.dataset_cache_dir().iterdir()
    second = prepared_module._load(folder)
    for name in ("scaler", "ext_scaler"):
        assert type(getattr(second, name)) is type(getattr(first, name)) is SCALERS[scaler]
        assert vars(getattr(second, name)) == vars(getattr(first, name))
    assert {k: v for k, v in vars(second).items() if k not in ("data", "adj_mx", "scaler", "ext_scaler")} == \
        {k: v for k, v in vars(first).items() if k not in ("data", "adj_mx", "scaler", "ext_scaler")}
    assert isinstance(second.split, tuple)
    np.testing.assert_array_equal(second.data, first.data)


@pytest.mark.parametrize("change", [
    {"input_window": 4}, {"output_window": 1}, {"scaler": "minmax01"}, {"train_rate": 0.6},
    {"add_time_in_day": True}, {"bidir_adj_mx": True}, {"weight_adj_epsilon": 0.2},
])
def test_cache_key_changes_with_data_settings(hand: str, change: dict) -> None:
    base = make_config(hand)
    files = prepared_module._files(base)
    assert cache_key(make_config(hand, batch_size=9, learning_rate=0.3, max_epoch=1), files) == cache_key(base, files)
    assert cache_key(make_config(hand, **change), files) != cache_key(base, files)


def test_cache_key_changes_with_the_files(hand: str) -> None:
    config = make_config(hand)
    before = cache_key(config, prepared_module._files(config))
    dyna = Path("raw_data") / hand / f"{hand}.dyna"
    dyna.write_text(dyna.read_text().replace(",100.0\n", ",101.0\n"))
    assert cache_key(config, prepared_module._files(config)) != before
    assert prepare_data(config).data[0, 0, 0] == 101.0


def test_no_cache_when_disabled(hand: str) -> None:
    prepare_data(make_config(hand, cache_dataset=False))
    assert _cache_folders() == []


def test_concurrent_preparations_of_one_dataset(hand: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that prepare the same data at once (e.g. GRU and LSTM started together) all succeed
    and leave one complete cache folder."""
    real_save = np.save

    def slow_save(*args, **kwargs):
        time.sleep(0.05)  # widen the window in which the runs' writes overlap
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", slow_save)
    config = make_config(hand)
    results, errors = [], []

    def prepare() -> None:
        try:
            results.append(prepare_data(config))
        except Exception as err:  # noqa: BLE001 - collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=prepare) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    key = results[0].cache_key
    assert _cache_folders() == [f"HAND_{key}"]
    np.testing.assert_array_equal(prepare_data(config).data, VALUES[..., None])
