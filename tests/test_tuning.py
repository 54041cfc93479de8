"""hyper_tune.py end to end, as subprocesses sharing one Ray cluster, on a tiny synthetic dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from libtraffic.data.synthetic import write_synthetic_dataset
from tests.ray_nodes import RAY_ENV, free_port, start_node

REPO = Path(__file__).resolve().parent.parent
DATASET = "TUNE_TINY"
TIMEOUT = 400


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One Ray head for the whole module; hyper_tune.py connects to it through RAY_ADDRESS.

    Started and ended by tests/ray_nodes.py: its own process group and temp dir, never ``ray stop``.
    """
    port = free_port()
    head = start_node(tmp_path_factory.mktemp("ray"), head_port=port, num_cpus=2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.end()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    write_synthetic_dataset(root / "raw_data", DATASET, num_nodes=5, num_days=3, seed=3)
    return root


def write_space(workdir: Path, name: str, space: dict) -> str:
    (workdir / f"{name}.json").write_text(json.dumps(space))
    return name


def tune(workdir: Path, ray_address: str, exp_id: str, space: str, *args: str, check: bool = True):
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--task", "traffic_state_pred", "--model", "GRU",
           "--dataset", DATASET, "--space_file", space, "--exp_id", exp_id, "--batch_size", "32", *args]
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_address}
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def results(workdir: Path, exp_id: str) -> list[dict]:
    return json.loads((workdir / "libtraffic" / "cache" / exp_id / "hyper_tune_results.json").read_text())


def printed_best(stdout: str) -> tuple[dict, float]:
    config = re.search(r"Best trial config: (\{.*\})", stdout).group(1)
    loss = float(re.search(r"Best trial final validation loss: ([0-9.eE+-]+)", stdout).group(1))
    return eval(config, {"__builtins__": {}}), loss  # a printed dict of numbers and strings


