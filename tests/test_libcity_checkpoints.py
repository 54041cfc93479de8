"""LibCity's checkpoint in, LibCity's predictions out (issue 16): run_model.py --train false on
LibCity's saved models (tests/libcity_reference/), and the errors around loading checkpoints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import libcity_ref
from conftest import REPO_ROOT, hand_values, run_clis, write_dataset
from libtraffic.data.synthetic import BUILTIN_DATASETS, write_synthetic_dataset
from libtraffic.pipeline import run_model
from libtraffic.utils.errors import LibTrafficError

MODELS = ("GRU", "LSTM", "STID", "DCRNN", "AGCRN", "MTGNN", "TGCN")
PADDED = ("GRU", "STID", "TGCN")  # also scored on LibCity's padded test split
EVALUATE = ["--task", "traffic_state_pred", "--dataset", "SYNTH_LA", "--train", "false"]


def _model_file(cwd: Path, exp_id: str, model: str, dataset: str = "SYNTH_LA") -> Path:
    return cwd / "libtraffic/cache" / exp_id / "model_cache" / f"{model}_{dataset}.m"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each model's LibCity checkpoint evaluated by run_model.py in a fresh folder (which generates
    SYNTH_LA), and again with LibCity's padded scoring in a second folder; all at once."""
    runs = {}
    for model in MODELS:
        cwd = tmp_path_factory.mktemp(model)
        libcity_ref.write_checkpoint(model, _model_file(cwd, "lc", model))
        runs[model] = (cwd, [*EVALUATE, "--model", model, "--exp_id", "lc"])
    for model in PADDED:
        cwd = tmp_path_factory.mktemp(f"{model}_padded")
        libcity_ref.write_checkpoint(model, _model_file(cwd, "padded", model))
        runs[f"{model} padded"] = (cwd, [*EVALUATE, "--model", model, "--exp_id", "padded",
                                         "--eval_pad_with_last_sample", "true"])
    results = run_clis(REPO_ROOT, list(runs.values()), timeout=300)
    return {name: (cwd, result) for (name, (cwd, _)), result in zip(runs.items(), results)}


