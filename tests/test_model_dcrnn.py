"""DCRNN and DCRNNExecutor (issue 16): LibCity's defaults, parameters and supports, one DCGRU step
against an independent NumPy computation in LibCity's [batch, node, channel] layout for each
filter_type, the curriculum, batches_seen from the executor, exact resume and clear errors through
the CLI. LibCity's checkpoint and predictions are checked end to end in test_libcity_checkpoints.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import libcity_ref
from conftest import run_clis
from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.scalers import NoneScaler
from libtraffic.executor import DCRNNExecutor, get_executor
from libtraffic.model import dcrnn, get_model, graph
from libtraffic.model.dcrnn import DCRNN, Diffusion
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

# LibCity's config/model/traffic_state_pred/DCRNN.json at 5a6391d.
LIBCITY_DCRNN = {
    "cl_decay_steps": 2000, "filter_type": "dual_random_walk", "bidir_adj_mx": False, "max_diffusion_step": 2,
    "num_rnn_layers": 2, "rnn_units": 64, "use_curriculum_learning": True, "scaler": "standard",
    "load_external": True, "normal_external": False, "ext_scaler": "none", "add_time_in_day": True,
    "add_day_in_week": False, "max_epoch": 100, "learner": "adam", "learning_rate": 0.01, "lr_decay": True,
    "lr_scheduler": "multisteplr", "lr_decay_ratio": 0.1, "steps": [5, 20, 40, 70], "clip_grad_norm": True,
    "max_grad_norm": 5, "use_early_stop": True, "patience": 50,
}
# LibCity's config/executor/DCRNNExecutor.json at 5a6391d (its TrafficStateExecutor's keys and values).
LIBCITY_DCRNN_EXECUTOR = {
    "gpu": True, "gpu_id": 0, "max_epoch": 100, "train_loss": "none", "epoch": 0, "learner": "adam",
    "learning_rate": 0.01, "weight_decay": 0, "lr_epsilon": 1e-8, "lr_beta1": 0.9, "lr_beta2": 0.999,
    "lr_alpha": 0.99, "lr_momentum": 0, "lr_decay": False, "lr_scheduler": "multisteplr", "lr_decay_ratio": 0.1,
    "steps": [5, 20, 40, 70], "step_size": 10, "lr_T_max": 30, "lr_eta_min": 0, "lr_patience": 10,
    "lr_threshold": 1e-4, "clip_grad_norm": False, "max_grad_norm": 1.0, "use_early_stop": False, "patience": 50,
    "log_level": "INFO", "log_every": 1, "saved_model": True, "load_best_epoch": True, "hyper_tune": False,
}
MODEL_KEYS = ("cl_decay_steps", "filter_type", "max_diffusion_step", "num_rnn_layers", "rnn_units",
              "use_curriculum_learning")


def directed_graph(num_nodes: int, seed: int) -> np.ndarray:
    """Random weights on about half the pairs, one sensor without outgoing edges."""
    rng = np.random.default_rng(seed)
    adj = (rng.random((num_nodes, num_nodes)) * (rng.random((num_nodes, num_nodes)) < 0.5)).astype(np.float32)
    adj[1] = 0
    return adj


def make_dcrnn(num_nodes: int = 7, feature_dim: int = 2, seed: int = 0, adj: np.ndarray | None = None,
               **overrides) -> DCRNN:
    config = {"model": "DCRNN", "input_window": 12, "output_window": 12, "libcity_support_order": True,
              **{k: LIBCITY_DCRNN[k] for k in MODEL_KEYS}, **overrides}
    adj = directed_graph(num_nodes, seed) if adj is None else adj
    torch.manual_seed(seed)
    return get_model(config, {"scaler": NoneScaler(), "num_nodes": num_nodes, "feature_dim": feature_dim,
                              "output_dim": 1, "adj_mx": adj})


def test_defaults_are_libcitys_dcrnn_json(make_dataset) -> None:
    make_dataset("D", np.ones((40, 3), dtype=np.float32))
    config = ConfigParser("traffic_state_pred", "DCRNN", "D")
    for key, value in {**LIBCITY_DCRNN_EXECUTOR, **LIBCITY_DCRNN}.items():
        assert config[key] == value, key
    model_file = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / "DCRNN.json").read_text())
    assert model_file == {**LIBCITY_DCRNN, "libcity_support_order": True}
    assert json.loads((paths.CONFIG_DIR / "executor" / "DCRNNExecutor.json").read_text()) == {}
    assert config["executor"] == "DCRNNExecutor" and config["libcity_support_order"] is True
    assert config.sources["patience"] == "model/traffic_state_pred/DCRNN.json"
    assert config.sources["best_metric"] == "executor/TrafficStateExecutor.json"


def test_parameters_are_libcitys() -> None:
    """Names and shapes from LibCity's log on SYNTH_LA (20 sensors, speed + time of day); the count
    there and with 207 sensors (the weights do not depend on the number of sensors)."""
    logged = re.findall(r"INFO - (\S+)\ttorch\.Size\(\[([\d, ]+)\]\)", libcity_ref.log_text("DCRNN"))
    net = make_dcrnn(20)
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == [
        (name, [int(d) for d in shape.split(",")]) for name, shape in logged]
    for nodes, expected in ((20, libcity_ref.parameter_count("DCRNN")), (207, 372_353)):
        assert sum(p.numel() for p in make_dcrnn(nodes).parameters()) == expected


# ----- supports, independently -----

def test_reversed_row_values_by_hand() -> None:
    m = np.array([[0, 1, 0, 2, 3], [0, 0, 0, 0, 0], [4, 0, 0, 0, 0], [5, 6, 0, 0, 7]], dtype=np.float32)
    expected = [[0, 3, 0, 2, 1], [0, 0, 0, 0, 0], [4, 0, 0, 0, 0], [7, 6, 0, 0, 5]]
    np.testing.assert_array_equal(graph.reversed_row_values(m), expected)


def _transition(adj: np.ndarray) -> np.ndarray:
    degree = adj.sum(1, keepdims=True)
    return np.divide(adj, degree, out=np.zeros_like(adj), where=degree > 0)


def _libcity_order(matrix: np.ndarray) -> np.ndarray:
    out = np.zeros_like(matrix)
    for i, row in enumerate(matrix):
        cols = [j for j in range(len(row)) if row[j] != 0]
        for j, source in zip(cols, reversed(cols)):
            out[i, j] = row[source]
    return out


def numpy_supports(adj: np.ndarray, filter_type: str, libcity_order: bool) -> list[np.ndarray]:
    adj = adj.astype(np.float64)
    if filter_type == "laplacian":
        sym = np.maximum(adj, adj.T)
        d = sym.sum(1)
        s = np.array([1 / np.sqrt(v) if v > 0 else 0.0 for v in d])
        lap = np.eye(len(adj)) - s[:, None] * sym * s[None, :]
        lam = max(np.linalg.eigvals(lap).real)
        return [2 / lam * lap - np.eye(len(adj))]
    order = _libcity_order if libcity_order else (lambda m: m)
    forward = [order(_transition(adj)).T]
    return forward if filter_type == "random_walk" else forward + [order(_transition(adj.T)).T]


@pytest.mark.parametrize("libcity_order", [True, False])
@pytest.mark.parametrize("filter_type", ["laplacian", "random_walk", "dual_random_walk"])
def test_supports_equal_numpy(filter_type: str, libcity_order: bool) -> None:
    adj = directed_graph(7, 3)
    net = make_dcrnn(adj=adj, filter_type=filter_type, libcity_support_order=libcity_order)
    expected = numpy_supports(adj, filter_type, libcity_order)
    np.testing.assert_allclose(net.supports.numpy(), np.stack(expected), atol=1e-6)
    if filter_type != "laplacian" and libcity_order:  # LibCity's pairing is another matrix on this graph
        assert np.abs(np.stack(numpy_supports(adj, filter_type, False)) - expected).max() > 0.05


# ----- one DCGRU step, independently (LibCity's layout: [B, N, C], weight row c * K + k) -----

def numpy_terms(x: np.ndarray, supports: list[np.ndarray], steps: int) -> np.ndarray:
    """x [B, N, C] -> [B * N, C * K]: the diffusion terms, X0 carried from one support to the next."""
    terms, x0 = [x], x
    if steps:
        for s in supports:
            x1 = np.einsum("nm,bmc->bnc", s, x0)
            terms.append(x1)
            for _ in range(2, steps + 1):
                x2 = 2 * np.einsum("nm,bmc->bnc", s, x1) - x0
                terms.append(x2)
                x1, x0 = x2, x1
    return np.stack(terms, axis=-1).reshape(x.shape[0] * x.shape[1], -1)


def numpy_dcgru(x: np.ndarray, h: np.ndarray, supports: list[np.ndarray], steps: int, cell) -> np.ndarray:
    """x [B, N, C_in], h [B, N, H] -> the new state [B, N, H]."""
    w = {k: v.detach().double().numpy() for k, v in cell.state_dict().items()}
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hidden = h.shape[-1]
    gates = sigmoid(numpy_terms(np.concatenate([x, h], -1), supports, steps) @ w["_fn.weight"] + w["_fn.biases"])
    r, u = gates[:, :hidden].reshape(h.shape), gates[:, hidden:].reshape(h.shape)
    c = np.tanh(numpy_terms(np.concatenate([x, r * h], -1), supports, steps) @ w["_gconv.weight"] + w["_gconv.biases"])
    return u * h + (1 - u) * c.reshape(h.shape)


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
@pytest.mark.parametrize("filter_type", ["laplacian", "random_walk", "dual_random_walk"])
def test_dcgru_step_equals_numpy(filter_type: str, steps: int) -> None:
    adj = directed_graph(7, 4)
    net = make_dcrnn(adj=adj, filter_type=filter_type, max_diffusion_step=steps, rnn_units=5)
    supports = numpy_supports(adj, filter_type, True)
    rng = np.random.default_rng(steps)
    x, h = rng.normal(size=(3, 7, 2)), rng.normal(size=(3, 7, 5))
    expected = numpy_dcgru(x, h, supports, steps, net.encoder_model.dcgru_layers[0])
    for density in (-1.0, 1.0):  # the supports multiplied as dense and as sparse matrices
        dcrnn.DENSE_ABOVE = density
        try:
            diffusion = Diffusion(net.supports, steps)
            assert diffusion.sparse is (density > 0)
            cell = net.encoder_model.dcgru_layers[0]
            node_major = lambda a: torch.tensor(a, dtype=torch.float32).permute(1, 0, 2)  # noqa: E731
            w = cell.weights()
            fn_x, gc_x = cell.input_terms(diffusion.terms(node_major(x)), w)
            ours = cell.step(fn_x, gc_x, node_major(h), diffusion, w).permute(1, 0, 2)
        finally:
            dcrnn.DENSE_ABOVE = 0.2
        np.testing.assert_allclose(ours.detach().numpy(), expected, atol=2e-5)


def test_sparse_and_dense_products_give_the_same_outputs_and_gradients() -> None:
    net = make_dcrnn(rnn_units=6).eval()  # eval: the decoder feeds back its outputs, no draws
    batch = {"X": torch.randn(4, 12, 7, 2), "y": torch.randn(4, 12, 7, 2)}
    results = []
    for density in (-1.0, 1.0):
        dcrnn.DENSE_ABOVE = density
        try:
            net.zero_grad()
            out = net.predict(batch)
            out.square().sum().backward()
        finally:
            dcrnn.DENSE_ABOVE = 0.2
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpus_outputs_and_gradients() -> None:
    net = make_dcrnn(rnn_units=6).eval()
    batch = {"X": torch.randn(4, 12, 7, 2), "y": torch.randn(4, 12, 7, 2)}
    results = []
    for device in ("cpu", "cuda"):
        net.to(device).zero_grad()
        out = net.predict({k: v.to(device) for k, v in batch.items()})
        out.square().sum().backward()
        results.append((out.detach().cpu(), [p.grad.cpu() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


# ----- curriculum learning -----

def test_sampling_threshold_by_hand() -> None:
    net = make_dcrnn(cl_decay_steps=2000)
    assert net.sampling_threshold(0) == pytest.approx(2000 / 2001)
    assert net.sampling_threshold(int(2000 * np.log(2000))) == pytest.approx(0.5, abs=1e-3)
    assert net.sampling_threshold(40000) == pytest.approx(2000 / (2000 + np.exp(20)))


def _draws_after(fn) -> tuple[torch.Tensor, int]:
    """fn()'s result and how many uniform numbers it drew from numpy's global generator."""
    np.random.seed(5)
    out = fn()
    after = np.random.uniform(0, 1)
    np.random.seed(5)
    return out, next(i for i in range(100) if np.random.uniform(0, 1) == after)


def test_teacher_forcing_follows_the_threshold() -> None:
    batch = {"X": torch.randn(3, 12, 7, 2), "y": torch.randn(3, 12, 7, 2)}
    changed = {"X": batch["X"], "y": batch["y"] + 1}
    with torch.no_grad():
        net = make_dcrnn(rnn_units=6, cl_decay_steps=10**6)  # threshold 1 - 1e-6 at batches_seen 0
        evaluated, draws = _draws_after(lambda: net.eval()(batch))
        assert draws == 0 and torch.equal(evaluated, net(changed))  # no labels, no draws outside training
        forced, draws = _draws_after(lambda: net.train()(batch, batches_seen=0))
        assert draws == 12  # one per output step, the last included
        assert torch.equal(forced[:, 0], evaluated[:, 0]) and not torch.allclose(forced[:, 1:], evaluated[:, 1:])
        moved = net(changed, batches_seen=0)
        assert torch.equal(moved[:, 0], forced[:, 0]) and not torch.allclose(moved[:, 1:], forced[:, 1:])
        net = make_dcrnn(rnn_units=6, cl_decay_steps=1)  # threshold 1 / (1 + e^50) at batches_seen 50
        own, draws = _draws_after(lambda: net.train()(batch, batches_seen=50))
        assert draws == 12 and torch.allclose(own, net.eval()(batch), atol=0)
        with pytest.raises(LibTrafficError, match="curriculum learning needs the number of batches seen"):
            net.train()(batch)
        make_dcrnn(rnn_units=6, use_curriculum_learning=False).train()(batch)  # no count needed


TRAIN = {"input_window": 3, "output_window": 2, "rnn_units": 4, "batch_size": 128, "cl_decay_steps": 5,
         "log_level": "WARNING"}


def build(dataset: str, **overrides) -> tuple:
    config = ConfigParser("traffic_state_pred", "DCRNN", dataset, other_args={**TRAIN, **overrides})
    data = get_dataset(config)
    loaders = data.get_data()
    feature = data.get_data_feature()
    return get_executor(config, get_model(config, feature), feature), loaders


def test_executor_passes_the_batches_seen_before_each_step(tiny_dataset: str) -> None:
    executor, (train, valid, _) = build(tiny_dataset, max_epoch=2, exp_id="seen")
    assert isinstance(executor, DCRNNExecutor)
    seen = []
    threshold = executor.model.sampling_threshold
    executor.model.sampling_threshold = lambda b: seen.append(b) or threshold(b)
    executor.train(train, valid)
    assert len(train) >= 3 and seen == list(range(2 * len(train))) and executor.batches_seen == 2 * len(train)


@pytest.mark.parametrize("settings, message", [
    ({"filter_type": "dual_randomwalk"}, "Unknown filter_type 'dual_randomwalk' (from --filter_type). Did you mean 'dual_random_walk'?"),
    ({"max_diffusion_step": -1}, "DCRNN: max_diffusion_step must be at least 0, got -1."),
    ({"num_rnn_layers": 0}, "DCRNN: num_rnn_layers must be at least 1, got 0."),
    ({"executor": "TrafficStateExecutor"}, "train DCRNN with --executor DCRNNExecutor (its task_config default)"),
])
def test_impossible_settings_are_clear_errors(tiny_dataset: str, settings: dict, message: str) -> None:
    with pytest.raises(LibTrafficError) as err:
        executor, (train, valid, _) = build(tiny_dataset, max_epoch=1, exp_id="bad", **settings)
        executor.train(train, valid)
    assert message in str(err.value)


def test_cli_resume_is_exact(repo_root: Path, tiny_dataset: str, workdir: Path) -> None:
    """Three epochs at once equal two, then one more resumed with --epoch 1; DCRNN without .rel: exit 2."""
    folder = workdir / "raw_data" / tiny_dataset
    norel = workdir / "raw_data" / "NOREL"
    norel.mkdir()
    for path in folder.iterdir():
        if path.suffix != ".rel":
            (norel / path.name.replace(tiny_dataset, "NOREL")).write_text(path.read_text().replace(tiny_dataset, "NOREL"))
    common = ["--model", "DCRNN", "--dataset", tiny_dataset, *[f"--{k}={v}" for k, v in TRAIN.items()]]
    whole, part, bad = run_clis(repo_root, [(workdir, [*common, "--max_epoch", "3", "--exp_id", "whole"]),
                                            (workdir, [*common, "--max_epoch", "2", "--exp_id", "part"]),
                                            (workdir, [*common, "--dataset", "NOREL", "--exp_id", "bad"])])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "NOREL.rel" in bad.stderr, bad.stderr[-2000:]
    assert whole.returncode == 0 and part.returncode == 0, (whole.stderr[-2000:], part.stderr[-2000:])
    [resumed] = run_clis(repo_root, [(workdir, [*common, "--max_epoch", "3", "--exp_id", "part", "--epoch", "1"])])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    states = [torch.load(workdir / f"libtraffic/cache/{exp}/model_cache/DCRNN_{tiny_dataset}_epoch2.tar",
                         weights_only=True) for exp in ("whole", "part")]
    assert states[0]["batches_seen"] == states[1]["batches_seen"] > 0
    for name, value in states[0]["model_state_dict"].items():
        assert torch.equal(value, states[1]["model_state_dict"][name]), name
    assert [h["train_loss"] for h in states[0]["history"]] == [h["train_loss"] for h in states[1]["history"]]