def test_grid_fifo_best_model_and_config_reproduce(workdir, ray_cluster):
    space = write_space(workdir, "grid", {
        "hidden_size": {"type": "grid_search", "list": [8, 16]},
        "learning_rate": {"type": "grid_search", "list": [0.01, 0.003]},
        "max_epoch": {"type": "choice", "list": [2]},
    })
    out = tune(workdir, ray_cluster, "grid", space, "--num_samples", "1")
    rows = results(workdir, "grid")
    assert sorted((r["config"]["hidden_size"], r["config"]["learning_rate"]) for r in rows) == [
        (8, 0.003), (8, 0.01), (16, 0.003), (16, 0.01)]
    assert all(r["status"] == "DONE" and r["epochs_run"] == 2 and len(r["loss_curve"]) == 2 for r in rows)
    best = min(rows, key=lambda r: r["best_loss"])
    config, loss = printed_best(out.stdout)
    assert config == best["config"]
    assert loss == pytest.approx(best["best_loss"], rel=1e-12)
    assert loss == pytest.approx(min(best["loss_curve"]), rel=1e-12)
    assert "masked_MAE" in out.stdout  # test metrics of the best model

    cache = workdir / "libtraffic" / "cache" / "grid"
    state = torch.load(cache / "model_cache" / f"GRU_{DATASET}.m", weights_only=False)
    assert state["epoch"] == best["best_epoch"]
    assert state["best_val_loss"] == pytest.approx(best["best_loss"])
    from libtraffic.data.scalers import NoneScaler
    from libtraffic.model import get_model

    model = get_model(state["config"], {"scaler": NoneScaler(), "num_nodes": 5, "feature_dim": 1, "output_dim": 1})
    model.load_state_dict(state["model_state_dict"])
    assert model.hidden_size == best["config"]["hidden_size"]

    best_file = cache / f"GRU_{DATASET}_best_config.json"
    saved = json.loads(best_file.read_text())
    assert saved["seed"] == best["seed"] and saved["hidden_size"] == best["config"]["hidden_size"]
    rerun = subprocess.run(
        [sys.executable, str(REPO / "run_model.py"), "--dataset", DATASET, "--config_file", str(best_file),
         "--exp_id", "grid_rerun"], cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    val_losses = [float(x) for x in re.findall(r"val_loss: ([0-9.]+)", rerun.stdout)]
    assert min(val_losses) == pytest.approx(best["best_loss"], abs=5e-4)


def test_hyperopt_asha(workdir, ray_cluster):
    space = write_space(workdir, "hyperopt", {
        "hidden_size": {"type": "choice", "list": [8, 16]},
        "learning_rate": {"type": "loguniform", "lower": 0.001, "upper": 0.02},
        "max_epoch": {"type": "randint", "lower": 2, "upper": 4},
    })
    out = tune(workdir, ray_cluster, "hyperopt", space, "--search_alg", "HyperOpt", "--scheduler", "ASHA",
               "--num_samples", "4")
    rows = results(workdir, "hyperopt")
    assert len(rows) == 4
    finished = [r for r in rows if r["status"] != "ERROR"]
    best = min(finished, key=lambda r: r["best_loss"])
    config, loss = printed_best(out.stdout)
    assert config == best["config"] and loss == pytest.approx(best["best_loss"])
    for r in rows:
        assert r["epochs_run"] <= r["config"]["max_epoch"]
        assert r["status"] in ("DONE", "STOPPED EARLY")


def test_bayesopt_median_stopping(workdir, ray_cluster):
    space = write_space(workdir, "bayes", {
        "learning_rate": {"type": "uniform", "lower": 0.001, "upper": 0.02},
        "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.5},
    })
    out = tune(workdir, ray_cluster, "bayes", space, "--search_alg", "BayesOptSearch",
               "--scheduler", "MedianStoppingRule", "--num_samples", "3", "--max_epoch", "2", "--hidden_size", "8")
    rows = results(workdir, "bayes")
    assert len(rows) == 3 and len({r["config"]["learning_rate"] for r in rows}) == 3
    config, loss = printed_best(out.stdout)
    assert loss == pytest.approx(min(r["best_loss"] for r in rows if r["status"] != "ERROR"))


def test_same_seed_same_configs_and_losses(workdir, ray_cluster):
    space = write_space(workdir, "random", {
        "learning_rate": {"type": "uniform", "lower": 0.001, "upper": 0.02},
        "hidden_size": {"type": "randint", "lower": 4, "upper": 20},
    })
    runs = []
    for exp_id in ("seed_a", "seed_b"):
        tune(workdir, ray_cluster, exp_id, space, "--num_samples", "2", "--max_epoch", "1", "--seed", "11")
        runs.append(sorted((r["config"]["hidden_size"], r["config"]["learning_rate"], r["seed"], r["best_loss"])
                           for r in results(workdir, exp_id)))
    assert runs[0] == runs[1]
    tune(workdir, ray_cluster, "seed_c", space, "--num_samples", "2", "--max_epoch", "1", "--seed", "12")
    other = sorted((r["config"]["hidden_size"], r["config"]["learning_rate"]) for r in results(workdir, "seed_c"))
    assert other != [row[:2] for row in runs[0]]


def test_failing_trial_does_not_end_the_run(workdir, ray_cluster):
    space = write_space(workdir, "failing", {"dropout": {"type": "grid_search", "list": [0.1, 1.5]}})
    out = tune(workdir, ray_cluster, "failing", space, "--num_samples", "1", "--max_epoch", "1", "--hidden_size", "8")
    rows = {r["config"]["dropout"]: r for r in results(workdir, "failing")}
    assert rows[1.5]["status"] == "ERROR" and "dropout must be in [0, 1)" in rows[1.5]["error"]
    assert rows[0.1]["status"] == "DONE"
    assert printed_best(out.stdout)[0] == {"dropout": 0.1}
    assert "failed: " in out.stdout


def test_all_trials_failing_exits_nonzero(workdir, ray_cluster):
    space = write_space(workdir, "allfail", {"dropout": {"type": "choice", "list": [1.5, 2.0]}})
    out = tune(workdir, ray_cluster, "allfail", space, "--num_samples", "2", check=False)
    assert out.returncode == 1
    assert "All 2 trials failed" in out.stderr and "Traceback" not in out.stderr


def test_interrupted_run_resumes_without_repeating_trials(workdir, ray_cluster):
    space = write_space(workdir, "resume", {
        "hidden_size": {"type": "grid_search", "list": [4, 6, 8, 10]},
        "max_epoch": {"type": "choice", "list": [8]},  # trials long enough to be interrupted mid-run
    })
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", DATASET, "--space_file", space,
           "--exp_id", "resume", "--batch_size", "32", "--num_samples", "1"]
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ray_dir = workdir / "libtraffic" / "cache" / "hyper_tune" / "resume"
    deadline = time.time() + TIMEOUT
    first = second = None
    # Interrupt once the second trial has reported an epoch: by then Ray has recorded the first
    # as finished in its saved experiment state.
    while time.time() < deadline and second is None:
        first = next(iter(ray_dir.glob("trial_00000")), None)
        candidate = next(iter(ray_dir.glob("trial_00001")), None)
        if candidate is not None and (candidate / "progress.csv").is_file() and \
                len((candidate / "progress.csv").read_text().strip().splitlines()) >= 2:
            second = candidate
            break
        time.sleep(0.1)
    assert first is not None and second is not None, "the second trial never reported"
    assert len((first / "progress.csv").read_text().strip().splitlines()) == 9
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, stderr[-2000:]
    assert "--resume --exp_id resume" in stderr
    first_progress = (first / "progress.csv").read_text()

    out = tune(workdir, ray_cluster, "resume", space, "--num_samples", "1", "--resume")
    rows = results(workdir, "resume")
    assert sorted(r["config"]["hidden_size"] for r in rows) == [4, 6, 8, 10]
    assert all(r["epochs_run"] == 8 for r in rows)
    assert (first / "progress.csv").read_text() == first_progress  # the finished trial was not re-run
    assert "Best trial config" in out.stdout
