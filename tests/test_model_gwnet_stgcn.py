"""GWNET and STGCN: LibCity's checkpoints predict LibCity's numbers, parameter counts, every adjtype and
graph convolution against a plain NCHW computation, STGCN's step-by-step predict against re-running
the window, the training losses, LibCity's defaults, and clear errors."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import libcity_ref as ref
from conftest import run_clis
from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.scalers import NoneScaler, StandardScaler
from libtraffic.model import get_model, graph
from libtraffic.model.gwnet import GWNET
from libtraffic.model.stgcn import STGCN
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

MODELS = ("GWNET", "STGCN")
# LibCity's config/model/traffic_state_pred/GWNET.json and STGCN.json at 5a6391d.
LIBCITY_DEFAULTS = {
    "GWNET": {
        "dropout": 0.3, "blocks": 4, "layers": 2, "apt_layer": True, "gcn_bool": True, "addaptadj": True,
        "adjtype": "doubletransition", "bidir_adj_mx": False, "randomadj": True, "aptonly": True, "kernel_size": 2,
        "nhid": 32, "residual_channels": 32, "dilation_channels": 32, "skip_channels": 256, "end_channels": 512,
        "scaler": "standard", "load_external": False, "normal_external": False, "ext_scaler": "none",
        "add_time_in_day": False, "add_day_in_week": False, "max_epoch": 100, "learner": "adam",
        "learning_rate": 0.001, "lr_decay": False, "clip_grad_norm": True, "max_grad_norm": 5, "use_early_stop": False,
    },
    "STGCN": {
        "Ks": 3, "Kt": 3, "blocks": [[1, 32, 64], [64, 32, 128]], "dropout": 0, "graph_conv_type": "chebconv",
        "stgcn_train_mode": "quick", "bidir_adj_mx": True, "scaler": "standard", "load_external": False,
        "normal_external": False, "ext_scaler": "none", "add_time_in_day": False, "add_day_in_week": False,
        "max_epoch": 100, "learner": "rmsprop", "learning_rate": 0.001, "lr_decay": True, "lr_scheduler": "steplr",
        "lr_decay_ratio": 0.7, "step_size": 5, "clip_grad_norm": False, "use_early_stop": False,
    },
}
# Small sizes for the option tests: 6 nodes, node 3 a sink, nodes 4 and 5 without edges.
NODES = 6
ADJ = np.zeros((NODES, NODES), dtype=np.float32)
ADJ[0, 1], ADJ[1, 2], ADJ[2, 0], ADJ[1, 3], ADJ[2, 1] = 1.0, 0.5, 0.3, 0.7, 0.2
SMALL_GWNET = {"blocks": 2, "residual_channels": 4, "dilation_channels": 4, "skip_channels": 8, "end_channels": 8}
SMALL_STGCN = {"blocks": [[1, 4, 8], [8, 4, 8]]}


def libcity_scaler(model: str) -> StandardScaler:
    """The StandardScaler LibCity fitted for its run (mean and std from its log)."""
    mean, std = re.search(r"StandardScaler mean: ([\d.]+), std: ([\d.]+)", ref.log_text(model)).groups()
    scaler = StandardScaler()
    scaler.mean, scaler.std = float(mean), float(std)
    return scaler


@pytest.fixture(scope="module")
def synth_la(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per model its default config and SYNTH_LA's data feature and raw (unscaled) readings."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("synth_la"))
        out = {}
        for model in MODELS:
            config = ConfigParser("traffic_state_pred", model, "SYNTH_LA", other_args={"scaler": "none"})
            dataset = get_dataset(config)
            out[model] = (config, dataset.get_data_feature(), dataset.prepared)
        return out


def libcity_state(model: str) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(ref.checkpoint_bytes(model)), weights_only=True)[0]


def config_for(model: str, **overrides) -> dict:
    """The model's defaults (our JSON file) with the data keys a model reads, and overrides."""
    defaults = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / f"{model}.json").read_text())
    return {"model": model, "input_window": 12, "output_window": 12, **defaults, **overrides}


