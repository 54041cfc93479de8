"""hyper_tune.py end to end, continued: same-seed reproducibility, --resume after a Ctrl-C, concurrent
runs of one experiment, and final runs (--final_seeds), on a Ray head of this file's own. A file of
its own so that the suite's processes share the long tuning tests (tests/conftest.py)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests import warm
from tests.ray_nodes import RAY_ENV
from tests.test_tuning import (DATASET, REPO, RUNS_FILE, TIMEOUT, ray_head, results, tune, tuning_folder,
                               write_space)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    yield from ray_head(tmp_path_factory)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tuning_folder(tmp_path_factory)


def test_same_seed_same_configs_and_losses(workdir, ray_cluster):
    space = write_space(workdir, "random", {
        "learning_rate": {"type": "uniform", "lower": 0.001, "upper": 0.02},
        "hidden_size": {"type": "randint", "lower": 4, "upper": 20},
    })
    runs = []
    for exp_id in ("seed_a", "seed_b"):
        tune(workdir, ray_cluster, exp_id, space, "--num_samples", "2", "--max_epoch", "1", "--seed", "11", cold=True)
        runs.append(sorted((r["config"]["hidden_size"], r["config"]["learning_rate"], r["seed"], r["best_loss"])
                           for r in results(workdir, exp_id)))
    assert runs[0] == runs[1]
    tune(workdir, ray_cluster, "seed_c", space, "--num_samples", "2", "--max_epoch", "1", "--seed", "12")
    other = sorted((r["config"]["hidden_size"], r["config"]["learning_rate"]) for r in results(workdir, "seed_c"))
    assert other != [row[:2] for row in runs[0]]


def test_interrupted_run_resumes_without_repeating_trials(workdir, ray_cluster):
    space = write_space(workdir, "resume", {
        "hidden_size": {"type": "grid_search", "list": [4, 6, 8, 10]},
        "max_epoch": {"type": "choice", "list": [8]},  # trials long enough to be interrupted mid-run
    })
    first = interrupt_after_second_trial_reports(workdir, ray_cluster, "resume", space, 8, "--num_samples", "1")
    first_progress = (first / "progress.csv").read_text()
    # what the interrupted run leaves: the trials so far, drawn by the report
    snapshot = json.loads((workdir / "libtraffic" / "cache" / "resume" / "hyper_tune_results.json").read_text())
    assert snapshot["interrupted"] is True and 2 <= len(snapshot["trials"]) <= 4
    for r in snapshot["trials"]:  # the second trial may have ended before Ray stopped it
        assert (r["status"], r["epochs_run"] == 8, r["epochs_run"] == 0) in {
            ("DONE", True, False), ("INTERRUPTED", False, False), ("NOT STARTED", False, True)}, r
    assert sum(r["status"] == "DONE" for r in snapshot["trials"]) >= 1
    report = warm.run([sys.executable, "-m", "libtraffic.report", "--exp_id", "resume"], cwd=workdir,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (workdir / "libtraffic" / "cache" / "resume" / "hyper_tune_report.html").read_text()
    assert "The run was interrupted:" in page and "--resume --exp_id resume continues it" in page

    out = tune(workdir, ray_cluster, "resume", space, "--num_samples", "1", "--resume")
    rows = results(workdir, "resume")
    assert sorted(r["config"]["hidden_size"] for r in rows) == [4, 6, 8, 10]
    assert all(r["epochs_run"] == 8 for r in rows)
    assert (first / "progress.csv").read_text() == first_progress  # the finished trial was not re-run
    assert "Best trial config" in out.stdout


def interrupt_after_second_trial_reports(workdir: Path, ray_address: str, exp_id: str, space: str, epochs: int,
                                         *args: str) -> Path:
    """Start hyper_tune.py, Ctrl-C it once its second trial has reported an epoch; returns the first
    trial's folder (trials of ``epochs`` epochs, long enough to be interrupted mid-run)."""
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", DATASET, "--space_file", space,
           "--exp_id", exp_id, "--batch_size", "32", *args]
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_address}
    proc = warm.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ray_dir = workdir / "libtraffic" / "cache" / "hyper_tune" / exp_id
    deadline = time.time() + TIMEOUT
    first = second = None
    # Interrupt once the second trial has reported an epoch: by then Ray has recorded the first
    # as finished in its saved experiment state. Trial folders are ours: trial_00000, trial_00001, ...
    while time.time() < deadline and second is None:
        first, candidate = (sorted(ray_dir.glob("trial_*")) + [None, None])[:2]
        if candidate is not None and (candidate / "progress.csv").is_file() and \
                len((candidate / "progress.csv").read_text().strip().splitlines()) >= 2:
            second = candidate
        time.sleep(0.1)
    assert first is not None and second is not None, \
        f"the second trial never reported: {sorted(p.name for p in ray_dir.glob('*'))}"
    assert len((first / "progress.csv").read_text().strip().splitlines()) == epochs + 1
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"--resume --exp_id {exp_id}" in stderr
    return first


