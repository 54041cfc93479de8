"""AGCRN (issue 16): LibCity's parameters and defaults, its math (an independent NumPy step-by-step
computation), clear errors, and a short training run through the CLI. LibCity's checkpoint and
predictions are checked end to end in test_libcity_checkpoints.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data.scalers import NoneScaler
from libtraffic.model import get_model
from libtraffic.model.agcrn import AGCRN
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

import libcity_ref
from conftest import run_clis

# LibCity's config/model/traffic_state_pred/AGCRN.json at 5a6391d.
LIBCITY_AGCRN = {
    "embed_dim": 10, "rnn_units": 64, "num_layers": 2, "cheb_order": 2, "bidir_adj_mx": True, "scaler": "standard",
    "load_external": False, "normal_external": False, "ext_scaler": "none", "add_time_in_day": False,
    "add_day_in_week": False, "max_epoch": 100, "learner": "adam", "learning_rate": 0.003, "lr_decay": False,
    "clip_grad_norm": False, "use_early_stop": True, "patience": 50,
}


def make_agcrn(num_nodes: int, feature_dim: int = 1, output_dim: int = 1, seed: int = 0, **overrides) -> AGCRN:
    config = {"model": "AGCRN", "input_window": 12, "output_window": 12, **{k: LIBCITY_AGCRN[k] for k in
              ("embed_dim", "rnn_units", "num_layers", "cheb_order")}, **overrides}
    torch.manual_seed(seed)
    return get_model(config, {"scaler": NoneScaler(), "num_nodes": num_nodes, "feature_dim": feature_dim,
                              "output_dim": output_dim})


def test_defaults_are_libcitys_agcrn_json(make_dataset) -> None:
    make_dataset("D", np.ones((40, 3), dtype=np.float32))
    config = ConfigParser("traffic_state_pred", "AGCRN", "D")
    for key, value in LIBCITY_AGCRN.items():
        assert config[key] == value, key
    shipped = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / "AGCRN.json").read_text())
    assert shipped == LIBCITY_AGCRN
    assert config["executor"] == "TrafficStateExecutor" and config["train_loss"] == "none"


def test_parameter_counts_are_libcitys() -> None:
    """LibCity's log on SYNTH_LA (20 sensors), and 207 sensors of speed data with the defaults."""
    for nodes, expected in ((20, libcity_ref.parameter_count("AGCRN")), (207, 747_810)):
        assert sum(p.numel() for p in make_agcrn(nodes).parameters()) == expected


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def reference_agcrn(params: dict[str, np.ndarray], x: np.ndarray, cheb_k: int, output_dim: int) -> np.ndarray:
    """The paper's AGCRN step by step in float64: per time step and layer, node-adaptive graph
    convolutions with weights E . pool over the Chebyshev supports of softmax(relu(E E^T))."""
    emb = params["node_embeddings"]
    scores = np.maximum(emb @ emb.T, 0)
    adaptive = np.exp(scores - scores.max(1, keepdims=True))
    adaptive /= adaptive.sum(1, keepdims=True)
    supports = [np.eye(len(emb)), adaptive]
    for _ in range(2, cheb_k):
        supports.append(2 * adaptive @ supports[-1] - supports[-2])
    supports = np.stack(supports)

    def gconv(inp: np.ndarray, prefix: str) -> np.ndarray:  # inp [B, N, C]
        weights = np.einsum("nd,dkio->nkio", emb, params[prefix + ".weights_pool"])
        mixed = np.einsum("knm,bmc->bnkc", supports, inp)
        return np.einsum("bnki,nkio->bno", mixed, weights) + emb @ params[prefix + ".bias_pool"]

    seq = x
    layer = 0
    while f"encoder.dcrnn_cells.{layer}.gate.weights_pool" in params:
        cell = f"encoder.dcrnn_cells.{layer}"
        hidden = params[cell + ".update.bias_pool"].shape[1]
        h = np.zeros((x.shape[0], x.shape[2], hidden))
        outs = []
        for t in range(seq.shape[1]):
            zr = _sigmoid(gconv(np.concatenate([seq[:, t], h], -1), cell + ".gate"))
            z, r = zr[..., :hidden], zr[..., hidden:]
            candidate = np.tanh(gconv(np.concatenate([seq[:, t], z * h], -1), cell + ".update"))
            h = r * h + (1 - r) * candidate
            outs.append(h)
        seq = np.stack(outs, 1)
        layer += 1
    w_end = params["end_conv.weight"][:, 0, 0, :]  # [T_out * C, H]
    out = np.einsum("bnh,jh->bjn", seq[:, -1], w_end) + params["end_conv.bias"][None, :, None]
    batch, _, nodes = out.shape
    return out.reshape(batch, -1, output_dim, nodes).transpose(0, 1, 3, 2)


@pytest.mark.parametrize("cheb_order, num_layers, feature_dim, output_dim", [
    (2, 2, 1, 1), (3, 1, 2, 1), (4, 3, 3, 2)])
def test_forward_equals_step_by_step_numpy(cheb_order: int, num_layers: int, feature_dim: int, output_dim: int) -> None:
    model = make_agcrn(5, feature_dim, output_dim, seed=cheb_order, cheb_order=cheb_order, num_layers=num_layers,
                       rnn_units=6, embed_dim=3, input_window=4, output_window=3).eval()
    x = torch.randn(2, 4, 5, feature_dim, generator=torch.Generator().manual_seed(7))
    params = {k: v.double().numpy() for k, v in model.state_dict().items()}
    expected = reference_agcrn(params, x.double().numpy(), cheb_order, output_dim)
    with torch.no_grad():
        out = model({"X": x})
    assert out.shape == (2, 3, 5, output_dim)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    model = make_agcrn(4, rnn_units=5, embed_dim=3, input_window=3, output_window=2, cheb_order=3)
    batch = {"X": torch.randn(2, 3, 4, 1), "y": torch.rand(2, 2, 4, 1) + 0.5}
    model.calculate_loss(batch).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("key, value", [("cheb_order", 1), ("num_layers", 0), ("rnn_units", 0)])
def test_impossible_settings_are_clear_errors(key: str, value: int) -> None:
    with pytest.raises(LibTrafficError, match=f"AGCRN: {key} must be at least"):
        make_agcrn(4, **{key: value})


def test_short_training_run_through_the_cli(repo_root: Path, tiny_dataset: str, workdir: Path) -> None:
    common = ["--model", "AGCRN", "--dataset", tiny_dataset, "--max_epoch", "1"]
    result, bad = run_clis(repo_root, [
        (workdir, [*common, "--exp_id", "a1", "--rnn_units", "8", "--input_window", "6", "--output_window", "3"]),
        (workdir, [*common, "--exp_id", "a2", "--cheb_order", "1"])])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Epoch [0/1]" in result.stdout and (workdir / "libtraffic/cache/a1/model_cache/AGCRN_TINY.m").is_file()
    assert bad.returncode == 2 and "AGCRN: cheb_order must be at least 2" in bad.stderr
    assert "Traceback" not in bad.stderr