def small_model(model: str, feature_dim: int = 1, output_dim: int = 1, scaler=None, seed: int = 0, **overrides):
    """Narrow channels, 6 nodes; STGCN sets its first block's input channels to feature_dim itself."""
    sizes = SMALL_GWNET if model == "GWNET" else SMALL_STGCN
    feature = {"scaler": scaler or NoneScaler(), "num_nodes": NODES, "feature_dim": feature_dim,
               "output_dim": output_dim, "adj_mx": ADJ}
    torch.manual_seed(seed)
    return get_model(config_for(model, **{**sizes, **overrides}), feature)


def random_batch(batch: int = 3, window: int = 12, horizon: int = 12, feature_dim: int = 1, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"X": torch.randn(batch, window, NODES, feature_dim, generator=g),
            "y": torch.randn(batch, horizon, NODES, feature_dim, generator=g)}


# ----- LibCity's checkpoints -----

@pytest.mark.parametrize("model", MODELS)
def test_libcity_checkpoint_predicts_libcitys_numbers(synth_la: dict, model: str) -> None:
    """LibCity's state dict in our model, on SYNTH_LA's first 200 test windows scaled with LibCity's
    statistics: LibCity's predictions within 0.01 mph (in practice about 1e-5)."""
    config, feature, prepared = synth_la[model]
    scaler = libcity_scaler(model)
    net = get_model(config, {**feature, "scaler": scaler})
    net.load_state_dict(libcity_state(model))
    net.eval()
    data = torch.from_numpy(scaler.transform(prepared.data))
    starts = prepared.split[0] + prepared.split[1] + np.arange(200)
    batch = {"X": torch.stack([data[s: s + 12] for s in starts]), "y": torch.stack([data[s + 12: s + 24] for s in starts])}
    with torch.no_grad():
        ours = scaler.inverse_transform(net.predict(batch)[..., :1]).numpy()
    prediction, truth = ref.predictions(model)
    np.testing.assert_allclose(scaler.inverse_transform(batch["y"]).numpy(), truth, atol=1e-4)  # the same windows
    assert np.abs(ours - prediction).max() < 0.01


@pytest.mark.parametrize("model", MODELS)
def test_state_dict_is_libcitys(synth_la: dict, model: str) -> None:
    """Same names, order (LibCity's optimizer state refers to parameters by position) and shapes; the
    constant graph matrices are buffers outside the state dict."""
    config, feature, _ = synth_la[model]
    net = get_model(config, feature)
    theirs = libcity_state(model)
    assert list(net.state_dict()) == list(theirs)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    constant = {"GWNET": "supports", "STGCN": "terms"}[model]
    assert constant in dict(net.named_buffers()) and constant not in net.state_dict()


@pytest.mark.parametrize("model", MODELS)
def test_parameter_count_on_synth_la_is_libcitys(synth_la: dict, model: str) -> None:
    config, feature, _ = synth_la[model]
    assert sum(p.numel() for p in get_model(config, feature).parameters()) == ref.parameter_count(model)


@pytest.mark.parametrize("model, expected", [("GWNET", 276_600), ("STGCN", 319_969)])
def test_parameter_count_for_207_sensors(model: str, expected: int) -> None:
    """LibCity's counts for METR_LA's size (207 sensors, one speed feature) with the defaults."""
    rng = np.random.default_rng(0)
    adj = (rng.random((207, 207)) < 0.05) * rng.random((207, 207))
    feature = {"scaler": NoneScaler(), "num_nodes": 207, "feature_dim": 1, "output_dim": 1, "adj_mx": adj}
    assert sum(p.numel() for p in get_model(config_for(model), feature).parameters()) == expected


@pytest.mark.parametrize("model", MODELS)
def test_defaults_are_libcitys(synth_la: dict, model: str) -> None:
    config = synth_la[model][0]
    for key, value in LIBCITY_DEFAULTS[model].items():
        if key != "scaler":  # the fixture asked for raw data
            assert config[key] == value, key
            assert config.sources[key] == f"model/traffic_state_pred/{model}.json", key
    shipped = json.loads((paths.CONFIG_DIR / "model" / "traffic_state_pred" / f"{model}.json").read_text())
    assert shipped == LIBCITY_DEFAULTS[model]


