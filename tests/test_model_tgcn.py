"""TGCN (issue 16): LibCity's parameters and defaults, its math (an independent NumPy step-by-step
computation), the hand-written backward pass against autograd, the L2-regularised loss, clear errors,
and a short training run with resume through the CLI. LibCity's checkpoint and predictions are
checked end to end in test_libcity_checkpoints.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import libcity_ref
from conftest import run_clis
from libtraffic.config import ConfigParser
from libtraffic.data.scalers import NoneScaler, NormalScaler
from libtraffic.model import get_model
from libtraffic.model.tgcn import TGCN, GraphGRU
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

# LibCity's config/model/traffic_state_pred/TGCN.json at 5a6391d.
LIBCITY_TGCN = {
    "rnn_units": 100, "lambda": 0.0015, "bidir_adj_mx": True, "scaler": "normal", "load_external": False,
    "normal_external": False, "ext_scaler": "none", "add_time_in_day": False, "add_day_in_week": False,
    "max_epoch": 5000, "learner": "adam", "learning_rate": 0.001, "lr_decay": False, "clip_grad_norm": False,
    "use_early_stop": False,
}


def random_adjacency(num_nodes: int, seed: int = 0) -> np.ndarray:
    """A directed weighted graph with about a third of the pairs linked (self loops possible)."""
    rng = np.random.default_rng(seed)
    return ((rng.random((num_nodes, num_nodes)) < 0.35) * rng.random((num_nodes, num_nodes))).astype(np.float32)


def make_tgcn(num_nodes: int, feature_dim: int = 1, output_dim: int = 1, seed: int = 0, scaler=None,
              adj: np.ndarray | None = None, **overrides) -> TGCN:
    config = {"model": "TGCN", "input_window": 12, "output_window": 12, "rnn_units": LIBCITY_TGCN["rnn_units"],
              "lambda": LIBCITY_TGCN["lambda"], **overrides}
    torch.manual_seed(seed)
    return get_model(config, {"scaler": scaler or NoneScaler(), "num_nodes": num_nodes, "feature_dim": feature_dim,
                              "output_dim": output_dim,
                              "adj_mx": random_adjacency(num_nodes) if adj is None else adj})


def test_defaults_are_libcitys_tgcn_json(make_dataset) -> None:
    make_dataset("D", np.ones((40, 3), dtype=np.float32))
    config = ConfigParser("traffic_state_pred", "TGCN", "D")
    for key, value in LIBCITY_TGCN.items():
        assert config[key] == value, key
    shipped = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / "TGCN.json").read_text())
    assert shipped == LIBCITY_TGCN
    assert config["executor"] == "TrafficStateExecutor" and config["dataset_class"] == "TrafficStatePointDataset"
    assert config["train_loss"] == "none"


def test_parameters_are_libcitys() -> None:
    """Names and shapes of LibCity's state_dict (its SYNTH_LA log); the count there and on 207 sensors."""
    model = make_tgcn(20)
    shapes = {name: list(value.shape) for name, value in model.state_dict().items()}
    assert shapes == {"tgcn_model.weights_0": [101, 200], "tgcn_model.weights_1": [101, 100],
                      "tgcn_model.bias_0": [200], "tgcn_model.bias_1": [100],
                      "output_model.weight": [12, 100], "output_model.bias": [12]}
    for name, shape in shapes.items():
        assert f"{name}\ttorch.Size({shape})" in libcity_ref.log_text("TGCN"), name
    for nodes, expected in ((20, libcity_ref.parameter_count("TGCN")), (207, 31_812)):
        assert sum(p.numel() for p in make_tgcn(nodes).parameters()) == expected


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def reference_tgcn(params: dict[str, np.ndarray], adj: np.ndarray, x: np.ndarray, output_dim: int) -> np.ndarray:
    """The paper's TGCN, sample by sample and step by step in float64, with LibCity's graph
    A~ = D^-1/2 (A + I)^T D^-1/2 (D the row sums of A + I) and gc(v) = A~ v W + b."""
    a_hat = adj.astype(np.float64) + np.eye(len(adj))
    inv_sqrt = np.diag(1 / np.sqrt(a_hat.sum(1)))
    graph = inv_sqrt @ a_hat.T @ inv_sqrt
    w0, b0 = params["tgcn_model.weights_0"], params["tgcn_model.bias_0"]
    w1, b1 = params["tgcn_model.weights_1"], params["tgcn_model.bias_1"]
    hidden = b1.shape[0]
    outputs = []
    for sample in x:  # [T, N, F]
        h = np.zeros((x.shape[2], hidden))
        for x_t in sample:
            gates = _sigmoid(graph @ np.concatenate([x_t, h], 1) @ w0 + b0)
            r, u = gates[:, :hidden], gates[:, hidden:]
            c = np.tanh(graph @ np.concatenate([x_t, r * h], 1) @ w1 + b1)
            h = u * h + (1 - u) * c
        out = h @ params["output_model.weight"].T + params["output_model.bias"]  # [N, T_out * C]
        outputs.append(out.reshape(len(out), -1, output_dim).transpose(1, 0, 2))
    return np.stack(outputs)


