"""Faithful by default (issue 6): LibCity's RNN defaults, data semantics, scalers, padded scoring,
LibCity-only config keys, threads and the predictions file."""

from __future__ import annotations

import ast
import datetime
import itertools
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.executor import get_executor
from libtraffic.model import get_model
from libtraffic.pipeline import run_model
from libtraffic.utils import paths

import libcity_ref
from conftest import hand_values, run_cli

# LibCity's config/model/traffic_state_pred/RNN.json, the defaults of its GRU, LSTM and RNN.
LIBCITY_RNN = {
    "hidden_size": 64, "num_layers": 1, "dropout": 0, "bidirectional": False, "teacher_forcing_ratio": 0,
    "scaler": "standard", "load_external": True, "normal_external": False, "ext_scaler": "none",
    "add_time_in_day": True, "add_day_in_week": False, "max_epoch": 100, "learner": "adam", "learning_rate": 0.01,
    "lr_decay": True, "lr_scheduler": "multisteplr", "lr_decay_ratio": 0.1, "steps": [5, 20, 40, 70],
    "clip_grad_norm": True, "max_grad_norm": 5, "use_early_stop": True, "patience": 50,
}
T, N, IN, OUT = 40, 3, 3, 2


@pytest.mark.parametrize("model", ["GRU", "LSTM", "RNN"])
def test_defaults_are_libcitys_rnn_json(make_dataset, model: str) -> None:
    make_dataset("D", hand_values(T, N))
    config = ConfigParser("traffic_state_pred", model, "D")
    for key, value in LIBCITY_RNN.items():
        assert config[key] == value, key
    # The executor's own default is 1.0; the model's 5 must win, as in LibCity.
    assert config.sources["max_grad_norm"] == "model/traffic_state_pred/RNN.json"
    shipped = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / "RNN.json").read_text())
    assert set(shipped) == set(LIBCITY_RNN) | {"rnn_impl"}  # one file, what LibCity's holds, plus our rnn_impl
    assert not (paths.CONFIG_DIR / "model" / "traffic_state_pred" / f"{model}.json").exists() or model == "RNN"