@pytest.mark.parametrize("model, overrides", [("GWNET", {"aptonly": False}), ("STGCN", {})])
def test_constant_matrices_follow_the_module(model: str, overrides: dict) -> None:
    """Buffers, not attributes: .to() moves them with the weights (here to float64; a device alike)."""
    net = small_model(model, **overrides).to(torch.float64).eval()
    batch = {k: v.double() for k, v in random_batch().items()}
    assert net.predict(batch).dtype == torch.float64


# ----- GWNET: every option against a plain NCHW computation -----

def gwnet_reference(net: GWNET, x: torch.Tensor) -> torch.Tensor:
    """GWNET in eval mode written directly in [B, C, N, T] with the model's weights: torch's own
    conv2d for every convolution, each support applied hop by hop with einsum."""
    conv = nn.Conv2d.forward
    h = x.permute(0, 3, 2, 1)  # [B, F, N, L]
    h = F.pad(h, (max(x.shape[1] + 1, net.receptive_field) - x.shape[1], 0))
    h = conv(net.start_conv, h)
    supports = list(net.supports)
    if net.adaptive:
        supports.append(torch.softmax(torch.relu(net.nodevec1 @ net.nodevec2), dim=1))
    skip = None
    for i in range(net.blocks * net.layers):
        residual = h
        z = torch.tanh(conv(net.filter_convs[i], h)) * torch.sigmoid(conv(net.gate_convs[i], h))
        s = conv(net.skip_convs[i], z)
        skip = s if skip is None else s + skip[..., -s.shape[3]:]
        if net.use_graph:
            parts = [z]
            for a in supports:
                y = z
                for _ in range(2):
                    y = torch.einsum("bcvt,vw->bcwt", y, a)  # node v sends to node w with weight a[v, w]
                    parts.append(y)
            h = conv(net.gconv[i].mlp.mlp, torch.cat(parts, dim=1))
        else:
            h = conv(net.residual_convs[i], z)
        bn = net.bn[i]
        h = F.batch_norm(h + residual[..., -h.shape[3]:], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         training=False, eps=bn.eps)
    return conv(net.end_conv_2, torch.relu(conv(net.end_conv_1, torch.relu(skip))))  # [B, OW, N, T]


