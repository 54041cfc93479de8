"""hyper_tune.py end to end, as subprocesses sharing one Ray cluster, on a tiny synthetic dataset."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest
import torch

from libtraffic.data.synthetic import write_synthetic_dataset
from tests import warm
from tests.ray_nodes import RAY_ENV, free_port, start_node

REPO = Path(__file__).resolve().parent.parent
DATASET = "TUNE_TINY"
TIMEOUT = 400
RUNS_FILE = "hyper_tune_final_runs.json"  # the finished final runs, as the README names the file
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # renders the tuning report


def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Ray head for a whole module (the fixtures ``ray_cluster`` here and in test_tuning_resume.py);
    hyper_tune.py connects to it through RAY_ADDRESS.

    Started and ended by tests/ray_nodes.py: its own process group and temp dir, never the ray CLI's stop command.
    """
    port = free_port()
    head = start_node(tmp_path_factory.mktemp("ray"), head_port=port, num_cpus=2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.end()


def tuning_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of a module's hyper_tune runs, with the tiny dataset."""
    root = tmp_path_factory.mktemp("tune")
    write_synthetic_dataset(root / "raw_data", DATASET, num_nodes=5, num_days=3, seed=3)
    return root


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    yield from ray_head(tmp_path_factory)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tuning_folder(tmp_path_factory)


def write_space(workdir: Path, name: str, space: dict) -> str:
    (workdir / f"{name}.json").write_text(json.dumps(space))
    return name


def tune(workdir: Path, ray_address: str, exp_id: str, space: str, *args: str, check: bool = True,
         cold: bool = False):
    """hyper_tune.py on the test cluster; ``cold``: a new interpreter (tests/warm.py), for tests that compare
    runs for reproducibility (forked runs share the fork server's hash seed)."""
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--task", "traffic_state_pred", "--model", "GRU",
           "--dataset", DATASET, "--space_file", space, "--exp_id", exp_id, "--batch_size", "32", *args]
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_address}
    out = warm.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT, cold=cold)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def results(workdir: Path, exp_id: str) -> list[dict]:
    return json.loads((workdir / "libtraffic" / "cache" / exp_id / "hyper_tune_results.json").read_text())


def printed_best(stdout: str) -> tuple[dict, float]:
    config = re.search(r"Best trial config: (\{.*\})", stdout).group(1)
    loss = float(re.search(r"Best trial final validation loss: ([0-9.eE+-]+)", stdout).group(1))
    return eval(config, {"__builtins__": {}}), loss  # a printed dict of numbers and strings


TRIAL_LINE = re.compile(r"^(trial_\d{5}) (DONE|STOPPED EARLY|ERROR) (.*?) \| (.*)$", re.M)
PROGRESS_LINE = re.compile(r"^  trials: (\d+) of (\d+) done, (\d+) running, (\d+) pending(; about .+)?$", re.M)