def test_optuna_resumes_without_repeating_trials(workdir, ray_cluster):
    space = write_space(workdir, "optuna_resume", {
        "learning_rate": {"type": "loguniform", "lower": 0.001, "upper": 0.03},
        "hidden_size": {"type": "randint", "lower": 4, "upper": 12},
    })
    args = ("--search_alg", "OptunaSearch", "--num_samples", "3", "--max_epoch", "6")
    first = interrupt_after_second_trial_reports(workdir, ray_cluster, "optuna_resume", space, 6, *args)
    first_progress = (first / "progress.csv").read_text()
    tune(workdir, ray_cluster, "optuna_resume", space, *args, "--resume")
    rows = results(workdir, "optuna_resume")
    assert len(rows) == 3 and all(r["status"] == "DONE" and r["epochs_run"] == 6 for r in rows)
    assert len({r["config"]["learning_rate"] for r in rows}) == 3  # the restored searcher suggests new points
    assert (first / "progress.csv").read_text() == first_progress


def test_same_exp_id_at_once_and_resume_must_repeat_settings(workdir, ray_cluster):
    """Two tuning runs with one --exp_id: one wins, the other stops at once. The winner's settings
    are stored; a resume with other settings is refused naming each, one changing log_level runs."""
    space = write_space(workdir, "settings", {"hidden_size": {"type": "choice", "list": [4]},
                                              "max_epoch": {"type": "choice", "list": [1]}})
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_cluster}
    base = [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", DATASET, "--space_file", space, "--exp_id", "twice",
            "--batch_size", "32", "--num_samples", "1"]
    procs = {lr: warm.Popen([*base, "--learning_rate", lr], cwd=workdir, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for lr in ("0.01", "0.005")}
    outs = {lr: proc.communicate(timeout=TIMEOUT) for lr, proc in procs.items()}
    codes = {lr: proc.returncode for lr, proc in procs.items()}
    assert sorted(codes.values()) == [0, 2], outs
    winner = next(lr for lr, code in codes.items() if code == 0)
    loser_err = outs[next(lr for lr in codes if lr != winner)][1]
    assert "already exists" in loser_err and "twice" in loser_err and "Traceback" not in loser_err, loser_err
    best_model = re.search(r"Best model: (\S+\.m)", outs[winner][0]).group(1)
    assert torch.load(best_model, weights_only=True)["config"]["learning_rate"] == float(winner)

    stored = json.loads((workdir / "libtraffic" / "cache" / "twice" / "hyper_tune_experiment.json").read_text())
    assert {"command", "argv", "task", "model", "dataset", "exp_id", "space_file", "space", "search_alg", "scheduler",
            "num_samples", "max_concurrent", "cpu_per_trial", "gpu_per_trial", "seed", "time_budget_s", "fixed",
            "started"} <= set(stored)
    assert stored["space"] == json.loads((workdir / "settings.json").read_text())
    assert stored["fixed"] == {"batch_size": 32, "learning_rate": float(winner)}
    assert stored["num_samples"] == 1 and stored["exp_id"] == "twice" and "hyper_tune.py" in stored["command"]

    write_space(workdir, "settings_wider", {"hidden_size": {"type": "choice", "list": [4, 8]},
                                            "max_epoch": {"type": "choice", "list": [1]}})
    changed = [*base[:5], "settings_wider", *base[6:-1], "2", "--learning_rate", "0.001", "--resume"]
    refused = warm.run(changed, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    for fragment in ("--resume of experiment twice with other settings than it started with",
                     "--num_samples: stored 1, now 2", f"--learning_rate: stored {float(winner)}, now 0.001",
                     "search space: stored", "settings_wider.json", "Resume with the original command plus --resume:"):
        assert fragment in refused.stderr, (fragment, refused.stderr)
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr

    allowed = warm.run([*base, "--learning_rate", winner, "--resume", "--log_level", "WARNING"], cwd=workdir,
                             env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "Best trial config" in allowed.stdout


def test_final_seeds_retrain_the_best_configuration(workdir, ray_cluster):
    space = write_space(workdir, "finals", {"learning_rate": {"type": "grid_search", "list": [0.03, 0.003]}})
    out = tune(workdir, ray_cluster, "finals", space, "--num_samples", "1", "--max_epoch", "1", "--hidden_size", "8",
               "--max_concurrent", "2", "--final_seeds", "2", "--final_top", "1")
    saved = results(workdir, "finals")
    trials, finals = saved["trials"], saved["final_seeds"]
    assert len(trials) == 2 and len(finals) == 1
    best = trials[0]
    assert finals[0]["trial_id"] == best["trial_id"] and finals[0]["config"] == best["config"]
    runs = finals[0]["runs"]
    seeds = [run["seed"] for run in runs]
    assert len(runs) == 2 and len(set(seeds)) == 2 and not set(seeds) & {t["seed"] for t in trials}
    horizons = range(1, 13)
    for run in runs:
        assert all(math.isfinite(run["test"][f"masked_MAE@{h}"]) for h in horizons)
    assert runs[0]["test"] != runs[1]["test"]  # other seeds, other models
    values = [run["test"]["masked_MAE@12"] for run in runs]
    shown = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    table = out.stdout.split("retrained with fresh seeds", 1)[1]
    assert f"trial {best['trial_id']}" in table and "2 of 2 runs" in table and shown in table
    assert len(pd.read_csv(workdir / "libtraffic" / "cache" / "finals" / "hyper_tune_results.csv")) == 2
    page = (workdir / "libtraffic" / "cache" / "finals" / "hyper_tune_report.html").read_text()
    assert "<h2>Best configurations retrained with fresh seeds</h2>" in page and shown in page


def interrupt_during_final_runs(workdir: Path, ray_address: str, exp_id: str, space: str, planned: int,
                                *args: str) -> list[dict]:
    """Start hyper_tune.py, Ctrl-C it once its durable final-runs file holds at least one finished run but
    not all ``planned``; returns the runs the file kept."""
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", DATASET, "--space_file", space,
           "--exp_id", exp_id, "--batch_size", "32", *args]
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_address}
    proc = warm.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    durable = workdir / "libtraffic" / "cache" / exp_id / RUNS_FILE
    deadline, seen = time.time() + TIMEOUT, []
    while time.time() < deadline and proc.poll() is None and not seen:
        if durable.is_file():  # written atomically: always complete JSON
            seen = json.loads(durable.read_text())["runs"]
        time.sleep(0.05)
    assert seen and len(seen) < planned, (len(seen), proc.poll())
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert f"--resume --exp_id {exp_id}" in stderr and "final run(s) that finished are kept too" in stderr, stderr
    assert "Traceback" not in stderr and "Ctrl-C again" not in stderr  # one Ctrl-C stops the final runs at once
    kept = json.loads(durable.read_text())["runs"]
    assert len(seen) <= len(kept) < planned and all("test" in run for run in kept)
    # the results file holds the (finished) trials and the final runs that finished, for the report
    snapshot = json.loads((workdir / "libtraffic" / "cache" / exp_id / "hyper_tune_results.json").read_text())
    assert all(trial["status"] == "DONE" for trial in snapshot["trials"])
    assert sorted(run["seed"] for entry in snapshot["final_seeds"] for run in entry["runs"]) == \
        sorted(run["seed"] for run in kept)
    assert f"The trials so far: {workdir / 'libtraffic' / 'cache' / exp_id / 'hyper_tune_results.json'}" in stdout
    return kept


def test_final_runs_interrupted_then_resumed_reuse_the_finished_ones(workdir, ray_cluster):
    space = write_space(workdir, "finals_resume", {"learning_rate": {"type": "choice", "list": [0.01]}})
    args = ("--num_samples", "1", "--max_epoch", "3", "--hidden_size", "8", "--max_concurrent", "1",
            "--final_seeds", "5")  # one at a time: after the first run returns, four more take a few seconds
    kept = interrupt_during_final_runs(workdir, ray_cluster, "finals_resume", space, 5, *args)

    out = tune(workdir, ray_cluster, "finals_resume", space, *args, "--resume")
    assert f"Reusing {len(kept)} of 5 final run(s) finished before the interruption" in out.stdout
    assert f"5 time(s) each with fresh seeds: {5 - len(kept)} run(s)" in out.stdout  # only the others ran
    saved = results(workdir, "finals_resume")
    trial = saved["trials"][0]
    runs = saved["final_seeds"][0]["runs"]
    assert len(runs) == 5 and all("test" in run for run in runs) and len({run["seed"] for run in runs}) == 5
    by_seed = {run["seed"]: run["test"] for run in runs}
    for run in kept:  # the same seeds, the same test numbers, for the same trial and configuration
        assert run["trial_id"] == trial["trial_id"] and run["config"] == trial["config"]
        assert by_seed[run["seed"]] == run["test"]
    durable = json.loads((workdir / "libtraffic" / "cache" / "finals_resume" / RUNS_FILE).read_text())
    assert {run["seed"]: run["test"] for run in durable["runs"]} == by_seed
    assert "5 of 5 runs" in out.stdout.split("retrained with fresh seeds", 1)[1]
