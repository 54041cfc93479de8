"""MTGNN and MTGNNExecutor (issue 16): LibCity's parameters and defaults, its math (an independent
NumPy computation in LibCity's [batch, channel, node, time] layout), the curriculum, the node
groups, exact resume, clear errors and short training runs through the CLI. LibCity's checkpoint
and predictions are checked end to end in test_libcity_checkpoints.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.scalers import NoneScaler
from libtraffic.executor import get_executor
from libtraffic.executor.mtgnn_executor import MTGNNExecutor, curriculum_level, node_groups
from libtraffic.model import get_model
from libtraffic.model.mtgnn import MTGNN
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

import libcity_ref
from conftest import run_clis

# LibCity's config/model/traffic_state_pred/MTGNN.json at 5a6391d (step_size2 and num_split, which
# its MTGNNExecutor.json repeats, are in our MTGNNExecutor.json only).
LIBCITY_MTGNN = {
    "gcn_true": True, "buildA_true": True, "gcn_depth": 2, "dropout": 0.3, "subgraph_size": 20, "node_dim": 40,
    "dilation_exponential": 1, "conv_channels": 32, "residual_channels": 32, "skip_channels": 64,
    "end_channels": 128, "layers": 3, "propalpha": 0.05, "tanhalpha": 3, "layer_norm_affline": True,
    "use_curriculum_learning": True, "step_size1": 2500, "task_level": 0, "num_split": 1, "step_size2": 100,
    "scaler": "standard", "load_external": True, "normal_external": False, "ext_scaler": "none",
    "add_time_in_day": True, "add_day_in_week": False, "max_epoch": 100, "learner": "adam", "learning_rate": 0.001,
    "weight_decay": 0.0001, "lr_decay": False, "clip_grad_norm": True, "max_grad_norm": 5, "use_early_stop": True,
    "patience": 50,
}
MODEL_KEYS = ("gcn_true", "buildA_true", "gcn_depth", "dropout", "subgraph_size", "node_dim", "dilation_exponential",
              "conv_channels", "residual_channels", "skip_channels", "end_channels", "layers", "propalpha",
              "tanhalpha", "layer_norm_affline")
SMALL = {"conv_channels": 8, "residual_channels": 8, "skip_channels": 16, "end_channels": 16, "node_dim": 6,
         "subgraph_size": 3}


def make_mtgnn(num_nodes: int, feature_dim: int = 2, seed: int = 0, adj: np.ndarray | None = None,
               **overrides) -> MTGNN:
    config = {"model": "MTGNN", "input_window": 12, "output_window": 12, **{k: LIBCITY_MTGNN[k] for k in MODEL_KEYS},
              **overrides}
    adj = np.random.default_rng(seed).random((num_nodes, num_nodes)).astype(np.float32) if adj is None else adj
    torch.manual_seed(seed)
    return get_model(config, {"scaler": NoneScaler(), "num_nodes": num_nodes, "feature_dim": feature_dim,
                              "output_dim": 1, "adj_mx": adj})


def test_defaults_are_libcitys_mtgnn_json(make_dataset) -> None:
    make_dataset("D", np.ones((40, 3), dtype=np.float32))
    config = ConfigParser("traffic_state_pred", "MTGNN", "D")
    for key, value in LIBCITY_MTGNN.items():
        assert config[key] == value, key
    model_file = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / "MTGNN.json").read_text())
    executor_file = json.loads((paths.CONFIG_DIR / "executor" / "MTGNNExecutor.json").read_text())
    assert {**model_file, **executor_file} == LIBCITY_MTGNN and not set(model_file) & set(executor_file)
    assert config["executor"] == "MTGNNExecutor" and config.sources["num_split"] == "executor/MTGNNExecutor.json"
    # The executor's shared defaults are there beneath its own file.
    assert config.sources["best_metric"] == "executor/TrafficStateExecutor.json"


def test_parameter_counts_are_libcitys() -> None:
    """LibCity's log on SYNTH_LA (20 sensors, speed + time of day), and 207 sensors with the defaults."""
    for nodes, expected in ((20, libcity_ref.parameter_count("MTGNN")), (207, 405_452)):
        assert sum(p.numel() for p in make_mtgnn(nodes).parameters()) == expected