def with_batchnorm_statistics(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so that eval-mode BatchNorm is checked too."""
    g = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return net


OPTIONS = [dict(zip(("gcn_bool", "addaptadj", "aptonly", "randomadj"), v)) for v in itertools.product([True, False], repeat=4)]


@pytest.mark.parametrize("adjtype", sorted(graph.GWNET_SUPPORTS))
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_gwnet_options_match_the_plain_computation(adjtype: str, options: dict) -> None:
    net = with_batchnorm_statistics(small_model("GWNET", adjtype=adjtype, **options), seed=2).eval()
    batch = random_batch()
    with torch.no_grad():
        ours, reference = net.predict(batch), gwnet_reference(net, batch["X"])
    assert ours.shape == (3, 12, NODES, 1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    supports = (0 if options["aptonly"] else len(graph.GWNET_SUPPORTS[adjtype](ADJ))) + (
        options["gcn_bool"] and options["addaptadj"])
    assert net.use_graph == (options["gcn_bool"] and supports > 0)
    if options["gcn_bool"]:  # LibCity sizes the graph convolution by the support count, used or not
        assert net.gconv[0].mlp.mlp.in_channels == (2 * supports + 1) * 4
    net.train()
    net.calculate_loss(batch).backward()
    used = net.gconv[0].mlp.mlp if net.use_graph else net.residual_convs[0]
    assert used.weight.grad is not None and torch.isfinite(used.weight.grad).all()


def test_gwnet_randomadj_false_starts_from_the_first_supports_svd() -> None:
    """nodevec1 @ nodevec2 is the rank-10 SVD truncation of the first support: the support itself
    when there are at most 10 nodes."""
    net = small_model("GWNET", adjtype="transition", randomadj=False, aptonly=False)
    np.testing.assert_allclose((net.nodevec1 @ net.nodevec2).detach().numpy(), graph.random_walk(ADJ), atol=1e-5)


@pytest.mark.parametrize("window, blocks, layers, field, end_steps", [
    (12, 4, 2, 13, 1), (24, 4, 3, 29, 1), (12, 2, 3, 15, 1), (6, 2, 2, 7, 1), (16, 4, 2, 13, 5)])
def test_gwnet_apt_layer_sizes_the_receptive_field(window: int, blocks: int, layers: int, field: int,
                                                   end_steps: int) -> None:
    """layers = round(log2((input_window - 1) / blocks + 1)). The output keeps output_dim steps, or more
    when the padded window is longer than the receptive field (LibCity then scores the first)."""
    net = small_model("GWNET", input_window=window, blocks=blocks).eval()
    assert (net.layers, net.receptive_field) == (layers, field)
    batch = random_batch(window=window)
    with torch.no_grad():
        ours = net.predict(batch)
        assert ours.shape == (3, 12, NODES, end_steps)
        torch.testing.assert_close(ours, gwnet_reference(net, batch["X"]), rtol=1e-4, atol=1e-5)


def test_gwnet_loss_is_masked_mae_on_real_units() -> None:
    scaler = StandardScaler()
    scaler.mean, scaler.std = 50.0, 10.0
    net = small_model("GWNET", scaler=scaler).eval()
    batch = random_batch()
    batch["y"][0, :4] = (0.0 - 50.0) / 10.0  # zero readings (missing) are ignored
    pred = net.predict(batch).detach().numpy() * 10 + 50
    true = batch["y"].numpy() * 10 + 50
    keep = np.abs(true) > 1e-4
    assert net.calculate_loss(batch).item() == pytest.approx(np.abs(pred - true)[keep].mean(), rel=1e-5)


# ----- STGCN -----

def chebyshev_reference(x: torch.Tensor, terms: torch.Tensor, conv) -> torch.Tensor:
    """relu(sum_{i,k} theta[i, o, k] (T_k x_i) + b + aligned x) with every term multiplied: [B, C, T, N]."""
    x_k = torch.einsum("knm,bctm->bctkn", terms, x)
    return torch.relu(torch.einsum("cok,bctkn->botn", conv.theta, x_k) + conv.b + conv.align(x))


@pytest.mark.parametrize("graph_conv_type, ks", [("chebconv", 1), ("chebconv", 2), ("chebconv", 3), ("chebconv", 4),
                                                  ("gcnconv", 3)])
def test_stgcn_graph_conv_matches_all_terms_multiplied(graph_conv_type: str, ks: int) -> None:
    net = small_model("STGCN", graph_conv_type=graph_conv_type, Ks=ks)
    terms = torch.from_numpy(graph.STGCN_GRAPH_CONVS[graph_conv_type](ADJ, ks))
    assert net.st_conv1.sconv.theta.shape == (4, 4, len(terms))
    x = torch.randn(3, 4, 10, NODES)
    torch.testing.assert_close(net.st_conv1.sconv(x, net.terms, net.identity_first),
                               chebyshev_reference(x, terms, net.st_conv1.sconv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kt, ks, graph_conv_type, feature_dim", [
    (3, 3, "chebconv", 1), (2, 2, "chebconv", 1), (1, 1, "chebconv", 1), (3, 1, "gcnconv", 1), (2, 3, "chebconv", 3),
])
def test_stgcn_stepwise_predict_equals_rerunning_the_window(kt: int, ks: int, graph_conv_type: str, feature_dim: int) -> None:
    """predict keeps each layer's last inputs and computes only the new step; LibCity re-runs the whole
    window per output step. Extra features (feature_dim > output_dim) come from the truth."""
    net = small_model("STGCN", feature_dim=feature_dim, Kt=kt, Ks=ks, graph_conv_type=graph_conv_type).eval()
    batch = random_batch(feature_dim=feature_dim)
    with torch.no_grad():
        fast, slow = net.predict(batch), net._predict_rerun(batch)
    assert fast.shape == (3, 12, NODES, 1)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    net.train()  # with dropout 0 the training predict ('full' mode) takes the same path, with gradients
    net.predict(batch).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_stgcn_dropout_in_training_reruns_the_window() -> None:
    """With active dropout each window draws its own masks, as LibCity."""
    net = small_model("STGCN", dropout=0.5, stgcn_train_mode="full").train()
    batch = random_batch()
    torch.manual_seed(3)
    ours = net.predict(batch)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, net._predict_rerun(batch))


@pytest.mark.parametrize("mode, training, steps", [("quick", True, 1), ("quick", False, 12), ("full", True, 12),
                                                   ("full", False, 12)])
def test_stgcn_loss_is_mse_over_the_modes_steps(mode: str, training: bool, steps: int) -> None:
    scaler = StandardScaler()
    scaler.mean, scaler.std = 50.0, 10.0
    net = small_model("STGCN", scaler=scaler, stgcn_train_mode=mode).train(training)
    batch = random_batch()
    with torch.no_grad():
        pred = (net.forward(batch) if steps == 1 else net.predict(batch)).numpy() * 10 + 50
        true = batch["y"][:, :steps].numpy() * 10 + 50
        assert net.calculate_loss(batch).item() == pytest.approx(np.square(pred - true).mean(), rel=1e-5)


# ----- errors -----

@pytest.mark.parametrize("model, overrides, message", [
    ("STGCN", {"input_window": 8}, r"input_window > 4 \* \(Kt - 1\) = 8.*at most 2"),
    ("STGCN", {"Kt": 0}, "Kt must be at least 1"),
    ("STGCN", {"Ks": 0}, "at least 1"),
    ("STGCN", {"blocks": [[1, 4, 8]]}, "two lists of three"),
    ("STGCN", {"blocks": [[1, 4, 8], [6, 4, 8]]}, "first block's output channels"),
    ("STGCN", {"graph_conv_type": "cheb"}, "Valid values: chebconv, gcnconv"),
    ("STGCN", {"stgcn_train_mode": "fast"}, "Valid values: full, quick"),
    ("GWNET", {"adjtype": "doubletransiton"}, "Did you mean 'doubletransition'.*identity, normlap"),
    ("GWNET", {"input_window": 2, "blocks": 4}, "apt_layer gives 0 layers"),
    ("GWNET", {"kernel_size": 1}, "apt_layer needs kernel_size >= 2"),
    ("GWNET", {"blocks": 0}, "blocks must be a positive integer"),
])
def test_settings_the_model_cannot_run_are_clear_errors(model: str, overrides: dict, message: str) -> None:
    with pytest.raises(LibTrafficError, match=message):
        small_model(model, **overrides)


def test_stgcn_without_edges_is_an_error_but_gcnconv_runs() -> None:
    feature = {"scaler": NoneScaler(), "num_nodes": 4, "feature_dim": 1, "output_dim": 1, "adj_mx": np.zeros((4, 4))}
    with pytest.raises(LibTrafficError, match="needs a graph with edges"):
        STGCN(config_for("STGCN", blocks=[[1, 4, 8], [8, 4, 8]]), feature)
    STGCN(config_for("STGCN", blocks=[[1, 4, 8], [8, 4, 8]], graph_conv_type="gcnconv"), feature)


def test_gwnet_aptonly_needs_no_graph_but_fixed_supports_need_finite_weights() -> None:
    adj = ADJ.copy()
    adj[4, 5] = np.inf  # an 'inf' initialised matrix without the Gaussian kernel
    feature = {"scaler": NoneScaler(), "num_nodes": NODES, "feature_dim": 1, "output_dim": 1, "adj_mx": adj}
    GWNET(config_for("GWNET", **SMALL_GWNET), feature)  # the default (aptonly) never reads the graph
    with pytest.raises(LibTrafficError, match="finite edge weights"):
        GWNET(config_for("GWNET", **SMALL_GWNET, aptonly=False), feature)


# ----- through the command line -----

@pytest.fixture(scope="module")
def evaluated_by_cli(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """run_model.py --train false on each model's LibCity checkpoint, in fresh folders (SYNTH_LA
    generated there), both at once."""
    runs = {}
    for model in MODELS:
        cwd = tmp_path_factory.mktemp(f"{model}_cli")
        ref.write_checkpoint(model, cwd / "libtraffic" / "cache" / "lc" / "model_cache" / f"{model}_SYNTH_LA.m")
        runs[model] = (cwd, ["--task", "traffic_state_pred", "--model", model, "--dataset", "SYNTH_LA", "--train",
                             "false", "--exp_id", "lc"])
    results = run_clis(Path(__file__).resolve().parent.parent, list(runs.values()), timeout=300)
    return {model: (cwd, result) for (model, (cwd, _)), result in zip(runs.items(), results)}


@pytest.mark.parametrize("model", MODELS)
def test_cli_on_libcitys_checkpoint_gives_libcitys_predictions(evaluated_by_cli: dict, model: str) -> None:
    cwd, result = evaluated_by_cli[model]
    assert result.returncode == 0, result.stderr[-3000:]
    [npz] = (cwd / "libtraffic" / "cache" / "lc" / "evaluate_cache").glob("*_predictions.npz")
    with np.load(npz) as ours:
        prediction, truth = ours["prediction"], ours["truth"]
    libcity_prediction, libcity_truth = ref.predictions(model)
    assert prediction.shape == (802, 12, 20, 1)
    np.testing.assert_allclose(truth[:200], libcity_truth, rtol=0, atol=1e-4)
    assert np.abs(prediction[:200] - libcity_prediction).max() < 0.01


def test_short_training_runs_end_to_end(repo_root: Path, tiny_dataset: str, workdir: Path) -> None:
    """One epoch of each model on 6 sensors through run_model.py: trained, saved, tested."""
    runs = [(workdir, ["--task", "traffic_state_pred", "--model", model, "--dataset", tiny_dataset, "--max_epoch", "1",
                       "--exp_id", f"short_{model}"]) for model in MODELS]
    for model, result in zip(MODELS, run_clis(repo_root, runs)):
        assert result.returncode == 0, result.stderr[-2000:]
        assert paths.model_cache_file(f"short_{model}", model, tiny_dataset).is_file()
        [npz] = (paths.evaluate_cache_dir(f"short_{model}")).glob("*_predictions.npz")
        with np.load(npz) as saved:
            assert saved["prediction"].shape[1:] == (12, 6, 1) and np.isfinite(saved["prediction"]).all()


def test_cli_refuses_what_stgcn_cannot_run(repo_root: Path, tiny_dataset: str, workdir: Path) -> None:
    """Exit 2 with one message: a window too short for Kt, a dataset without .rel, a .rel without edges."""
    folder = workdir / "raw_data" / tiny_dataset
    for name, edit in (("NOREL", lambda rel: rel.unlink()), ("NOEDGE", lambda rel: rel.write_text(
            rel.read_text().splitlines()[0] + "\n"))):
        copy = workdir / "raw_data" / name
        copy.mkdir()
        for path in folder.iterdir():
            (copy / path.name.replace(tiny_dataset, name)).write_text(path.read_text().replace(tiny_dataset, name))
        edit(copy / f"{name}.rel")
    cases = {"short window": ([tiny_dataset, "--input_window", "8"], "input_window > 4 * (Kt - 1)"),
             "no .rel": (["NOREL"], "NOREL.rel"),
             "no edges": (["NOEDGE", "--calculate_weight_adj", "false", "--init_weight_inf_or_zero", "zero"],
                          "needs a graph with edges")}
    runs = [(workdir, ["--model", "STGCN", "--dataset", *args]) for args, _ in cases.values()]
    for (name, (_, message)), result in zip(cases.items(), run_clis(repo_root, runs)):
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        assert message in result.stderr, (name, result.stderr[-2000:])