def _outputs(cwd: Path, exp_id: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    folder = cwd / "libtraffic/cache" / exp_id / "evaluate_cache"
    (npz,) = folder.glob("*_predictions.npz")
    (csv,) = folder.glob("*.csv")
    with np.load(npz) as ours:
        return ours["prediction"], ours["truth"], pd.read_csv(csv, index_col=0)


@pytest.mark.parametrize("model", MODELS)
def test_libcity_checkpoint_predicts_libcitys_predictions(evaluated: dict, model: str) -> None:
    cwd, result = evaluated[model]
    assert result.returncode == 0, result.stderr[-3000:]
    for name, digest in libcity_ref.SYNTH_LA_SHA256.items():
        assert libcity_ref.file_sha256(cwd / "raw_data/SYNTH_LA" / name) == digest, name
    prediction, truth, _ = _outputs(cwd, "lc")
    libcity_prediction, libcity_truth = libcity_ref.predictions(model)
    assert prediction.shape == (802, 12, 20, 1)
    np.testing.assert_allclose(truth[:200], libcity_truth, rtol=0, atol=1e-4)
    assert np.abs(prediction[:200] - libcity_prediction).max() < 0.01
    assert "Loaded LibCity's saved model from" in result.stdout
    assert "records no settings: whether it was trained with this run's data settings" in result.stdout


@pytest.mark.parametrize("model", PADDED)
def test_libcity_checkpoint_scores_libcitys_metrics_when_padded(evaluated: dict, model: str) -> None:
    """With LibCity's padded test split, the metrics file is LibCity's (all horizons, all metrics)."""
    cwd, result = evaluated[f"{model} padded"]
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, ours = _outputs(cwd, "padded")
    libcity = pd.read_csv(libcity_ref.REFERENCE / model / "metrics_libcity_padded.csv")
    libcity.index = ours.index
    assert list(ours.columns) == list(libcity.columns)
    np.testing.assert_allclose(ours.to_numpy(), libcity.to_numpy(), rtol=1e-5)


# ----- checkpoints that do not fit, through the CLI (exit 2, one message) -----

def _unsafe(path: Path) -> None:
    torch.save({"model_state_dict": {}, "rng_state": {"numpy": np.random.get_state()}}, path)


CLI_ERRORS = {
    # name: (checkpoint written, model file (model, dataset), extra flags, expected message parts)
    "other model": ("LSTM", ("GRU", "SYNTH_LA"), [], [
        "is LibCity's saved model, but its weights do not fit the GRU built for this run: rnn.weight_ih_l0: checkpoint "
        "shape [256, 40] vs model shape [192, 40] (and 3 more mismatched weights)", "Check --model",
        "the dataset's number of sensors (20 here)", "hidden_size=64, num_layers=1"]),
    "other hidden size": ("GRU", ("GRU", "SYNTH_LA"), ["--hidden_size", "32"], [
        "rnn.weight_ih_l0: checkpoint shape [192, 40] vs model shape [96, 40]", "hidden_size=32"]),
    "other sensors": ("GRU", ("GRU", "SMALL"), [], [
        "rnn.weight_ih_l0: checkpoint shape [192, 40] vs model shape [192, 6]", "the dataset's number of sensors (3 here)"]),
    "unsafe": (_unsafe, ("GRU", "SYNTH_LA"), [], [
        "is not a checkpoint we can load safely: it holds Python objects (numpy.", "weights only"]),
}


def test_checkpoints_that_do_not_fit_are_refused_by_the_cli(tmp_path: Path) -> None:
    write_dataset(tmp_path / "raw_data", "SMALL", hand_values(40, 3))
    # Generated before the runs start at once (each would otherwise generate it on first use).
    write_synthetic_dataset(tmp_path / "raw_data", "SYNTH_LA", **BUILTIN_DATASETS["SYNTH_LA"])
    runs = []
    for name, (source, (model, dataset), extra, _) in CLI_ERRORS.items():
        exp_id = name.replace(" ", "_")
        path = _model_file(tmp_path, exp_id, model, dataset)
        path.parent.mkdir(parents=True)
        source(path) if callable(source) else libcity_ref.write_checkpoint(source, path)
        runs.append((tmp_path, [*EVALUATE, "--model", model, "--dataset", dataset, "--exp_id", exp_id, *extra]))
    for (name, (*_, expected)), result in zip(CLI_ERRORS.items(), run_clis(REPO_ROOT, runs)):
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr and result.stderr.count("Error: ") == 1, (name, result.stderr)
        for part in expected:
            assert part in result.stderr, (name, part, result.stderr)


# ----- in-process: the other mismatches, our own checkpoints' data settings, resuming -----

SMALL_RUN = {"input_window": 3, "output_window": 2, "hidden_size": 4, "max_epoch": 1, "log_level": "WARNING",
             "batch_size": 8}


@pytest.fixture
def small(make_dataset) -> str:
    make_dataset("SMALL", hand_values(40, 3))
    return "SMALL"


def _libcity_style(workdir: Path, exp_id: str, weights: dict) -> Path:
    """A LibCity-style saved model: (model state_dict, optimizer state_dict)."""
    path = _model_file(workdir, exp_id, "GRU", "SMALL")
    path.parent.mkdir(parents=True)
    torch.save((weights, {"state": {}, "param_groups": []}), path)
    return path


def test_libcity_tuple_missing_or_unexpected_weights(workdir: Path, small: str) -> None:
    run_model(dataset_name=small, other_args={**SMALL_RUN, "exp_id": "ours"})
    weights = torch.load(_model_file(workdir, "ours", "GRU", small), weights_only=True)["model_state_dict"]
    _libcity_style(workdir, "fits", dict(weights))
    result = run_model(dataset_name=small, train=False, other_args={**SMALL_RUN, "exp_id": "fits"})
    assert np.isfinite(result["masked_MAE@1"])
    _libcity_style(workdir, "missing", {k: v for k, v in weights.items() if k != "fc.bias"})
    with pytest.raises(LibTrafficError, match=r"do not fit the GRU built for this run: missing weight fc\.bias "
                                              r"\(model shape \[3\]\)\. Check --model"):
        run_model(dataset_name=small, train=False, other_args={**SMALL_RUN, "exp_id": "missing"})
    _libcity_style(workdir, "extra", {**weights, "rnn.weight_ih_l1": weights["rnn.weight_ih_l0"]})
    with pytest.raises(LibTrafficError, match=r"do not fit the GRU built for this run: unexpected weight rnn\.weight_ih_l1\."):
        run_model(dataset_name=small, train=False, other_args={**SMALL_RUN, "exp_id": "extra"})


def test_own_checkpoint_with_other_data_settings_is_refused(workdir: Path, small: str) -> None:
    run_model(dataset_name=small, other_args={**SMALL_RUN, "exp_id": "own"})
    same = run_model(dataset_name=small, train=False, other_args={**SMALL_RUN, "exp_id": "own"})
    assert np.isfinite(same["masked_MAE@1"])
    other = {"scaler": "normal", "input_window": 4, "output_window": 3, "train_rate": 0.6}
    with pytest.raises(LibTrafficError) as info:
        run_model(dataset_name=small, train=False, other_args={**SMALL_RUN, **other, "exp_id": "own"})
    message = str(info.value)
    assert message.startswith(f"--train false with other data settings than the model in "
                              f"{_model_file(workdir, 'own', 'GRU', small)} was trained with:\n")
    for line in ("--scaler: checkpoint 'standard', this run 'normal'", "--input_window: checkpoint 3, this run 4",
                 "--output_window: checkpoint 2, this run 3", "--train_rate: checkpoint 0.7, this run 0.6"):
        assert f"\n  {line}\n" in message, line
    assert message.count("\n  --") == 4 and "Evaluate with the settings it was trained with" in message
    # Where the dataset folder is (data_path) is no data setting.
    moved = workdir / "elsewhere"
    (workdir / "raw_data" / small).rename(moved)
    result = run_model(dataset_name=small, train=False, other_args={**SMALL_RUN, "exp_id": "own", "data_path": str(moved)})
    assert result["masked_MAE@1"] == pytest.approx(same["masked_MAE@1"])


def test_libcity_tuple_cannot_be_resumed(workdir: Path, small: str) -> None:
    run_model(dataset_name=small, other_args={**SMALL_RUN, "exp_id": "lt", "max_epoch": 2})
    epoch_file = workdir / "libtraffic/cache/lt/model_cache" / f"GRU_{small}_epoch1.tar"
    state = torch.load(epoch_file, weights_only=True)
    torch.save((state["model_state_dict"], state["optimizer_state_dict"]), epoch_file)
    with pytest.raises(LibTrafficError, match=r"is LibCity's saved model \(model and optimiser weights only\): it can be "
                                              r"evaluated with --train false, but holds no epoch"):
        run_model(dataset_name=small, other_args={**SMALL_RUN, "exp_id": "lt", "epoch": 1, "max_epoch": 3})


def test_libcity_epoch_checkpoint_is_fine_tuned_with_epoch(workdir: Path, small: str) -> None:
    """LibCity's <MODEL>_<DATASET>_epoch<K>.tar ({model_state_dict, optimizer_state_dict, epoch}) continues
    training with --epoch K: from its weights and optimiser, the scheduler at epoch K + 1, the best epoch
    chosen among the new epochs."""
    args = {**SMALL_RUN, "lr_scheduler": "multisteplr", "steps": [2], "lr_decay_ratio": 0.1}
    run_model(dataset_name=small, other_args={**args, "exp_id": "ours", "max_epoch": 2})
    ours = torch.load(workdir / f"libtraffic/cache/ours/model_cache/GRU_{small}_epoch1.tar", weights_only=True)
    libcity_file = workdir / f"libtraffic/cache/lc/model_cache/GRU_{small}_epoch1.tar"
    libcity_file.parent.mkdir(parents=True)
    torch.save({"model_state_dict": ours["model_state_dict"], "optimizer_state_dict": ours["optimizer_state_dict"],
                "epoch": 1}, libcity_file)
    run_model(dataset_name=small, other_args={**args, "exp_id": "lc", "epoch": 1, "max_epoch": 4})
    continued = torch.load(workdir / f"libtraffic/cache/lc/model_cache/GRU_{small}_epoch3.tar", weights_only=True)
    assert [h["epoch"] for h in continued["history"]] == [2, 3]
    assert continued["best_epoch"] in (2, 3)
    # The milestone at 2 decays the rate once, after epoch 2 (as an uninterrupted run would).
    base = args["learning_rate"] if "learning_rate" in args else ours["config"]["learning_rate"]
    assert [h["lr"] for h in continued["history"]] == pytest.approx([base * 0.1, base * 0.1])
    assert not torch.equal(continued["model_state_dict"]["fc.weight"], ours["model_state_dict"]["fc.weight"])
    # A file whose epoch is not the one its name gives is refused, as is another learner's optimiser state.
    torch.save({"model_state_dict": ours["model_state_dict"], "optimizer_state_dict": ours["optimizer_state_dict"],
                "epoch": 5}, libcity_file)
    with pytest.raises(LibTrafficError, match="is LibCity's checkpoint of epoch 5, not of epoch 1"):
        run_model(dataset_name=small, other_args={**args, "exp_id": "lc", "epoch": 1, "max_epoch": 4})
    torch.save({"model_state_dict": ours["model_state_dict"], "optimizer_state_dict": ours["optimizer_state_dict"],
                "epoch": 1}, libcity_file)
    with pytest.raises(LibTrafficError, match="its optimiser state does not fit this run's --learner rmsprop"):
        run_model(dataset_name=small, other_args={**args, "exp_id": "lc", "epoch": 1, "max_epoch": 4, "learner": "rmsprop"})