@pytest.mark.parametrize("feature_dim, output_dim, input_window, output_window", [(1, 1, 4, 3), (3, 2, 2, 2), (2, 1, 1, 4)])
def test_forward_equals_step_by_step_numpy(feature_dim: int, output_dim: int, input_window: int,
                                           output_window: int) -> None:
    adj = random_adjacency(5, seed=feature_dim)
    model = make_tgcn(5, feature_dim, output_dim, seed=feature_dim, adj=adj, rnn_units=6, input_window=input_window,
                      output_window=output_window)
    with torch.no_grad():  # nonzero biases, so that their place in the math is checked too
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, input_window, 5, feature_dim, generator=torch.Generator().manual_seed(7))
    params = {k: v.double().numpy() for k, v in model.state_dict().items()}
    expected = reference_tgcn(params, adj, x.double().numpy(), output_dim)
    for grad in (False, True):  # the no-grad path (evaluation) and the one that keeps what backward needs
        with torch.set_grad_enabled(grad):
            out = model({"X": x})
        assert out.shape == (3, output_window, 5, output_dim)
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_hand_written_backward_is_the_gradient() -> None:
    """torch.autograd.gradcheck (finite differences, float64) of the recurrence, every input."""
    nodes, batch, hidden, channels, steps = 4, 2, 3, 2, 3
    graph = torch.rand(nodes, nodes, dtype=torch.float64) * (torch.rand(nodes, nodes) < 0.5) + torch.eye(nodes)
    sparse, sparse_t = graph.to_sparse().coalesce(), graph.t().to_sparse().coalesce()
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(steps, nodes * batch, channels, generator=g, dtype=torch.float64),
              torch.randn(channels + hidden, 2 * hidden, generator=g, dtype=torch.float64),
              torch.randn(2 * hidden, generator=g, dtype=torch.float64),
              torch.randn(channels + hidden, hidden, generator=g, dtype=torch.float64),
              torch.randn(hidden, generator=g, dtype=torch.float64)]
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda *a: GraphGRU.apply(*a, sparse, sparse_t, []), inputs)


def test_model_gradients_equal_autograd_through_the_numpy_math() -> None:
    """The whole model's loss gradients equal autograd's through a plain torch transcription of
    reference_tgcn (float64)."""
    adj = random_adjacency(6, seed=2)
    model = make_tgcn(6, 2, 1, adj=adj, rnn_units=5, input_window=4, output_window=3,
                      scaler=NormalScaler().fit(np.array([50.0])))
    model.double()
    g = torch.Generator().manual_seed(5)
    batch = {"X": torch.rand(4, 4, 6, 2, generator=g, dtype=torch.float64),
             "y": torch.rand(4, 3, 6, 1, generator=g, dtype=torch.float64)}
    model.calculate_loss(batch).backward()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    a_hat = torch.from_numpy(adj).double() + torch.eye(6, dtype=torch.float64)
    inv_sqrt = torch.diag(a_hat.sum(1) ** -0.5)
    graph = inv_sqrt @ a_hat.T @ inv_sqrt
    h = torch.zeros(4, 6, 5, dtype=torch.float64)
    for t in range(4):
        x_t = batch["X"][:, t]
        gates = torch.sigmoid(graph @ torch.cat([x_t, h], 2) @ params["tgcn_model.weights_0"] + params["tgcn_model.bias_0"])
        r, u = gates[..., :5], gates[..., 5:]
        c = torch.tanh(graph @ torch.cat([x_t, r * h], 2) @ params["tgcn_model.weights_1"] + params["tgcn_model.bias_1"])
        h = u * h + (1 - u) * c
    pred = (h @ params["output_model.weight"].T + params["output_model.bias"]).reshape(4, 6, 3, 1).transpose(1, 2)
    l2 = sum((p ** 2).sum() for p in params.values()) / 2
    loss = (((batch["y"] - pred) * 50).square().sum() / 2 + 0.0015 * l2) / pred.numel()
    loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, params[name].grad, rtol=1e-5, atol=1e-8, msg=name)  # S is float32