def test_default_executor_uses_decay_clipping_and_early_stop(make_dataset) -> None:
    make_dataset("D", hand_values(T, N))
    config = ConfigParser("traffic_state_pred", "GRU", "D", other_args={"input_window": IN, "output_window": OUT})
    data = get_dataset(config)
    feature = data.get_data_feature()
    executor = get_executor(config, get_model(config, feature), feature)
    assert isinstance(executor.lr_scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert sorted(executor.lr_scheduler.milestones) == [5, 20, 40, 70] and executor.lr_scheduler.gamma == 0.1


# ----- time features as LibCity adds them -----

@pytest.mark.parametrize("external, time_in_day, day_in_week, ext_file",
                         list(itertools.product([False, True], repeat=4)))
def test_time_features_follow_libcitys_load_external_rule(make_dataset, caplog, external: bool, time_in_day: bool,
                                                          day_in_week: bool, ext_file: bool) -> None:
    folder = make_dataset("F", hand_values(T, N))
    if ext_file:
        times = [f"2012-03-01T{h:02d}:{m:02d}:00Z" for h, m in (divmod(5 * t, 60) for t in range(T))]
        (folder / "F.ext").write_text("ext_id,time,rain\n" + "".join(f"{i},{t},{i % 3}\n" for i, t in enumerate(times)))
        info = json.loads((folder / "config.json").read_text())
        info["info"]["ext_col"] = ["rain"]
        (folder / "config.json").write_text(json.dumps(info))
    config = ConfigParser("traffic_state_pred", "GRU", "F", other_args={
        "input_window": IN, "output_window": OUT, "load_external": external, "add_time_in_day": time_in_day,
        "add_day_in_week": day_in_week})
    with caplog.at_level(logging.WARNING, logger="libtraffic"):
        prepared = get_dataset(config).prepare()
    expected = 1 + external * (time_in_day + 7 * day_in_week + ext_file)
    assert prepared.feature_dim == expected and prepared.output_dim == 1
    warned = {key for key in ("add_time_in_day", "add_day_in_week")
              if f"{key} is true but has no effect because load_external is false" in caplog.text}
    assert warned == ({k for k, on in (("add_time_in_day", time_in_day), ("add_day_in_week", day_in_week)) if on}
                      if not external else set())


def test_feedback_carries_the_target_steps_time_of_day(make_dataset) -> None:
    """With time features, each predicted step re-enters the window with its own time of day."""
    make_dataset("FB", hand_values(T, N))
    config = ConfigParser("traffic_state_pred", "GRU", "FB", other_args={
        "input_window": IN, "output_window": OUT + 2, "hidden_size": 4, "rnn_impl": "plain"})
    data = get_dataset(config)
    _, _, test = data.get_data()
    feature = data.get_data_feature()
    assert feature["feature_dim"] == 2
    model = get_model(config, feature).eval()
    batch = next(iter(test))
    seen = []
    original = model.rnn.forward
    model.rnn.forward = lambda steps, *a: (seen.append(steps.detach().clone()), original(steps, *a))[1]
    with torch.no_grad():
        model(batch)
    for i, steps in enumerate(seen[1:]):  # window i+1 ends with the predicted step i
        fed = steps[-1].reshape(len(batch["X"]), N, 2)
        torch.testing.assert_close(fed[..., 1], batch["y"][:, i, :, 1])


# ----- scalers fitted as LibCity -----

@pytest.mark.parametrize("scaler, stat, targets", [
    ("normal", "max", True), ("minmax01", "max", True), ("minmax11", "min", True), ("standard", "mean", False),
])
def test_scaler_fit_range_is_libcitys(make_dataset, scaler: str, stat: str, targets: bool) -> None:
    """Max/min-based scalers see the training inputs and targets, the standard one the inputs."""
    values = hand_values(T, N)[::-1].copy() if stat == "min" else hand_values(T, N)  # extremes at the split's end
    make_dataset("S", values)
    config = ConfigParser("traffic_state_pred", "GRU", "S", other_args={
        "input_window": IN, "output_window": OUT, "scaler": scaler, "add_time_in_day": False})
    prepared = get_dataset(config).prepare()
    steps = prepared.split[0] + IN - 1 + (OUT if targets else 0)
    fitted = values[:steps]
    x_train = values[np.arange(prepared.split[0])[:, None] + np.arange(IN)].astype(np.float64)  # stacked windows
    expected = {"max": fitted.max(), "min": fitted.min(), "mean": x_train.mean()}[stat]
    assert getattr(prepared.scaler, stat) == pytest.approx(expected)
    assert expected != pytest.approx({"max": values[:steps - 1].max(), "min": values[:steps - 1].min(),
                                      "mean": values[:steps + 1].mean()}[stat])


# ----- the whole data path as LibCity's, against a NumPy rendering of its steps -----

def _libcity_arrays(values: np.ndarray, times: np.ndarray, ext: np.ndarray,
                    external: bool) -> tuple[np.ndarray, np.ndarray]:
    """LibCity's x, y windows ([S, IN, N, F], [S, OUT, N, F], float64) built step by step as its
    TrafficStatePointDataset does: readings, time of day, one-hot weekday, .ext columns, then windows."""
    num_steps, num_nodes = values.shape
    parts = [values[..., None].astype(np.float64)]
    if external:
        stamps = times.astype("datetime64[ns]")
        fraction = (stamps - stamps.astype("datetime64[D]")) / np.timedelta64(1, "D")
        parts.append(np.tile(fraction[:, None, None], (1, num_nodes, 1)))
        weekday = [datetime.date.fromisoformat(str(d)).weekday() for d in stamps.astype("datetime64[D]")]
        one_hot = np.zeros((num_steps, num_nodes, 7))
        one_hot[np.arange(num_steps), :, weekday] = 1
        parts.append(one_hot)
        parts.append(np.tile(ext[:, None, :], (1, num_nodes, 1)))
    data = np.concatenate(parts, axis=-1)
    x = np.stack([data[t - IN + 1: t + 1] for t in range(IN - 1, num_steps - OUT)])
    y = np.stack([data[t + 1: t + OUT + 1] for t in range(IN - 1, num_steps - OUT)])
    return x, y


@pytest.mark.parametrize("external", [True, False])
def test_data_path_equals_libcitys(make_dataset, external: bool) -> None:
    """Features, windows, split and both standard scalers as LibCity computes them (float64)."""
    rng = np.random.default_rng(5)
    values = (rng.uniform(5, 70, (T, N)) * 8).round() / 8  # exact in float32, as the readings are held
    start = np.datetime64("2012-03-04T22:30:00", "s")  # a Sunday: Monday starts at step 18
    times = start + np.arange(T) * np.timedelta64(300, "s")
    folder = make_dataset("D", values, start=start)
    ext = np.stack([np.arange(T) % 4, (rng.uniform(0, 3, T) * 4).round() / 4], axis=1)
    # The .ext file lists its rows in another order and one extra time: rows are matched by time.
    ext_times = np.append(times, times[-1] + np.timedelta64(300, "s"))
    ext_rows = np.append(ext, [[9, 9]], axis=0)
    order = rng.permutation(len(ext_rows))
    (folder / "D.ext").write_text("ext_id,time,rain,wind\n" + "".join(
        f"{i},{np.datetime_as_string(ext_times[k])}Z,{float(ext_rows[k, 0])!r},{float(ext_rows[k, 1])!r}\n" for i, k in enumerate(order)))
    config = ConfigParser("traffic_state_pred", "GRU", "D", other_args={
        "input_window": IN, "output_window": OUT, "load_external": external, "add_time_in_day": True,
        "add_day_in_week": True, "normal_external": True, "ext_scaler": "standard", "batch_size": 5})
    data = get_dataset(config)
    _, _, test = data.get_data()
    prepared = data.prepare()
    x, y = _libcity_arrays(values, times, ext, external)
    num_train, _, num_test = prepared.split
    assert (num_train, num_test) == (round(len(x) * 0.7), round(len(x) * 0.2))
    x_train = x[:num_train]
    assert (prepared.scaler.mean, prepared.scaler.std) == pytest.approx((x_train[..., :1].mean(), x_train[..., :1].std()),
                                                                        rel=1e-12)
    if external:
        ext_train = x_train[..., 1:]
        # rel 1e-8: the time of day is held in float32 (LibCity: float64), e.g. 22:35 is 0.94097222...
        assert (prepared.ext_scaler.mean, prepared.ext_scaler.std) == pytest.approx((ext_train.mean(), ext_train.std()),
                                                                                    rel=1e-8)
        x[..., 1:], y[..., 1:] = [(a[..., 1:] - ext_train.mean()) / ext_train.std() for a in (x, y)]
    assert prepared.feature_dim == x.shape[-1] == (1 + 1 + 7 + 2 if external else 1)
    x[..., :1], y[..., :1] = [(a[..., :1] - x_train[..., :1].mean()) / x_train[..., :1].std() for a in (x, y)]
    ours_x = torch.cat([b["X"] for b in test]).numpy()
    ours_y = torch.cat([b["y"] for b in test]).numpy()
    np.testing.assert_allclose(ours_x, x[-num_test:].astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_y, y[-num_test:].astype(np.float32), rtol=0, atol=1e-6)


def _logged_data_settings(model: str) -> dict:
    """The data settings of LibCity's run, from the config dict its log prints."""
    text = libcity_ref.log_text(model)
    keys = ("scaler", "load_external", "normal_external", "ext_scaler", "add_time_in_day", "add_day_in_week",
            "train_rate", "eval_rate", "input_window", "output_window")
    return {k: ast.literal_eval(re.search(rf"'{k}': ([^,}}]+)", text).group(1)) for k in keys}


@pytest.mark.parametrize("model", libcity_ref.MODELS)
def test_scaler_statistics_are_libcitys_on_synth_la(workdir: Path, model: str) -> None:
    """The scaler LibCity logged for each reference run, from the same SYNTH_LA and data settings."""
    settings = _logged_data_settings(model)
    prepared = get_dataset(ConfigParser("traffic_state_pred", "GRU", "SYNTH_LA",
                                        other_args={**settings, "cache_dataset": False})).prepare()
    for name in ("SYNTH_LA.dyna", "SYNTH_LA.geo", "SYNTH_LA.rel", "config.json"):
        assert libcity_ref.file_sha256(workdir / "raw_data/SYNTH_LA" / name) == libcity_ref.SYNTH_LA_SHA256[name]
    text = libcity_ref.log_text(model)
    if settings["scaler"] == "standard":
        mean, std = map(float, re.search(r"StandardScaler mean: ([\d.e+-]+), std: ([\d.e+-]+)", text).groups())
        assert prepared.scaler.mean == pytest.approx(mean, rel=1e-9)
        assert prepared.scaler.std == pytest.approx(std, rel=1e-9)
    else:
        assert settings["scaler"] == "normal"
        assert prepared.scaler.max == pytest.approx(float(re.search(r"NormalScaler max: ([\d.]+)", text).group(1)),
                                                    rel=1e-7)  # a float32 reading
    shape = re.search(r"x shape: \((\d+), 12, 20, (\d+)\)", text)
    if shape:  # logged when LibCity built the windows (not when it read its own cache)
        assert (sum(prepared.split), prepared.feature_dim) == tuple(map(int, shape.groups()))


# ----- LibCity's padded scoring, on request -----

def test_eval_padding_reproduces_libcitys_padded_test_set(make_dataset) -> None:
    make_dataset("P", hand_values(T, N))
    args = {"input_window": IN, "output_window": OUT, "batch_size": 3, "add_time_in_day": False}
    plain = get_dataset(ConfigParser("traffic_state_pred", "GRU", "P", other_args=args)).get_data()
    padded = get_dataset(ConfigParser("traffic_state_pred", "GRU", "P",
                                      other_args={**args, "eval_pad_with_last_sample": True})).get_data()
    for ours, libcity in zip(plain[1:], padded[1:]):
        n = len(ours.dataset)
        assert len(libcity.dataset) == -(-n // 3) * 3 > n  # valid 4 -> 6, test 7 -> 9
        last = ours.dataset.starts[-1]
        assert (libcity.dataset.starts[n:] == last).all()


def test_padded_scoring_counts_the_copies(workdir: Path, make_dataset) -> None:
    make_dataset("PS", hand_values(T, N))
    base = {"input_window": IN, "output_window": OUT, "batch_size": 3, "max_epoch": 1, "hidden_size": 4,
            "log_level": "WARNING"}
    ours = run_model(dataset_name="PS", other_args={**base, "exp_id": "ours"})
    libcity = run_model(dataset_name="PS", other_args={**base, "exp_id": "libcity", "eval_pad_with_last_sample": True})
    folder = workdir / "libtraffic/cache/libcity/evaluate_cache"
    npz = np.load(next(folder.glob("*_predictions.npz")))
    p, t = npz["prediction"][:, 0], npz["truth"][:, 0]
    assert len(p) == 9  # 7 test samples and 2 copies of the last
    keep = t != 0
    assert libcity["masked_MAE@1"] == pytest.approx(np.abs(p - t)[keep].mean(), rel=1e-5)
    assert libcity["masked_MAE@1"] != pytest.approx(ours["masked_MAE@1"], rel=1e-9)


# ----- LibCity config files with keys we do not use -----

def test_libcity_only_keys_are_accepted_with_a_warning(workdir: Path, make_dataset) -> None:
    make_dataset("K", hand_values(T, N))
    (workdir / "libcity.json").write_text(json.dumps({
        "robustness_test": False, "disturb_rate": 0.5, "noise_type": "gaussian", "noise_mean": [0], "noise_SD": [1],
        "distance_inverse": False, "mask_val": 110, "input_window": IN, "output_window": OUT}))
    run_model(dataset_name="K", config_file="libcity", other_args={"exp_id": "k", "max_epoch": 1, "hidden_size": 4})
    log = next((workdir / "libtraffic/log").glob("k-*.log")).read_text()
    for key in ("robustness_test", "disturb_rate", "noise_type", "noise_mean", "noise_SD", "distance_inverse"):
        assert f"Config key '{key}' is ignored:" in log, key
    assert "Config key 'mask_val' is ignored" not in log  # implemented: the evaluator's threshold


def test_unknown_non_libcity_key_is_still_refused(make_dataset) -> None:
    from libtraffic.utils.errors import LibTrafficError

    make_dataset("U", hand_values(T, N))
    with pytest.raises(LibTrafficError, match="Unknown config key 'robustnes_test'"):
        ConfigParser("traffic_state_pred", "GRU", "U", other_args={"robustnes_test": "true"})


# ----- threads and the predictions file, through the CLI -----

def test_num_threads_and_save_predictions_from_the_cli(repo_root: Path, workdir: Path, make_dataset) -> None:
    make_dataset("C", hand_values(T, N))
    common = ["--dataset", "C", "--input_window", str(IN), "--output_window", str(OUT), "--max_epoch", "1",
              "--hidden_size", "4", "--log_level", "DEBUG"]
    out = run_cli(repo_root, workdir, *common, "--exp_id", "t1")
    assert out.returncode == 0, out.stderr
    assert "torch uses 1 CPU thread(s)" in out.stdout  # the default
    assert list((workdir / "libtraffic/cache/t1/evaluate_cache").glob("*_predictions.npz"))
    out = run_cli(repo_root, workdir, *common, "--exp_id", "t2", "--num_threads", "2", "--save_predictions", "false")
    assert out.returncode == 0, out.stderr
    assert "torch uses 2 CPU thread(s)" in out.stdout
    assert not list((workdir / "libtraffic/cache/t2/evaluate_cache").glob("*_predictions.npz"))
    assert list((workdir / "libtraffic/cache/t2/evaluate_cache").glob("*.csv"))
