"""run_model.py end to end (subprocesses) and the pipeline in-process: files, reruns, learning."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.scalers import NoneScaler
from libtraffic.data.synthetic import BUILTIN_DATASETS, generate_speeds, write_synthetic_dataset
from libtraffic.data.windows import num_samples, split_sizes
from libtraffic.model.rnn import RNN
from libtraffic.pipeline import run_model
from libtraffic.utils.errors import LibTrafficError

from conftest import REPO_ROOT, run_cli, run_clis

EXP = "701"
FLAGS = ["--task", "traffic_state_pred", "--model", "GRU", "--dataset", "TINY", "--max_epoch", "2",
         "--hidden_size", "16", "--input_window", "6"]
NODES, STEPS = 6, 3 * 288
SAMPLES = num_samples(STEPS, 6, 12)  # the default output_window is 12
NUM_TRAIN, NUM_VAL, NUM_TEST = split_sizes(SAMPLES, 0.7, 0.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One training run of run_model.py; the files it left are listed right after it. Then, at
    once, a second training run with the same exp_id and an evaluation-only run (--train false)."""
    cwd = tmp_path_factory.mktemp("e2e")
    write_synthetic_dataset(cwd / "raw_data", "TINY", num_nodes=NODES, num_days=3, seed=1)
    result = run_cli(REPO_ROOT, cwd, *FLAGS, "--exp_id", EXP)
    files = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file())
    again, evaluate = run_clis(REPO_ROOT, [(cwd, [*FLAGS, "--exp_id", EXP]),
                                           (cwd, [*FLAGS, "--exp_id", EXP, "--train", "false"])])
    return {"cwd": cwd, "result": result, "files": files, "again": again, "evaluate": evaluate}


def _matching(trained: dict, pattern: str) -> list[str]:
    return [f for f in trained["files"] if re.fullmatch(pattern, f)]


