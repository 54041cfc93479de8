"""STID: LibCity's parameters and math, its defaults, the data it refuses, and a short training run.
(LibCity's STID checkpoint through run_model.py --train false is in test_libcity_checkpoints.py.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import libcity_ref
from conftest import REPO_ROOT, dyna_text, hand_values, run_cli
from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.scalers import NoneScaler
from libtraffic.model import get_model
from libtraffic.model.stid import STID
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

# LibCity's config/model/traffic_state_pred/STID.json.
LIBCITY_STID = {
    "num_block": 3, "time_series_emb_dim": 32, "spatial_emb_dim": 32, "temp_dim_tid": 32, "temp_dim_diw": 32,
    "if_spatial": True, "if_TiD": True, "if_DiW": True, "scaler": "standard", "load_external": True,
    "normal_external": False, "ext_scaler": "none", "add_time_in_day": True, "add_day_in_week": True, "max_epoch": 100,
    "learner": "adam", "learning_rate": 0.001, "lr_decay": False, "clip_grad_norm": True, "max_grad_norm": 5,
    "use_early_stop": False,
}
T, N = 60, 3


def _feature(num_nodes: int) -> dict:
    return {"scaler": NoneScaler(), "num_nodes": num_nodes, "feature_dim": 9, "output_dim": 1, "ext_dim": 8}


@pytest.fixture
def config(make_dataset) -> ConfigParser:
    make_dataset("D", hand_values(T, N))
    return ConfigParser("traffic_state_pred", "STID", "D")


def test_defaults_are_libcitys(config: ConfigParser) -> None:
    for key, value in LIBCITY_STID.items():
        assert config[key] == value, key
    shipped = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / "STID.json").read_text())
    assert shipped == LIBCITY_STID


@pytest.mark.parametrize("num_nodes, expected", [(20, libcity_ref.parameter_count("STID")), (207, 117_100)])
def test_parameter_count_is_libcitys(config: ConfigParser, num_nodes: int, expected: int) -> None:
    model = get_model(config, _feature(num_nodes))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_parameter_names_and_shapes_are_libcitys(config: ConfigParser) -> None:
    libcity_weights, _ = torch.load(io.BytesIO(libcity_ref.checkpoint_bytes("STID")), weights_only=True)
    ours = get_model(config, _feature(20)).state_dict()
    assert list(ours) == list(libcity_weights)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in libcity_weights.items()}


def _libcity_forward(model: STID, x: torch.Tensor) -> torch.Tensor:
    """LibCity's STID forward, step by step with its own reshapes, on the model's parameters."""
    batch_size, _, num_nodes, _ = x.shape
    slot = (x[..., 1][:, -1, :] * 288).type(torch.LongTensor)
    day = torch.argmax(x[..., 2:], dim=-1)[:, -1, :]
    series = x[..., :1].transpose(1, 2).contiguous().view(batch_size, num_nodes, -1).transpose(1, 2).unsqueeze(-1)
    emb = model.time_series_emb_layer
    hidden = torch.cat([
        F.conv2d(series, emb.weight, emb.bias),
        model.node_emb.unsqueeze(0).expand(batch_size, -1, -1).transpose(1, 2).unsqueeze(-1),
        model.time_in_day_emb[slot].transpose(1, 2).unsqueeze(-1),
        model.day_in_week_emb[day].transpose(1, 2).unsqueeze(-1),
    ], dim=1)
    for block in model.encoder:
        hidden = hidden + F.conv2d(torch.relu(F.conv2d(hidden, block.fc1.weight, block.fc1.bias)),
                                   block.fc2.weight, block.fc2.bias)
    return F.conv2d(hidden, model.regression_layer.weight, model.regression_layer.bias)


def test_forward_is_libcitys(config: ConfigParser) -> None:
    torch.manual_seed(0)
    model = get_model(config, _feature(N)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 12, N, 9, generator=g)
    x[..., 1] = torch.rand(5, 12, N, generator=g)  # time of day in [0, 1)
    x[..., 2:] = torch.nn.functional.one_hot(torch.randint(0, 7, (5, 12, N), generator=g), 7).float()
    with torch.no_grad():
        ours = model.predict({"X": x, "y": torch.zeros(5, 12, N, 9)})
    assert ours.shape == (5, 12, N, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours, _libcity_forward(model, x), rtol=1e-5, atol=1e-5)
        # Only the window's last step names the time of day and the day of week.
        earlier = x.clone()
        earlier[:, :-1, :, 1:] = 0
        torch.testing.assert_close(model.predict({"X": earlier}), _libcity_forward(model, earlier), rtol=1e-5, atol=1e-5)


def test_same_seed_same_initial_weights(config: ConfigParser) -> None:
    torch.manual_seed(7)
    first = get_model(config, _feature(N)).state_dict()
    torch.manual_seed(7)
    second = get_model(config, _feature(N)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


# ----- data STID cannot read -----

@pytest.mark.parametrize("overrides, message", [
    ({"load_external": False}, r"STID with if_TiD true reads the time of day as input feature 1, which this run does "
                               r"not add \(load_external false, add_time_in_day true, add_day_in_week true\)\. Use "
                               r"--load_external true --add_time_in_day true, or --if_TiD false\."),
    ({"add_day_in_week": False}, r"STID with if_DiW true reads the one-hot day of week as input features 2-8, after the "
                                 r"time of day, which this run does not add .* or --if_DiW false\."),
    ({"add_time_in_day": False, "if_TiD": False}, r"STID with if_DiW true reads the one-hot day of week"),
    ({"normal_external": True, "ext_scaler": "standard"}, r"normal_external true scales it with ext_scaler 'standard'"),
    ({"spatial_emb_dim": 0}, r"spatial_emb_dim must be a positive integer, got 0\."),
])
def test_unreadable_time_features_are_refused(make_dataset, overrides: dict, message: str) -> None:
    make_dataset("D", hand_values(T, N))
    config = ConfigParser("traffic_state_pred", "STID", "D", other_args=overrides)
    data = get_dataset(config)
    with pytest.raises(LibTrafficError, match=message):
        get_model(config, data.get_data_feature())


def test_without_time_embeddings_no_time_features_are_needed(make_dataset) -> None:
    make_dataset("D", hand_values(T, N))
    config = ConfigParser("traffic_state_pred", "STID", "D", other_args={
        "if_TiD": False, "if_DiW": False, "load_external": False})
    model = get_model(config, get_dataset(config).get_data_feature())
    assert not hasattr(model, "time_in_day_emb") and not hasattr(model, "day_in_week_emb")
    # The series and node embeddings only: hidden 64; each block 2 * (64 * 64 + 64), regression 64 * 12 + 12.
    expected = N * 32 + 12 * 32 + 32 + 3 * 2 * (64 * 64 + 64) + 64 * 12 + 12
    assert sum(p.numel() for p in model.parameters()) == expected


def test_predicting_two_features_is_refused(make_dataset) -> None:
    make_dataset("TWO", np.stack([hand_values(T, N)] * 2, axis=-1))
    config = ConfigParser("traffic_state_pred", "STID", "TWO")
    with pytest.raises(LibTrafficError, match=r"STID predicts one reading per node, but output_dim is 2: set output_dim 1"):
        get_model(config, get_dataset(config).get_data_feature())


def test_time_intervals_must_divide_a_day_through_the_cli(repo_root: Path, workdir: Path, make_dataset) -> None:
    values = hand_values(T, N)
    ids = [10, 11, 12]
    make_dataset("ODD", values, info={"time_intervals": 420},
                 dyna=dyna_text(values, ids, ["traffic_speed"], seconds=np.arange(T) * 420))
    out = run_cli(repo_root, workdir, "--model", "STID", "--dataset", "ODD", "--max_epoch", "1")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert ("STID's time-of-day embedding needs a whole number of steps per day, but time_intervals 420 s does not "
            "divide a day (86400 s)") in out.stderr


# ----- training -----

def test_short_training_run_through_the_cli(repo_root: Path, workdir: Path, make_dataset) -> None:
    rng = np.random.default_rng(0)
    make_dataset("TRAIN", 60 + 5 * rng.standard_normal((400, 4)))
    out = run_cli(repo_root, workdir, "--model", "STID", "--dataset", "TRAIN", "--max_epoch", "1", "--exp_id", "s1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Model STID: " in out.stdout and "Epoch [0/1] train_loss:" in out.stdout
    assert (workdir / "libtraffic/cache/s1/model_cache/STID_TRAIN.m").is_file()
    (npz,) = (workdir / "libtraffic/cache/s1/evaluate_cache").glob("*_predictions.npz")
    with np.load(npz) as saved:
        assert saved["prediction"].shape == saved["truth"].shape == (round(377 * 0.2), 12, 4, 1)
        assert np.isfinite(saved["prediction"]).all()
    again = run_cli(repo_root, workdir, "--model", "STID", "--dataset", "TRAIN", "--train", "false", "--exp_id", "s1")
    assert again.returncode == 0, again.stderr[-3000:]
