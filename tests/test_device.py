"""Every model in MODELS runs wherever its weights are: on CUDA when there is one (a test per model,
skipped without CUDA), and, on any machine, on torch's 'meta' device under a spy that refuses any CPU
tensor an operation takes or makes. A tensor a model builds on the CPU inside forward (torch.zeros
without device=, a numpy round trip, a CPU index) would break --gpu true; the spy catches it without
a GPU. The models come from the registry, so a new model is covered as soon as it is registered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.synthetic import write_synthetic_dataset
from libtraffic.model import MODELS, RNN, get_model
from libtraffic.pipeline.build import build_run

TASK = "traffic_state_pred"
# 20 sensors: MTGNN's default subgraph_size keeps 20 neighbours per sensor.
NODES, DAYS, BATCH = 20, 2, 3
CUDA = torch.cuda.is_available()
# Models whose graph products are sparse: torch 2.13 has no sparse kernels on the meta device, so
# their device independence is checked on CUDA only (here, in test_model_dcrnn.py / test_model_tgcn.py).
SPARSE = {"DCRNN", "TGCN"}
# Each model with its defaults; the RNN family also with its CPU kernels (rnn_impl auto picks them
# only on the CPU, but --rnn_impl fast may be asked for on a GPU too).
CASES = [(name, {}) for name in sorted(MODELS)] + [
    (name, {"rnn_impl": "fast"}) for name in sorted(MODELS) if MODELS[name] is RNN]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("device")
    write_synthetic_dataset(root / "raw_data", "DEVICE", num_nodes=NODES, num_days=DAYS, seed=2)
    return root


def _config(model: str, **overrides: Any) -> ConfigParser:
    return ConfigParser(TASK, model, "DEVICE", other_args={"log_level": "WARNING", **overrides})


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class CpuTensorSpy(TorchFunctionMode):
    """Runs torch as usual and records every function that takes or returns a CPU tensor of one or
    more dimensions (0-d CPU tensors are scalars, which CUDA kernels accept)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for t in _tensors([args, kwargs, out]):
            if t.device.type == "cpu" and t.dim() > 0:
                self.found.append(f"{getattr(func, '__qualname__', func)} {tuple(t.shape)}")
                break
        return out


def test_the_spy_catches_a_tensor_made_on_the_cpu() -> None:
    x = torch.ones(2, 3, device="meta")
    weight = torch.ones(5, 4, device="meta")
    with CpuTensorSpy() as spy:
        x * torch.tensor(2.0)  # a scalar: fine on CUDA
    assert spy.found == []
    index = torch.arange(3)
    with CpuTensorSpy() as spy:
        torch.nn.functional.embedding(index, weight)  # meta accepts the CPU index, CUDA does not
    assert len(spy.found) == 1 and "embedding" in spy.found[0]
    with CpuTensorSpy() as spy, pytest.raises(RuntimeError):
        x + torch.zeros(2, 3)
    assert spy.found


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[n + "".join(f"-{v}" for v in o.values()) for n, o in CASES])
def test_model_has_no_cpu_only_path(name: str, overrides: dict, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """forward, predict, calculate_loss and backward with weights and batch on 'meta' touch no CPU tensor."""
    if name in SPARSE:
        pytest.skip(f"{name}'s sparse graph products have no meta-device kernels; its CUDA tests cover it")
    monkeypatch.chdir(data_root)
    config = _config(name, gpu=False, **overrides)
    feature = get_dataset(config).get_data_feature()
    model = get_model(config, feature).to("meta")
    model.train()
    dim = feature["feature_dim"]
    batch = {"X": torch.empty(BATCH, config["input_window"], NODES, dim, device="meta"),
             "y": torch.empty(BATCH, config["output_window"], NODES, dim, device="meta")}
    with CpuTensorSpy() as spy:
        out = model(batch)
        loss = model.calculate_loss(batch)
        loss.backward()
        with torch.no_grad():
            model.eval()
            pred = model.predict(batch)
    assert spy.found == [], f"{name} uses CPU tensors with its weights on another device: {spy.found[:5]}"
    assert out.device.type == pred.device.type == loss.device.type == "meta"
    assert pred.shape == (BATCH, config["output_window"], NODES, feature["output_dim"])
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # some defaults leave weights unused
    assert grads and all(g.device.type == "meta" for g in grads)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gpu_true_trains_and_tests_on_cuda(name: str, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--gpu true on a CUDA machine: the executor puts the model on the GPU, trains an epoch there
    (forward, backward, step) and predicts the test split from it."""
    monkeypatch.chdir(data_root)
    run = build_run(_config(name, gpu=True, max_epoch=1, exp_id=f"cuda_{name}"))
    assert run.executor.device.type == "cuda"
    before = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    run.executor.train(run.train_data, run.valid_data)
    assert all(p.device.type == "cuda" for p in run.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items()), "no weight changed"
    metrics = run.executor.evaluate(run.test_data)
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