# ----- an independent NumPy MTGNN, LibCity's layout [B, C, N, L] -----

def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, dilation: int = 1) -> np.ndarray:
    """(1, k) convolution over the last axis: x [B, C, N, L], weight [O, C, 1, k] -> [B, O, N, L']."""
    k = weight.shape[-1]
    length = x.shape[-1] - dilation * (k - 1)
    out = sum(np.einsum("oc,bcnl->bonl", weight[:, :, 0, j], x[..., j * dilation: j * dilation + length]) for j in range(k))
    return out + bias[None, :, None, None]


def _inception(p: dict, name: str, x: np.ndarray, dilation: int) -> np.ndarray:
    outs = [_conv(x, p[f"{name}.tconv.{i}.weight"], p[f"{name}.tconv.{i}.bias"], dilation) for i in range(4)]
    length = outs[-1].shape[-1]
    return np.concatenate([o[..., -length:] for o in outs], axis=1)


def _mixprop(p: dict, name: str, x: np.ndarray, adj: np.ndarray, depth: int, alpha: float) -> np.ndarray:
    adj = adj + np.eye(len(adj))
    prop = adj / adj.sum(1, keepdims=True)
    h, hops = x, [x]
    for _ in range(depth):
        h = alpha * x + (1 - alpha) * np.einsum("vw,bcwl->bcvl", prop, h)
        hops.append(h)
    return _conv(np.concatenate(hops, axis=1), p[f"{name}.mlp.mlp.weight"], p[f"{name}.mlp.mlp.bias"])


def _graph(p: dict, idx: np.ndarray, k: int, alpha: float) -> np.ndarray:
    v1 = np.tanh(alpha * (p["gc.emb1.weight"][idx] @ p["gc.lin1.weight"].T + p["gc.lin1.bias"]))
    v2 = np.tanh(alpha * (p["gc.emb2.weight"][idx] @ p["gc.lin2.weight"].T + p["gc.lin2.bias"]))
    adj = np.maximum(np.tanh(alpha * (v1 @ v2.T - v2 @ v1.T)), 0)
    keep = np.zeros_like(adj)
    np.put_along_axis(keep, np.argsort(-adj, axis=1, kind="stable")[:, :k], 1.0, axis=1)
    return adj * keep


