"""RNN (GRU / LSTM / RNN): shapes, LibCity's autoregressive semantics, fast == plain, dropout,
teacher forcing and the default loss."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data.scalers import NoneScaler, StandardScaler
from libtraffic.model import MODELS, get_model
from libtraffic.model.rnn import RNN
from libtraffic.utils.errors import LibTrafficError

B, IN, OUT, NODES = 3, 4, 3, 4
CELLS = ["GRU", "LSTM", "RNN"]


def make_model(rnn_type: str = "GRU", feature_dim: int = 2, output_dim: int = 2, seed: int = 0, scaler=None,
               **overrides) -> RNN:
    config = {"model": rnn_type if rnn_type in MODELS else "GRU", "input_window": IN, "output_window": OUT, "rnn_type": rnn_type, "hidden_size": 5,
              "num_layers": 1, "dropout": 0.0, "bidirectional": False, "teacher_forcing_ratio": 0.0,
              "rnn_impl": "fast", **overrides}
    feature = {"scaler": scaler or NoneScaler(), "num_nodes": NODES, "feature_dim": feature_dim, "output_dim": output_dim}
    torch.manual_seed(seed)
    return get_model(config, feature)


def make_batch(feature_dim: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"X": torch.randn(B, IN, NODES, feature_dim, generator=g),
            "y": torch.randn(B, OUT, NODES, feature_dim, generator=g)}


def twin(model: RNN, impl: str) -> RNN:
    """A model with the same weights and another rnn_impl."""
    other = make_model(model.rnn_type, model.feature_dim, model.output_dim, num_layers=model.num_layers,
                       bidirectional=model.bidirectional, rnn_impl=impl, dropout=model.dropout.p,
                       teacher_forcing_ratio=model.teacher_forcing_ratio)
    other.load_state_dict(model.state_dict())
    return other


def reference_forward(model: RNN, batch: dict[str, torch.Tensor], feed_truth: bool = False) -> torch.Tensor:
    """LibCity's loop with the model's own nn.GRU/LSTM/RNN and fc: run the whole window, predict
    the next step from the last output, slide it in (or the true step), output_window times."""
    x, y = batch["X"], batch["y"]
    od = model.output_dim
    src = x.permute(1, 0, 2, 3).reshape(IN, B, -1)
    outputs = []
    for i in range(OUT):
        out, _ = model.rnn(src)
        pred = model.fc(out[-1]).reshape(B, NODES, od)
        outputs.append(pred)
        nxt = y[:, i, :, :od] if feed_truth else pred
        nxt = torch.cat([nxt, y[:, i, :, od:]], dim=-1)
        src = torch.cat([src[1:], nxt.reshape(1, B, -1)], dim=0)
    return torch.stack(outputs, dim=1)


def test_gru_lstm_rnn_share_libcitys_rnn_defaults_and_the_name_sets_rnn_type(make_dataset) -> None:
    """As LibCity: one defaults file (RNN.json) for the three names; the model name is the cell."""
    make_dataset("CELLS", np.ones((30, 2), dtype=np.float32))
    configs = {name: ConfigParser("traffic_state_pred", name, "CELLS") for name in CELLS}
    for name, config in configs.items():
        assert config["rnn_type"] == name and MODELS[name] is RNN
        assert config.sources["hidden_size"] == "model/traffic_state_pred/RNN.json"
    plain = [{k: v for k, v in c.items() if k not in ("model", "rnn_type")} for c in configs.values()]
    assert plain[0] == plain[1] == plain[2]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("feature_dim, output_dim", [(1, 1), (3, 1)])
def test_output_shape(cell: str, layers: int, bidirectional: bool, feature_dim: int, output_dim: int) -> None:
    model = make_model(cell, feature_dim, output_dim, num_layers=layers, bidirectional=bidirectional)
    assert isinstance(model.rnn, getattr(torch.nn, cell))
    assert model.fc.in_features == 5 * (2 if bidirectional else 1) and model.fc.out_features == NODES * output_dim
    out = model(make_batch(feature_dim))
    assert out.shape == (B, OUT, NODES, output_dim)


@pytest.mark.parametrize("impl", ["plain", "fast"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_libcity_loop(impl: str, cell: str) -> None:
    model = make_model(cell, feature_dim=3, output_dim=1, rnn_impl=impl, num_layers=2).eval()
    batch = make_batch(3)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), reference_forward(model, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fast_equals_plain(cell: str, layers: int, bidirectional: bool) -> None:
    fast = make_model(cell, feature_dim=2, output_dim=1, num_layers=layers, bidirectional=bidirectional, seed=layers)
    plain = twin(fast, "plain")
    assert fast.use_fast(torch.device("cpu")) and not plain.use_fast(torch.device("cpu"))
    fast.eval(), plain.eval()
    batch = make_batch(2, seed=layers + 10)
    out_fast, out_plain = fast(batch), plain(batch)
    assert out_fast.abs().max() > 1e-3
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    weights = torch.randn(out_fast.shape, generator=torch.Generator().manual_seed(5))
    (out_fast * weights).sum().backward()
    (out_plain * weights).sum().backward()
    grads_plain = dict(plain.named_parameters())
    for name, param in fast.named_parameters():
        assert param.grad is not None and grads_plain[name].grad is not None, name
        torch.testing.assert_close(param.grad, grads_plain[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_auto_impl_is_fast_on_cpu() -> None:
    model = make_model(rnn_impl="auto")
    assert model.use_fast(torch.device("cpu")) and not model.use_fast(torch.device("cuda"))


@pytest.mark.parametrize("impl", ["plain", "fast"])
def test_dropout_acts_with_one_layer(impl: str) -> None:
    model = make_model(dropout=0.5, rnn_impl=impl)
    assert model.num_layers == 1
    batch = make_batch()
    model.train()
    assert not torch.equal(model(batch), model(batch))
    model.eval()
    torch.testing.assert_close(model(batch), model(batch), rtol=0, atol=0)
    still = make_model(dropout=0.0, rnn_impl=impl).train()
    torch.testing.assert_close(still(batch), still(batch), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["plain", "fast"])
def test_dropout_between_layers(impl: str) -> None:
    model = make_model(dropout=0.5, num_layers=2, rnn_impl=impl)
    assert model.rnn.dropout == 0.5
    model.train()
    batch = make_batch()
    assert not torch.equal(model(batch), model(batch))


@pytest.mark.parametrize("impl", ["plain", "fast"])
def test_teacher_forcing_feeds_true_targets(impl: str) -> None:
    forced = make_model(feature_dim=3, output_dim=1, teacher_forcing_ratio=1.0, rnn_impl=impl).train()
    batch = make_batch(3)
    out = forced(batch)
    with torch.no_grad():
        torch.testing.assert_close(out, reference_forward(forced, batch, feed_truth=True), rtol=1e-5, atol=1e-6)
    changed = {"X": batch["X"], "y": batch["y"].clone()}
    changed["y"][:, 0, :, 0] += 1.0  # the first target's predicted feature only
    out_changed = forced(changed)
    torch.testing.assert_close(out_changed[:, 0], out[:, 0], rtol=0, atol=0)
    assert (out_changed[:, 1:] - out[:, 1:]).abs().max() > 1e-4
    # Not in training, or with ratio 0, the targets' predicted feature is never read.
    forced.eval()
    torch.testing.assert_close(forced(changed), forced(batch), rtol=0, atol=0)
    free = make_model(feature_dim=3, output_dim=1, teacher_forcing_ratio=0.0, rnn_impl=impl).train()
    torch.testing.assert_close(free(changed), free(batch), rtol=0, atol=0)


def test_calculate_loss_is_masked_mae_in_original_units() -> None:
    scaler = StandardScaler()
    scaler.mean, scaler.std = 50.0, 10.0
    model = make_model(feature_dim=1, output_dim=1, scaler=scaler).eval()
    batch = make_batch(1)
    batch["y"][0, 0, 0, 0] = -5.0  # (-5 * 10 + 50) = 0 in original units: a missing reading
    with torch.no_grad():
        pred = model.predict(batch).numpy() * 10 + 50
        loss = float(model.calculate_loss(batch))
    truth = batch["y"].numpy() * 10 + 50
    keep = truth != 0
    assert keep.sum() == truth.size - 1
    assert loss == pytest.approx(np.abs(pred - truth)[keep].mean(), rel=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"rnn_impl": "cudnn"}, "rnn_impl must be one of auto, fast, plain"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"hidden_size": 0}, "hidden_size and num_layers must be positive"),
    ({"rnn_type": "GRUU"}, r"Unknown rnn_type 'GRUU'.*Did you mean 'GRU'\?"),
])
def test_bad_model_settings(overrides: dict, message: str) -> None:
    with pytest.raises(LibTrafficError, match=message):
        make_model(**overrides)