def test_training_run_succeeds_and_reports(trained: dict) -> None:
    result = trained["result"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    for epoch in (0, 1):
        assert re.search(rf"Epoch \[{epoch}/2\] train_loss: \d+\.\d{{4}}, val_loss: \d+\.\d{{4}}, lr: 0\.010000", out), out
    assert re.search(r"Loaded the best epoch [01] \(val_loss \d+\.\d{4}\)", out)
    header = next(line for line in out.splitlines() if "masked_MAE" in line)
    assert header.split() == ["MAE", "MAPE", "MSE", "RMSE", "masked_MAE", "masked_MAPE", "masked_MSE", "masked_RMSE", "R2", "EVAR"]
    rows = [line.split() for line in out.splitlines() if re.match(r"^\d+\s+\d+\.\d{4}", line)]
    assert [row[0] for row in rows] == [str(h) for h in range(1, 13)]
    assert f"split ({NUM_TRAIN}, {NUM_VAL}, {NUM_TEST}) samples" in out


def test_training_run_leaves_libcity_files(trained: dict) -> None:
    cwd = trained["cwd"]
    logs = _matching(trained, rf"libtraffic/log/{EXP}-GRU-TINY-.*\.log")
    assert len(logs) == 1
    log = (cwd / logs[0]).read_text()
    assert "Epoch [1/2]" in log and "masked_MAE" in log
    assert "config hidden_size = 16  (from command line)" in log
    assert "config input_window = 6  (from command line)" in log
    assert "gpu is true but no CUDA device is available: running on the CPU." in log
    assert _matching(trained, rf"libtraffic/cache/{EXP}/model_cache/GRU_TINY\.m") != []
    assert len(_matching(trained, rf"libtraffic/cache/{EXP}/evaluate_cache/\d{{4}}(_\d\d){{5}}_GRU_TINY\.csv")) == 1
    assert len(_matching(trained, rf"libtraffic/cache/{EXP}/evaluate_cache/.*_GRU_TINY_predictions\.npz")) == 1
    assert len(_matching(trained, rf"libtraffic/cache/{EXP}/events\.out\.tfevents\..*")) == 1
    assert _matching(trained, r"libtraffic/cache/dataset_cache/TINY_[0-9a-f]{16}/data\.npy") != []
    outside = [f for f in trained["files"] if not f.startswith(("libtraffic/", "raw_data/TINY/"))]
    assert outside == []


def test_saved_model_loads_into_a_fresh_rnn(trained: dict) -> None:
    state = torch.load(trained["cwd"] / f"libtraffic/cache/{EXP}/model_cache/GRU_TINY.m", weights_only=True)
    assert state["epoch"] == state["best_epoch"] in (0, 1)
    assert state["config"]["hidden_size"] == 16 and state["config"]["input_window"] == 6
    feature = {"scaler": NoneScaler(), "num_nodes": NODES, "feature_dim": 2, "output_dim": 1}  # speed, time of day
    model = RNN(state["config"], feature)
    model.load_state_dict(state["model_state_dict"])
    assert model.rnn.weight_hh_l0.shape == (3 * 16, 16)


def test_predictions_and_metrics_files(trained: dict) -> None:
    folder = trained["cwd"] / f"libtraffic/cache/{EXP}/evaluate_cache"
    npz = np.load(next(folder.glob("*_predictions.npz")))
    assert npz["prediction"].shape == npz["truth"].shape == (NUM_TEST, 12, NODES, 1)
    speeds = generate_speeds(NODES, 3, seed=1).speeds
    starts = np.arange(NUM_TRAIN + NUM_VAL, SAMPLES)
    np.testing.assert_allclose(npz["truth"][..., 0], speeds[starts[:, None] + 6 + np.arange(12)], atol=1e-4)
    table = pd.read_csv(next(folder.glob("*.csv")), index_col=0)
    t, p = npz["truth"].astype(np.float64), npz["prediction"].astype(np.float64)
    for h in (1, 12):
        keep = np.abs(t[:, h - 1]) > 1e-3
        assert table.loc[h, "masked_MAE"] == pytest.approx(np.abs(p[:, h - 1] - t[:, h - 1])[keep].mean(), rel=1e-5)


def test_tensorboard_has_loss_per_epoch(trained: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained["cwd"] / f"libtraffic/cache/{EXP}"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval loss", "training loss"]
    assert [s.step for s in events.Scalars("training loss")] == [0, 1]
    val = [s.value for s in events.Scalars("eval loss")]
    logged = re.findall(r"val_loss: (\d+\.\d{4})", trained["result"].stdout)
    assert [f"{v:.4f}" for v in val] == logged


def test_reusing_exp_id_for_training_is_refused(trained: dict) -> None:
    result = trained["again"]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(rf"Error: Experiment folder .*libtraffic/cache/{EXP} already exists; choose a new --exp_id", result.stderr)


def test_train_false_evaluates_the_saved_model(trained: dict) -> None:
    folder = trained["cwd"] / f"libtraffic/cache/{EXP}/evaluate_cache"
    first = _matching(trained, r".*\.csv")
    result = trained["evaluate"]
    assert result.returncode == 0, result.stderr
    assert "Loaded model from" in result.stdout and "GRU_TINY.m" in result.stdout
    assert "train_loss" not in result.stdout
    csvs = sorted(folder.glob("*.csv"))
    assert len(first) == 1 and len(csvs) == 2 and trained["cwd"] / first[0] in csvs
    pd.testing.assert_frame_equal(pd.read_csv(csvs[0], index_col=0), pd.read_csv(csvs[1], index_col=0))


def test_train_false_without_a_model(tiny_dataset: str, workdir: Path) -> None:
    with pytest.raises(LibTrafficError, match=r"--train false: there is no experiment folder .*libtraffic/cache/none; "
                                              r"check --exp_id"):
        run_model(dataset_name=tiny_dataset, train=False, other_args={"exp_id": "none", "input_window": 6})
    (workdir / "libtraffic/cache/none").mkdir(parents=True)
    with pytest.raises(LibTrafficError, match=r"--train false but there is no saved model .*GRU_TINY\.m"):
        run_model(dataset_name=tiny_dataset, train=False, other_args={"exp_id": "none", "input_window": 6})
    with pytest.raises(LibTrafficError, match=r"--train false works on an existing experiment: add the --exp_id"):
        run_model(dataset_name=tiny_dataset, train=False, other_args={"input_window": 6})


def test_saved_model_false_writes_no_model(tiny_dataset: str, workdir: Path) -> None:
    result = run_model(dataset_name=tiny_dataset, saved_model=False,
                       other_args={"exp_id": "nosave", "max_epoch": 1, "input_window": 6, "output_window": 3,
                                   "hidden_size": 8, "log_level": "WARNING"})
    assert sorted(result) == sorted(f"{m}@{h}" for h in (1, 2, 3) for m in
                                    ["MAE", "MAPE", "MSE", "RMSE", "masked_MAE", "masked_MAPE", "masked_MSE",
                                     "masked_RMSE", "R2", "EVAR"])
    assert not (workdir / "libtraffic/cache/nosave/model_cache").exists()
    assert len(list((workdir / "libtraffic/cache/nosave/evaluate_cache").glob("*.csv"))) == 1


def test_builtin_dataset_is_generated_on_first_use(workdir: Path) -> None:
    assert not (workdir / "raw_data").exists()
    config = ConfigParser("traffic_state_pred", "GRU", "SYNTH_LA")
    folder = workdir / "raw_data" / "SYNTH_LA"
    assert sorted(p.name for p in folder.iterdir()) == ["SYNTH_LA.dyna", "SYNTH_LA.geo", "SYNTH_LA.rel", "config.json"]
    size = BUILTIN_DATASETS["SYNTH_LA"]
    prepared = get_dataset(config).prepare()
    # LibCity's RNN defaults add the time of day as a second feature (load_external, add_time_in_day).
    assert prepared.data.shape == (size["num_days"] * 288, size["num_nodes"], 2)
    assert config["set_weight_link_or_dist"] == "dist" and config["calculate_weight_adj"] is True


def test_gru_beats_last_value(workdir: Path) -> None:
    """A GRU trained for a few epochs predicts the test split clearly better than repeating the
    last value of the input window (masked MAE averaged over the 12 horizons)."""
    nodes, days = 10, 7
    write_synthetic_dataset(workdir / "raw_data", "LEARN", num_nodes=nodes, num_days=days, seed=2)
    result = run_model(dataset_name="LEARN", other_args={
        "exp_id": "learn", "max_epoch": 10, "hidden_size": 32, "add_time_in_day": True, "log_level": "WARNING"})
    gru = np.mean([result[f"masked_MAE@{h}"] for h in range(1, 13)])

    speeds = generate_speeds(nodes, days, seed=2).speeds.astype(np.float64)
    samples = num_samples(len(speeds), 12, 12)
    num_train, num_val, _ = split_sizes(samples, 0.7, 0.1)
    starts = np.arange(num_train + num_val, samples)
    last = speeds[starts + 11]
    truth = speeds[starts[:, None] + 12 + np.arange(12)]
    baseline = np.mean([np.abs(truth[:, h] - last)[truth[:, h] != 0].mean() for h in range(12)])
    npz = np.load(next((workdir / "libtraffic/cache/learn/evaluate_cache").glob("*_predictions.npz")))
    np.testing.assert_allclose(npz["truth"][..., 0], truth, atol=1e-4)
    assert gru < 0.9 * baseline, (gru, baseline)
