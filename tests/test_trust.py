"""Never silently wrong (issue 7, items 1-4, 8-10), each case through the real run_model.py CLI.

Divergence, degenerate data, resume, max_epoch 0, bad rates, lr_lambda traps and a damaged
dataset cache: a clear message and exit 2, or a correct result; never a clean-looking wrong number.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from libtraffic.data.synthetic import write_synthetic_dataset

from tests import warm
from conftest import REPO_ROOT, SUBPROCESS_ENV, write_dataset

SMALL = ["--max_epoch", "1", "--hidden_size", "8", "--input_window", "3", "--output_window", "3", "--batch_size", "32"]
DATASETS = {"TINY", "CONST", "ZEROS", "INF", "HUGE"}

# case -> (dataset, extra arguments); each case runs in its own experiment, all started together.
CASES: dict[str, tuple[str, list[str]]] = {
    "lr_inf": ("TINY", ["--learning_rate", "inf"]),
    "lr_negative": ("TINY", ["--learning_rate", "-1"]),
    "weight_decay_negative": ("TINY", ["--weight_decay", "-1"]),
    "lr_overflow": ("TINY", ["--learning_rate", "1e38"]),
    "sgd_diverges": ("TINY", ["--learner", "sgd", "--learning_rate", "1", "--clip_grad_norm", "false", "--train_loss", "mse"]),
    "lambda_zero_division": ("TINY", ["--lr_decay", "true", "--lr_scheduler", "lambdalr", "--lr_lambda", "1 / epoch"]),
    "lambda_tower": ("TINY", ["--lr_decay", "true", "--lr_scheduler", "lambdalr", "--lr_lambda", "9 ** 9 ** 9 ** 9"]),
    "max_epoch_zero": ("TINY", ["--max_epoch", "0"]),
    "constant": ("CONST", []),
    "all_zero": ("ZEROS", []),
    "inf_reading": ("INF", []),
    "huge_reading": ("HUGE", []),
}


def _run(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    start = time.monotonic()
    out = warm.run([sys.executable, str(REPO_ROOT / "run_model.py"), *args], cwd=cwd, env=SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=300)
    out.seconds = time.monotonic() - start
    return out


def _write_datasets(root: Path) -> None:
    write_synthetic_dataset(root, "TINY", num_nodes=4, num_days=2, seed=5)
    steps, nodes = 200, 3
    write_dataset(root, "CONST", np.full((steps, nodes), 50.0))
    write_dataset(root, "ZEROS", np.zeros((steps, nodes)))
    values = 50.0 + np.arange(steps * nodes, dtype=np.float64).reshape(steps, nodes) % 7
    with_inf = values.copy()
    with_inf[5, 1] = np.inf
    write_dataset(root, "INF", with_inf)
    huge = values.copy()
    huge[7, 2] = 1e39  # beyond float32's range
    write_dataset(root, "HUGE", huge)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("trust")
    _write_datasets(root / "raw_data")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run, root, ["--dataset", dataset, "--exp_id", name, *SMALL, *extra])
                   for name, (dataset, extra) in CASES.items()}
        results = {name: future.result() for name, future in futures.items()}
    for out in results.values():
        out.cwd = root
    return results


def user_error(out: subprocess.CompletedProcess, *patterns: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.stderr.startswith("Error: ") and out.stderr.count("Error: ") == 1, out.stderr
    for pattern in patterns:
        assert re.search(pattern, out.stderr), f"{pattern!r} not in: {out.stderr}"
    return out.stderr


def model_file(out: subprocess.CompletedProcess, exp_id: str, dataset: str) -> Path:
    return out.cwd / "libtraffic" / "cache" / exp_id / "model_cache" / f"GRU_{dataset}.m"


# ----- item 1: a diverged model is never scored -----

@pytest.mark.parametrize("case", ["lr_overflow", "sgd_diverges"])
def test_divergence_stops_with_advice_and_scores_nothing(runs, case: str) -> None:
    out = runs[case]
    user_error(out, r"Training diverged at epoch 0, training batch \d+: (the loss is (nan|inf)|the optimiser step overflows)",
               r"Try a smaller --learning_rate", r"--clip_grad_norm true")
    assert not model_file(out, case, "TINY").exists()
    assert not list((out.cwd / "libtraffic" / "cache" / case).glob("evaluate_cache/*.csv"))
    assert "val_loss: 0.0000" not in out.stdout


def test_infinite_learning_rate_is_refused(runs) -> None:
    user_error(runs["lr_inf"], r"learning_rate must be a positive, finite number .*got inf")


# ----- item 2: degenerate data -----

def test_constant_readings_are_shifted_not_divided_by_zero(runs) -> None:
    out = runs["constant"]
    assert out.returncode == 0, out.stderr[-2000:]
    assert "The scaler's standard deviation over the training data is 0 (constant readings); using 1" in out.stdout
    csv = next((out.cwd / "libtraffic/cache/constant/evaluate_cache").glob("*.csv"))
    table = np.genfromtxt(csv, delimiter=",", names=True)
    assert np.isfinite(table["masked_MAE"]).all()


def test_a_dataset_without_any_valid_reading_is_refused(runs) -> None:
    user_error(runs["all_zero"], r"ZEROS\.dyna has no valid reading: every value of the predicted column\(s\) is 0")


@pytest.mark.parametrize("case, dataset", [("inf_reading", "INF"), ("huge_reading", "HUGE")])
def test_infinite_or_huge_readings_are_counted_as_missing(runs, case: str, dataset: str) -> None:
    out = runs[case]
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{dataset}.dyna: 0 NaN and 1 infinite (or beyond float32's range) readings treated as missing" in out.stdout
    csv = next((out.cwd / f"libtraffic/cache/{case}/evaluate_cache").glob("*.csv"))
    assert np.isfinite(np.genfromtxt(csv, delimiter=",", names=True)["masked_MAE"]).all()


# ----- item 4, 9, 10: settings that cannot train -----

def test_max_epoch_zero_is_refused(runs) -> None:
    out = runs["max_epoch_zero"]
    user_error(out, r"max_epoch is 0: nothing would be trained.*--max_epoch 1 or more")
    assert not model_file(out, "max_epoch_zero", "TINY").exists()


@pytest.mark.parametrize("case, pattern", [
    ("lr_negative", r"learning_rate must be a positive, finite number .*got -1"),
    ("weight_decay_negative", r"weight_decay must be a finite number >= 0 .*got -1"),
    ("lambda_zero_division", r"lr_lambda '1 / epoch' cannot be computed at epoch 0: it divides by zero"),
    ("lambda_tower", r"lr_lambda '9 \*\* 9 \*\* 9 \*\* 9' cannot be computed at epoch 0: the result is too large"),
])
def test_bad_rates_and_lambdas_are_refused(runs, case: str, pattern: str) -> None:
    user_error(runs[case], pattern)


def test_lr_lambda_evaluation_is_bounded() -> None:
    """Every expression, however nested, is float arithmetic: it ends at once (milliseconds; the bound
    leaves room for a busy machine), where plain evaluation would run for minutes or exhaust memory."""
    from libtraffic.executor.optim import lr_lambda_from_text
    from libtraffic.utils.errors import LibTrafficError

    for text in ["9 ** 9 ** 9 ** 9", "(((2 ** 99) ** 99) ** 99) ** 99", "max(9 ** 999, 1) * epoch", "-" * 150 + "1",
                 "(" * 90 + "epoch" + ")" * 90, "epoch % 0"]:
        start = time.perf_counter()
        try:
            lr_lambda_from_text(text, max_epoch=100)
        except LibTrafficError:
            pass
        assert time.perf_counter() - start < 2, text
    with pytest.raises(LibTrafficError, match="keep it under 200"):
        lr_lambda_from_text("1 + " * 60 + "epoch")


# ----- item 3: resuming equals an uninterrupted run, and keeps the best epoch -----

# multisteplr at epoch 1 with ratio 1000 drives the LR to 10: later epochs are worse, so the
# best epoch (0) is not the last one, the case where resuming used to keep the wrong model.
RESUME = ["--dataset", "TINY", "--hidden_size", "8", "--input_window", "3", "--output_window", "3", "--batch_size",
          "32", "--steps", "[1]", "--lr_decay_ratio", "1000", "--dropout", "0.3", "--teacher_forcing_ratio", "0.5"]


def _state(cwd: Path, exp_id: str, name: str = "GRU_TINY.m") -> dict:
    return torch.load(cwd / "libtraffic/cache" / exp_id / "model_cache" / name, weights_only=True)


def test_resume_equals_uninterrupted_and_keeps_the_best_model(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "raw_data", "TINY", num_nodes=4, num_days=2, seed=5)
    with ThreadPoolExecutor(max_workers=2) as pool:
        whole = pool.submit(_run, tmp_path, [*RESUME, "--exp_id", "whole", "--max_epoch", "4"])
        first = pool.submit(_run, tmp_path, [*RESUME, "--exp_id", "part", "--max_epoch", "3"])
        whole, first = whole.result(), first.result()
    assert whole.returncode == 0 and first.returncode == 0, whole.stderr[-2000:] + first.stderr[-2000:]
    part = _state(tmp_path, "part")
    assert part["best_epoch"] == 0, "premise: the LR jump makes epochs 1 and 2 worse than epoch 0"
    resumed = _run(tmp_path, [*RESUME, "--exp_id", "part", "--max_epoch", "4", "--epoch", "2"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _state(tmp_path, "whole"), _state(tmp_path, "part")
    assert [h["loss"] for h in got["history"]] == pytest.approx([h["loss"] for h in expected["history"]], rel=1e-6)
    assert [h["train_loss"] for h in got["history"]] == pytest.approx(
        [h["train_loss"] for h in expected["history"]], rel=1e-6)
    assert got["best_epoch"] == expected["best_epoch"] == 0 and got["epoch"] == 0
    best = _state(tmp_path, "part", "GRU_TINY_epoch0.tar")
    for key, value in best["model_state_dict"].items():
        assert torch.equal(got["model_state_dict"][key], value), key
        assert torch.allclose(expected["model_state_dict"][key], value, rtol=1e-5, atol=1e-6), key
    last = _state(tmp_path, "part", "GRU_TINY_epoch3.tar")
    whole_last = _state(tmp_path, "whole", "GRU_TINY_epoch3.tar")
    assert last["wait"] == whole_last["wait"] == 3
    for key, value in whole_last["model_state_dict"].items():
        assert torch.allclose(last["model_state_dict"][key], value, rtol=1e-5, atol=1e-6), key


# ----- item 8: a damaged dataset cache is rebuilt -----

@pytest.fixture(scope="module")
def cached_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset and the cache a first training run left for it."""
    root = tmp_path_factory.mktemp("cached")
    write_synthetic_dataset(root / "raw_data", "TINY", num_nodes=4, num_days=2, seed=5)
    assert _run(root, ["--dataset", "TINY", *SMALL, "--exp_id", "a"]).returncode == 0
    return root


@pytest.mark.parametrize("damage", ["truncate_data", "garbage_meta", "delete_adj"])
def test_damaged_dataset_cache_is_rebuilt_with_a_warning(tmp_path: Path, cached_dataset: Path, damage: str) -> None:
    for part in ("raw_data", "libtraffic/cache/dataset_cache"):
        shutil.copytree(cached_dataset / part, tmp_path / part)
    args = ["--dataset", "TINY", *SMALL]
    (folder,) = (tmp_path / "libtraffic/cache/dataset_cache").iterdir()
    if damage == "truncate_data":
        data = folder / "data.npy"
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "garbage_meta":
        (folder / "meta.json").write_text("not JSON")
    else:
        (folder / "adj_mx.npy").unlink()
    out = _run(tmp_path, [*args, "--exp_id", "b"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"The dataset cache {folder} is damaged" in out.stdout and "rebuilding it" in out.stdout
    third = _run(tmp_path, [*args, "--exp_id", "c"])
    assert third.returncode == 0 and "is damaged" not in third.stdout and "Loaded prepared data from cache" in third.stdout