def assert_trial_lines(workdir: Path, exp_id: str, out, rows: list[dict], metric: str = "loss") -> None:
    """Issue 17: one line per finished trial and one progress line after it; ids, folders and the results
    file agree (trial_00000, ... whatever the searcher); no Ray status table, no /tmp/ray path."""
    lines = TRIAL_LINE.findall(out.stdout)
    progress = PROGRESS_LINE.findall(out.stdout)
    assert len(lines) == len(progress) == len(rows), out.stdout[-3000:]
    folders = sorted(p.name for p in (workdir / "libtraffic" / "cache" / "hyper_tune" / exp_id).glob("trial_*"))
    assert folders == [f"trial_{i:05d}" for i in range(len(rows))]
    assert sorted(r["trial_id"] for r in rows) == sorted(line[0] for line in lines) == folders
    by_id = {r["trial_id"]: r for r in rows}
    for trial_id, status, values, rest in lines:
        row = by_id[trial_id]
        assert status == row["status"]
        for key, value in row["config"].items():
            assert f"{key}={value:.4g}" in values if isinstance(value, float) else f"{key}={value}" in values
        if status != "ERROR":
            epochs = row["epochs_run"]
            assert rest.startswith(f"best val {metric} {row['best_value']:.4f} at epoch {row['best_epoch']} | "
                                   f"{epochs} epoch{'' if epochs == 1 else 's'}, "), rest
    assert [int(p[0]) for p in progress] == list(range(1, len(rows) + 1))
    assert all(int(p[1]) == len(rows) and int(p[0]) + int(p[2]) + int(p[3]) == len(rows) for p in progress)
    assert any(p[4].startswith("; about ") for p in progress[:-1]) and progress[-1][4] == ""
    assert "== Status ==" not in out.stdout and "/tmp/ray" not in out.stdout + out.stderr
    assert "Trials did not complete" not in out.stdout + out.stderr


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
    assert_trial_lines(workdir, "grid", out, rows)

    cache = workdir / "libtraffic" / "cache" / "grid"
    state = torch.load(cache / "model_cache" / f"GRU_{DATASET}.m", weights_only=True)
    assert state["epoch"] == best["best_epoch"]
    assert state["best_val_loss"] == pytest.approx(best["best_loss"])
    from libtraffic.data.scalers import NoneScaler
    from libtraffic.model import get_model

    # speed and LibCity's default time-of-day feature
    model = get_model(state["config"], {"scaler": NoneScaler(), "num_nodes": 5, "feature_dim": 2, "output_dim": 1})
    model.load_state_dict(state["model_state_dict"])
    assert model.hidden_size == best["config"]["hidden_size"]

    best_file = cache / f"GRU_{DATASET}_best_config.json"
    saved = json.loads(best_file.read_text())
    assert saved["seed"] == best["seed"] and saved["hidden_size"] == best["config"]["hidden_size"]
    rerun = warm.run(
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
               "--num_samples", "4", "--verbose")
    rows = results(workdir, "hyperopt")
    assert len(rows) == 4
    # --verbose: Ray's status table too, its columns named as ours, trials named as their folders
    table = out.stdout[out.stdout.rindex("== Status =="):out.stdout.index("All trials, best first")]
    assert "/tmp/ray" not in out.stdout + out.stderr and "Result logdir" not in out.stdout
    assert f"Trial folders: {workdir / 'libtraffic' / 'cache' / 'hyper_tune' / 'hyperopt'}" in table
    header = next(line for line in table.splitlines() if line.startswith("| Trial name"))
    assert [c.strip() for c in header.strip("|").split("|")][-4:] == ["epoch", "val loss", "best val loss", "best epoch"]
    for r in rows:
        assert f"| {r['trial_id']} " in table
    assert re.search(r"Current best trial: trial_\d{5} with loss=", table)
    assert len(TRIAL_LINE.findall(out.stdout)) == len(PROGRESS_LINE.findall(out.stdout)) == 4
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


def test_failing_and_diverging_trials_are_never_ranked(workdir, ray_cluster):
    """A trial that cannot start or that diverges (NaN/inf) fails; it is never the best (it used to score 0)."""
    space = write_space(workdir, "failing", {"dropout": {"type": "grid_search", "list": [0.1, 1.5]},
                                             "learning_rate": {"type": "grid_search", "list": [0.01, 1e38]}})
    out = tune(workdir, ray_cluster, "failing", space, "--num_samples", "1", "--max_epoch", "1", "--hidden_size", "8")
    rows = {(r["config"]["dropout"], r["config"]["learning_rate"]): r for r in results(workdir, "failing")}
    for lr in (0.01, 1e38):
        assert rows[1.5, lr]["status"] == "ERROR" and "dropout must be in [0, 1)" in rows[1.5, lr]["error"]
    assert rows[0.1, 1e38]["status"] == "ERROR" and "Training diverged" in rows[0.1, 1e38]["error"]
    assert rows[0.1, 0.01]["status"] == "DONE"
    config, loss = printed_best(out.stdout)
    assert config == {"dropout": 0.1, "learning_rate": 0.01}
    assert loss == pytest.approx(rows[0.1, 0.01]["best_loss"]) and loss > 0
    assert "failed: " in out.stdout
    assert re.search(r"\(validation loss of epoch 0 of epochs 0-0, the trial's best epoch", out.stdout)
    assert_trial_lines(workdir, "failing", out, list(rows.values()))
    for r in rows.values():
        if r["status"] == "ERROR":
            assert re.search(rf"^{r['trial_id']} ERROR .* \| failed after \d+ epochs?, .*: .*{re.escape(r['error'][-30:])}$",
                             out.stdout, re.M)