def reference_mtgnn(p: dict, x: np.ndarray, c: dict, adj_mx: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x [B, T, n, F] of nodes idx -> [B, T_out, n, 1], LibCity's MTGNN in eval mode."""
    layers, de = c["layers"], c["dilation_exponential"]
    field = 1 + 6 * sum(de ** j for j in range(layers))
    x = x.transpose(0, 3, 2, 1)  # [B, F, n, T]
    if x.shape[-1] < field:
        x = np.pad(x, ((0, 0), (0, 0), (0, 0), (field - x.shape[-1], 0)))
    if c["buildA_true"]:
        adj = _graph(p, idx, c["subgraph_size"], c["tanhalpha"])
    else:
        adj = (adj_mx - np.eye(len(adj_mx)))[np.ix_(idx, idx)]
    skip = _conv(x, p["skip0.weight"], p["skip0.bias"])
    h = _conv(x, p["start_conv.weight"], p["start_conv.bias"])
    for i in range(layers):
        residual = h
        h = np.tanh(_inception(p, f"filter_convs.{i}", h, de ** i)) * _sigmoid(_inception(p, f"gate_convs.{i}", h, de ** i))
        skip = skip + _conv(h, p[f"skip_convs.{i}.weight"], p[f"skip_convs.{i}.bias"])
        if c["gcn_true"]:
            h = (_mixprop(p, f"gconv1.{i}", h, adj, c["gcn_depth"], c["propalpha"])
                 + _mixprop(p, f"gconv2.{i}", h, adj.T, c["gcn_depth"], c["propalpha"]))
        else:
            h = _conv(h, p[f"residual_convs.{i}.weight"], p[f"residual_convs.{i}.bias"])
        h = h + residual[..., -h.shape[-1]:]
        mean = h.mean(axis=(1, 2, 3), keepdims=True)
        h = (h - mean) / np.sqrt(h.var(axis=(1, 2, 3), keepdims=True) + 1e-5)
        if c["layer_norm_affline"]:
            h = h * p[f"norm.{i}.weight"][:, idx] + p[f"norm.{i}.bias"][:, idx]
    skip = _conv(h, p["skipE.weight"], p["skipE.bias"]) + skip
    out = _conv(np.maximum(_conv(np.maximum(skip, 0), p["end_conv_1.weight"], p["end_conv_1.bias"]), 0),
                p["end_conv_2.weight"], p["end_conv_2.bias"])
    return out  # [B, T_out, n, 1]: end_conv_2's channels are the output steps


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


VARIANTS = {
    "defaults": {},
    "dilation 2, short window": {"dilation_exponential": 2, "layers": 2},
    "window beyond the receptive field": {"layers": 1, "input_window": 10},
    "no graph convolution": {"gcn_true": False},
    "dataset adjacency": {"buildA_true": False, "gcn_depth": 3},
    "no hops": {"gcn_depth": 0, "layers": 1},
    "no affine layer norm": {"layer_norm_affline": False, "layers": 2},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("subset", [False, True])
def test_forward_equals_numpy(variant: str, subset: bool) -> None:
    settings = {**SMALL, "input_window": 7, "output_window": 4, "layers": 3, **VARIANTS[variant]}
    model = make_mtgnn(6, feature_dim=2, seed=3, **settings).eval()
    settings = {**{k: LIBCITY_MTGNN[k] for k in MODEL_KEYS}, **settings}
    idx = np.array([4, 0, 5, 2]) if subset else np.arange(6)
    x = torch.randn(3, settings["input_window"], len(idx), 2, generator=torch.Generator().manual_seed(1))
    params = {k: v.double().numpy() for k, v in model.state_dict().items()}
    adj = model.predefined_A.double().numpy() + np.eye(6)
    expected = reference_mtgnn(params, x.double().numpy(), settings, adj, idx)
    with torch.no_grad():
        out = model.predict({"X": x}, torch.as_tensor(idx) if subset else None)
    assert out.shape == (3, 4, len(idx), 1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_loss_covers_the_nodes_and_steps_asked_for() -> None:
    model = make_mtgnn(6, seed=2, **SMALL, input_window=7, output_window=4).eval()
    g = torch.Generator().manual_seed(4)
    batch = {"X": torch.randn(2, 7, 6, 2, generator=g), "y": torch.rand(2, 4, 6, 2, generator=g) + 1}
    idx = torch.tensor([5, 1, 3])
    with torch.no_grad():
        pred = model.predict({"X": batch["X"][:, :, idx]}, idx)
        expected = (pred[:, :2] - batch["y"][:, :2, idx, :1]).abs().mean()
        assert model.calculate_loss(batch, idx=idx, task_level=2).item() == pytest.approx(expected.item(), rel=1e-6)
        full = (model.predict(batch) - batch["y"][..., :1]).abs().mean()
        assert model.calculate_loss(batch).item() == pytest.approx(full.item(), rel=1e-6)


def test_gradients_reach_the_learned_graph() -> None:
    model = make_mtgnn(6, seed=1, **SMALL, input_window=7, output_window=4)
    batch = {"X": torch.randn(2, 7, 6, 2), "y": torch.rand(2, 4, 6, 2) + 1}
    model.calculate_loss(batch, idx=torch.tensor([0, 2, 3, 5])).backward()
    for name in ("gc.emb1.weight", "gc.lin2.weight", "gconv2.0.mlp.mlp.weight", "norm.1.weight", "skip0.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


# ----- curriculum and node groups -----

def test_curriculum_level_by_hand() -> None:
    # LibCity raises task_level before the step whose batches_seen is a multiple of step_size1.
    assert [curriculum_level(b, 3, 0, 4) for b in range(14)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4]
    assert [curriculum_level(b, 2, 2, 4) for b in range(6)] == [3, 3, 4, 4, 4, 4]
    assert curriculum_level(100, 1, 5, 4) == 5  # already beyond output_window: unchanged


def test_node_groups_are_libcitys_split_of_a_permutation() -> None:
    np.random.seed(3)
    groups = node_groups(11, 3)
    np.random.seed(3)
    perm = np.random.permutation(range(11))  # LibCity's call
    assert [list(g) for g in groups] == [list(perm[:3]), list(perm[3:6]), list(perm[6:])]


class Recorder:
    """Records the (node group, task_level) of every training loss the executor asks the model for."""

    def __init__(self, model: MTGNN) -> None:
        self.calls: list[tuple[list[int] | None, int | None]] = []
        self.inner = model.calculate_loss
        model.calculate_loss = self

    def __call__(self, batch, idx=None, task_level=None):
        if self.inner.__self__.training:
            self.calls.append((None if idx is None else idx.tolist(), task_level))
        return self.inner(batch, idx=idx, task_level=task_level)


TRAIN = {**SMALL, "input_window": 6, "output_window": 3, "layers": 1, "log_level": "WARNING",
         "step_size1": 4, "step_size2": 2, "num_split": 2, "subgraph_size": 2}


def build(dataset: str, **overrides) -> tuple[MTGNNExecutor, Recorder, tuple]:
    config = ConfigParser("traffic_state_pred", "MTGNN", dataset, other_args={**TRAIN, **overrides})
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"])
    data = get_dataset(config)
    loaders = data.get_data()
    feature = data.get_data_feature()
    executor = get_executor(config, get_model(config, feature), feature)
    return executor, Recorder(executor.model), loaders


def test_executor_runs_the_curriculum_over_node_groups(tiny_dataset: str) -> None:
    executor, recorder, (train, valid, _) = build(tiny_dataset, max_epoch=2, exp_id="cur")
    assert isinstance(executor, MTGNNExecutor)
    np.random.seed(11)
    executor.train(train, valid)
    batches = len(train)
    assert batches >= 3 and executor.batches_seen == 2 * 2 * batches
    assert [level for _, level in recorder.calls] == [curriculum_level(b, 4, 0, 3) for b in range(4 * batches)]
    # Each epoch draws a permutation at batches 0, 2, 4, ... and cuts it into the two groups.
    np.random.seed(11)
    expected = []
    for _ in range(2):
        for i in range(batches):
            if i % 2 == 0:
                groups = node_groups(6, 2)
            expected += [g.tolist() for g in groups]
    assert [idx for idx, _ in recorder.calls] == expected


def test_without_curriculum_and_with_one_group(tiny_dataset: str) -> None:
    executor, recorder, (train, valid, _) = build(tiny_dataset, max_epoch=1, num_split=1,
                                                  use_curriculum_learning=False, exp_id="one")
    state = np.random.get_state()
    executor.train(train, valid)
    assert recorder.calls == [(None, None)] * len(train)  # all sensors in order, all output steps
    assert np.random.get_state()[2] == state[2] and (np.random.get_state()[1] == state[1]).all()  # nothing drawn


def test_each_group_steps_on_its_own_gradient(tiny_dataset: str) -> None:
    executor, _, (train, valid, _) = build(tiny_dataset, max_epoch=1, learner="sgd", learning_rate=0.05,
                                           clip_grad_norm=False, dropout=0.0, weight_decay=0.0, exp_id="sgd")
    twin = {k: v.clone() for k, v in executor.model.state_dict().items()}
    batch = executor._to_device(next(iter(train)))
    np.random.seed(5)
    executor.model.train()
    executor._train_epoch([batch], 0)
    np.random.seed(5)
    groups = node_groups(6, 2)
    model = executor.model
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(twin)
    for step, idx in enumerate(groups):  # by hand: SGD on each group's own loss in turn
        model.zero_grad()
        level = curriculum_level(step, TRAIN["step_size1"], 0, TRAIN["output_window"])
        model.calculate_loss.inner(batch, idx=torch.as_tensor(idx), task_level=level).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.05 * p.grad
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, after[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_equals_an_uninterrupted_run(tiny_dataset: str) -> None:
    whole, whole_calls, (train, valid, _) = build(tiny_dataset, max_epoch=3, exp_id="whole")
    whole.train(train, valid)
    first, first_calls, (train, valid, _) = build(tiny_dataset, max_epoch=2, exp_id="part")
    first.train(train, valid)
    resumed, resumed_calls, (train, valid, _) = build(tiny_dataset, max_epoch=3, exp_id="part", epoch=1)
    np.random.seed(99)  # whatever the global state, the checkpoint's is restored
    resumed.train(train, valid)
    assert first_calls.calls + resumed_calls.calls == whole_calls.calls
    assert resumed.batches_seen == whole.batches_seen
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]


# ----- errors and the CLI -----

@pytest.mark.parametrize("settings, message", [
    ({"subgraph_size": 7}, "subgraph_size 7 (edges kept per sensor in the learned graph) must be between 1 and the "
                           "number of sensors (6)"),
    ({"num_split": 7}, "num_split 7 is larger than the number of sensors (6)"),
    ({"num_split": 3, "subgraph_size": 3}, "the smallest group has 2 sensors (6 // 3), fewer than subgraph_size 3"),
    ({"conv_channels": 10}, "conv_channels must be a positive multiple of 4"),
    ({"step_size2": 0}, "step_size2 must be a positive integer"),
    ({"layers": 0}, "layers must be at least 1"),
])
def test_impossible_settings_are_clear_errors(tiny_dataset: str, settings: dict, message: str) -> None:
    with pytest.raises(LibTrafficError) as err:
        build(tiny_dataset, **{"num_split": 1, "subgraph_size": 3, **settings})
    assert message in str(err.value)


def test_dataset_adjacency_with_an_isolated_sensor_is_refused(make_dataset) -> None:
    adj = np.ones((4, 4), dtype=np.float32)
    adj[2, :] = 0
    with pytest.raises(LibTrafficError, match=r"sensor\(s\) at index 2 have no edge and no self-loop"):
        make_mtgnn(4, adj=adj, buildA_true=False, subgraph_size=2)
    make_mtgnn(4, adj=adj, buildA_true=True, subgraph_size=2)  # the learned graph does not use it


def test_two_target_columns_are_refused() -> None:
    config = {"model": "MTGNN", "input_window": 12, "output_window": 12, **{k: LIBCITY_MTGNN[k] for k in MODEL_KEYS}}
    with pytest.raises(LibTrafficError, match="MTGNN predicts one value per sensor and step"):
        get_model(config, {"scaler": NoneScaler(), "num_nodes": 30, "feature_dim": 2, "output_dim": 2,
                           "adj_mx": np.ones((30, 30), dtype=np.float32)})


def test_short_training_runs_through_the_cli(repo_root: Path, tiny_dataset: str, workdir: Path) -> None:
    common = ["--model", "MTGNN", "--dataset", tiny_dataset, "--max_epoch", "1", "--subgraph_size", "3",
              "--step_size1", "5", "--conv_channels", "8", "--residual_channels", "8", "--skip_channels", "16"]
    *runs, bad = run_clis(repo_root, [
        (workdir, [*common, "--exp_id", "m1"]),
        (workdir, [*common, "--exp_id", "m2", "--num_split", "2", "--buildA_true", "false"]),
        (workdir, [*common, "--exp_id", "m3", "--num_split", "7"])])
    assert bad.returncode == 2 and "num_split 7 is larger than the number of sensors (6)" in bad.stderr
    assert "Traceback" not in bad.stderr
    for exp_id, result in zip(("m1", "m2"), runs):
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Training: task_level increases from 0 to 1 at batches_seen 0" in result.stdout
        assert "task_level increases from 1 to 2 at batches_seen 5" in result.stdout
        assert (workdir / f"libtraffic/cache/{exp_id}/model_cache/MTGNN_TINY.m").is_file()