def test_passes_alive_at_once_keep_their_own_buffers() -> None:
    """Two forward passes before their backward passes, then passes that reuse a finished pass's
    buffers with a smaller and a larger batch: each gradient is that of a fresh model on its batch."""
    model = make_tgcn(5, rnn_units=4, input_window=3, output_window=2)
    g = torch.Generator().manual_seed(11)
    batches = [{"X": torch.randn(size, 3, 5, 1, generator=g), "y": torch.randn(size, 2, 5, 1, generator=g)}
               for size in (3, 2, 4)]

    def grads(net: TGCN, loss: torch.Tensor) -> list[torch.Tensor]:
        return [t.clone() for t in torch.autograd.grad(loss, list(net.parameters()))]

    alone = [grads(fresh, fresh.calculate_loss(b)) for b, fresh in zip(batches, (copy.deepcopy(model) for _ in batches))]
    first, second = (model.calculate_loss(b) for b in batches[:2])
    got = [grads(model, first), grads(model, second)]
    got += [grads(model, model.calculate_loss(b)) for b in (batches[1], batches[2], batches[0])]
    for expected, actual in zip([alone[0], alone[1], alone[1], alone[2], alone[0]], got, strict=True):
        for e, t in zip(expected, actual):
            torch.testing.assert_close(t, e, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_gives_the_cpus_outputs_and_gradients() -> None:
    """Everything the model makes lives on its device (the sparse graph, the workspaces)."""
    model = make_tgcn(5, 2, rnn_units=4, input_window=3, output_window=2)
    batch = {"X": torch.randn(3, 3, 5, 2), "y": torch.randn(3, 2, 5, 1)}
    cpu_loss = model.calculate_loss(batch)
    cpu_grads = torch.autograd.grad(cpu_loss, list(model.parameters()))
    model.cuda()
    gpu_batch = {k: v.cuda() for k, v in batch.items()}
    gpu_loss = model.calculate_loss(gpu_batch)
    gpu_grads = torch.autograd.grad(gpu_loss, list(model.parameters()))
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, rtol=1e-4, atol=1e-5)
    for c, g in zip(cpu_grads, gpu_grads):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(gpu_batch).cpu(), model.cpu()(batch), rtol=1e-4, atol=1e-5)


def test_loss_is_libcitys_squared_error_plus_l2_in_real_units() -> None:
    """(||y - y_hat||^2 / 2 + lambda * sum ||p||^2 / 2) / (number of predictions), after inverse scaling."""
    scaler = NormalScaler().fit(np.array([[0.0], [70.0]]))  # values / 70
    for lam in (0.0015, 0.0, 0.5):
        model = make_tgcn(4, 2, 1, rnn_units=3, input_window=2, output_window=2, scaler=scaler, **{"lambda": lam})
        batch = {"X": torch.rand(5, 2, 4, 2), "y": torch.rand(5, 2, 4, 2)}
        with torch.no_grad():
            pred = model.predict(batch)[..., :1].double().numpy() * 70
        true = batch["y"][..., :1].double().numpy() * 70
        l2 = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()) / 2
        expected = (np.square(true - pred).sum() / 2 + lam * l2) / pred.size
        assert model.calculate_loss(batch).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("rnn_units", 0, "TGCN: rnn_units must be at least 1, got 0"),
    ("lambda", -0.1, "TGCN: lambda (the weight of the L2 penalty in its loss) must be >= 0, got -0.1"),
])
def test_impossible_settings_are_clear_errors(key: str, value: float, message: str) -> None:
    with pytest.raises(LibTrafficError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_tgcn(4, **{key: value})


def test_infinite_edge_weights_are_refused() -> None:
    adj = random_adjacency(4)
    adj[0, 1] = np.inf
    with pytest.raises(LibTrafficError, match="TGCN needs finite edge weights"):
        make_tgcn(4, adj=adj)


def _history(cwd: Path, exp_id: str) -> list[dict]:
    return torch.load(cwd / "libtraffic/cache" / exp_id / "model_cache" / "TGCN_TINY.m", weights_only=True)["history"]


def test_short_training_and_resume_through_the_cli(repo_root: Path, tiny_dataset: str, workdir: Path) -> None:
    """Three epochs at once equal two epochs then a resume from epoch 1; a bad --lambda exits 2 with one message."""
    common = ["--model", "TGCN", "--dataset", tiny_dataset, "--rnn_units", "8", "--input_window", "6",
              "--output_window", "3", "--batch_size", "32"]
    whole, first, lam = run_clis(repo_root, [
        (workdir, [*common, "--exp_id", "whole", "--max_epoch", "3"]),
        (workdir, [*common, "--exp_id", "part", "--max_epoch", "2"]),
        (workdir, [*common, "--exp_id", "e2", "--max_epoch", "1", "--lambda", "-1"])])
    assert whole.returncode == 0 and first.returncode == 0, whole.stderr[-2000:] + first.stderr[-2000:]
    assert "Epoch [2/3]" in whole.stdout
    resumed, = run_clis(repo_root, [(workdir, [*common, "--exp_id", "part", "--max_epoch", "3", "--epoch", "1"])])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _history(workdir, "whole"), _history(workdir, "part")
    assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in expected], rel=1e-5)
    assert [h["train_loss"] for h in got] == pytest.approx([h["train_loss"] for h in expected], rel=1e-5)
    assert lam.returncode == 2 and "Traceback" not in lam.stderr, lam.stderr[-2000:]
    assert "TGCN: lambda" in lam.stderr and lam.stderr.count("Error: ") == 1, lam.stderr[-2000:]