def test_all_trials_failing_exits_nonzero(workdir, ray_cluster):
    space = write_space(workdir, "allfail", {"dropout": {"type": "choice", "list": [1.5, 2.0]}})
    out = tune(workdir, ray_cluster, "allfail", space, "--num_samples", "2", check=False)
    assert out.returncode == 1
    assert "All 2 trials failed" in out.stderr and "Traceback" not in out.stderr


def _running_intervals(ray_dir: Path) -> list[tuple[float, float]]:
    """(start, end) wall-clock seconds of each trial, from Ray's per-trial progress.csv."""
    spans = []
    for progress in ray_dir.glob("trial_*/progress.csv"):
        df = pd.read_csv(progress)
        spans.append((float(df["timestamp"].iloc[-1] - df["time_total_s"].iloc[-1]), float(df["timestamp"].iloc[-1])))
    return spans


def _chromium(html: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1200,4000", *mode, html.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_optuna_two_at_once_then_the_report_renders_in_a_browser(workdir, ray_cluster, tmp_path):
    space = write_space(workdir, "optuna", {
        "learning_rate": {"type": "loguniform", "lower": 0.001, "upper": 0.03},
        "hidden_size": {"type": "lograndint", "lower": 4, "upper": 17},
        "dropout": {"type": "randn", "mean": 0.2, "sd": 0.05},
        "num_layers": {"type": "grid_search", "list": [1, 2]},
        "max_epoch": {"type": "choice", "list": [2]},
    })
    out = tune(workdir, ray_cluster, "optuna", space, "--search_alg", "OptunaSearch", "--num_samples", "2",
               "--max_concurrent", "2", "--seed", "5")
    rows = results(workdir, "optuna")
    assert len(rows) == 4 and all(r["status"] == "DONE" for r in rows)  # 2 grid values x --num_samples 2
    assert sorted(r["config"]["num_layers"] for r in rows) == [1, 1, 2, 2]
    assert len({r["config"]["learning_rate"] for r in rows}) == len({r["config"]["dropout"] for r in rows}) == 4
    for r in rows:
        assert 0.001 <= r["config"]["learning_rate"] < 0.03 and 4 <= r["config"]["hidden_size"] <= 16
        assert 0.0 < r["config"]["dropout"] < 0.4 and r["config"]["max_epoch"] == 2
    spans = sorted(_running_intervals(workdir / "libtraffic" / "cache" / "hyper_tune" / "optuna"))
    assert len(spans) == 4 and spans[1][0] < spans[0][1]  # the first two trials ran at the same time
    assert printed_best(out.stdout)[0] == min(rows, key=lambda r: r["best_loss"])["config"]
    assert_trial_lines(workdir, "optuna", out, rows)  # Optuna's trials too: trial_00000 ... (Ray counts them from 1)
    folder = workdir / "libtraffic" / "cache" / "optuna"
    assert f"Tuning report: {folder / 'hyper_tune_report.html'}" in out.stdout  # written at the end of the run

    report = warm.run([sys.executable, "-m", "libtraffic.report", "--exp_id", "optuna"], cwd=workdir,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert report.returncode == 0, report.stderr[-3000:]
    html = folder / "hyper_tune_report.html"
    assert report.stdout.strip() == f"Tuning report: {html}"
    # Optuna's trial ids are random: the history follows the start times the records carry
    assert all(isinstance(r["started"], float) for r in rows) and "have no start time" not in html.read_text()
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    dom = _chromium(html, tmp_path, "--dump-dom").stdout
    for title in ("Optimisation history", "Learning curves", "Tuned parameters", "Parallel coordinates",
                  "Test metrics per horizon", "Predicted vs true", "Parameter importance (fANOVA)"):
        assert f"<h2>{title}</h2>" in dom
    assert "Importance needs at least 5 finished trials" in dom  # three trials: a note, not an empty plot
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(images) == 6
    for data in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.02  # drawn, not blank
    shot = tmp_path / "report.png"
    _chromium(html, tmp_path, f"--screenshot={shot}")
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (4000, 1200) and pixels[:2000, ..., :3].std() > 0.05


def printed_best_metric(stdout: str, metric: str) -> tuple[dict, float]:
    config = re.search(r"Best trial config: (\{.*\})", stdout).group(1)
    value = float(re.search(rf"Best trial validation {re.escape(metric)} \(--metric, ranks the trials\): ([0-9.eE+-]+)",
                            stdout).group(1))
    return eval(config, {"__builtins__": {}}), value  # a printed dict of numbers and strings


def check_ranked_by(workdir: Path, exp_id: str, out, metric: str, pick) -> dict:
    """Every record's best epoch is its best by ``metric`` (``pick``: min or max), the records and the printed
    best trial are ranked by it, and the exported model is that trial's best epoch. Returns the best record."""
    rows = results(workdir, exp_id)
    for r in rows:
        assert r["metric"] == metric and len(r["metric_curve"]) == len(r["loss_curve"]) == r["epochs_run"]
        assert r["best_value"] == pick(r["metric_curve"])
        assert r["best_epoch"] == r["metric_curve"].index(r["best_value"])
        assert r["best_loss"] == r["loss_curve"][r["best_epoch"]]
    values = [r["best_value"] for r in rows]
    assert values == sorted(values, reverse=pick is max)
    best = rows[0]
    config, value = printed_best_metric(out.stdout, metric)
    assert config == best["config"] and value == pytest.approx(best["best_value"], rel=1e-12)
    assert "Best trial final validation loss" not in out.stdout
    cache = workdir / "libtraffic" / "cache" / exp_id
    state = torch.load(cache / "model_cache" / f"GRU_{DATASET}.m", weights_only=True)
    assert state["epoch"] == best["best_epoch"] and state["best_metric"] == metric
    assert state["best_value"] == pytest.approx(best["best_value"], rel=1e-6)
    assert json.loads((cache / "hyper_tune_experiment.json").read_text())["metric"] == metric
    assert json.loads((cache / f"GRU_{DATASET}_best_config.json").read_text())["best_metric"] == metric
    assert f"validation {metric}" in (cache / "hyper_tune_report.html").read_text()
    return best


def test_metric_at_one_horizon_ranks_trials_and_picks_best_epochs(workdir, ray_cluster):
    space = write_space(workdir, "by_mae3", {
        "hidden_size": {"type": "grid_search", "list": [8, 16]},
        "learning_rate": {"type": "grid_search", "list": [0.03, 0.003]},
        "max_epoch": {"type": "choice", "list": [3]},
    })
    out = tune(workdir, ray_cluster, "by_mae3", space, "--num_samples", "1", "--metric", "masked_MAE@3",
               "--scheduler", "ASHA")
    check_ranked_by(workdir, "by_mae3", out, "masked_MAE@3", min)
    table = pd.read_csv(workdir / "libtraffic" / "cache" / "by_mae3" / "hyper_tune_results.csv")
    assert set(table["metric"]) == {"masked_MAE@3"} and "best val masked_MAE@3" in out.stdout


def test_r2_ranks_trials_by_the_highest(workdir, ray_cluster):
    space = write_space(workdir, "by_r2", {
        "learning_rate": {"type": "grid_search", "list": [0.03, 0.001]},
        "max_epoch": {"type": "choice", "list": [2]},
    })
    out = tune(workdir, ray_cluster, "by_r2", space, "--num_samples", "1", "--metric", "R2", "--hidden_size", "8")
    best = check_ranked_by(workdir, "by_r2", out, "R2", max)
    assert best["best_value"] > results(workdir, "by_r2")[-1]["best_value"]


