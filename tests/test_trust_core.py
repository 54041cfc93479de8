"""Trust, round two (issue 15), the run_model side: no code from files, no clean-looking wrong
number, nothing lost, no hang, no traceback, no misleading message.

In-process checks call the component that decides; the CLI cases run the real run_model.py, all
started together by one module fixture (each process spends seconds importing torch).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from libtraffic.config import ConfigParser
from libtraffic.utils.errors import LibTrafficError

from tests import warm
from conftest import REPO_ROOT, run_clis, write_dataset
from libtraffic.data.synthetic import write_synthetic_dataset

SMALL = ["--max_epoch", "1", "--hidden_size", "8", "--input_window", "3", "--output_window", "3", "--batch_size", "32"]
STEPS = 200


def readings(steps: int = STEPS, nodes: int = 3) -> np.ndarray:
    return 50.0 + np.arange(steps * nodes, dtype=np.float64).reshape(steps, nodes) % 7


def user_error(out: subprocess.CompletedProcess, *patterns: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.stderr.startswith("Error: ") and out.stderr.count("Error: ") == 1, out.stderr
    for pattern in patterns:
        assert re.search(pattern, out.stderr), f"{pattern!r} not in: {out.stderr}"
    return out.stderr


def config(workdir: Path, dataset: str = "D", **flags: str) -> ConfigParser:
    return ConfigParser("traffic_state_pred", "GRU", dataset, other_args=flags)


# ----- 2 and 6: settings checked by their meaning, one table (config/ranges.py) -----

@pytest.mark.parametrize("flags, pattern", [
    ({"max_grad_norm": "-1"}, r"max_grad_norm must be > 0 .*got -1.0 \(from --max_grad_norm\)"),
    ({"max_grad_norm": "0"}, r"max_grad_norm must be > 0"),
    ({"lr_decay_ratio": "-1"}, r"lr_decay_ratio must be > 0 .*negative"),
    ({"lr_eta_min": "-1"}, r"lr_eta_min must be >= 0"),
    ({"teacher_forcing_ratio": "1.5"}, r"teacher_forcing_ratio must be in \[0, 1\]"),
    ({"teacher_forcing_ratio": "-0.1"}, r"teacher_forcing_ratio must be in \[0, 1\]"),
    ({"lr_beta1": "2"}, r"lr_beta1 must be in \[0, 1\)"),
    ({"lr_epsilon": "-1"}, r"lr_epsilon must be >= 0"),
    ({"lr_momentum": "-0.5"}, r"lr_momentum must be >= 0"),
    ({"dropout": "1"}, r"dropout must be in \[0, 1\)"),
])
def test_out_of_range_settings_are_refused_by_meaning(make_dataset, flags: dict, pattern: str) -> None:
    make_dataset("D", readings())
    with pytest.raises(LibTrafficError, match=pattern):
        config(Path.cwd(), **flags)


def test_in_range_edges_are_accepted(make_dataset) -> None:
    make_dataset("D", readings())
    cfg = config(Path.cwd(), teacher_forcing_ratio="1", lr_momentum="0", lr_eta_min="0", lr_beta1="0")
    assert cfg["teacher_forcing_ratio"] == 1.0 and cfg["lr_beta1"] == 0.0


def test_a_sampled_value_out_of_range_fails_like_a_typed_one(make_dataset) -> None:
    make_dataset("D", readings())
    with pytest.raises(LibTrafficError, match=r"dropout must be in \[0, 1\) .*got 1.5 \(from search space\)"):
        config(Path.cwd()).with_overrides({"dropout": 1.5})


@pytest.mark.parametrize("info, flags, pattern", [
    ({"input_window": "12"}, {}, r"'12' for 'input_window' \(raw_data/D/config.json\): expected an integer"),
    ({"input_window": "12"}, {"input_window": "3"}, r"'12' for 'input_window' \(raw_data/D/config.json\)"),
    ({"weight_adj_epsilon": "0.1"}, {}, r"'0.1' for 'weight_adj_epsilon' .*write a number without quotes"),
    ({"calculate_weight_adj": "false"}, {}, r"'false' for 'calculate_weight_adj' .*true or false without quotes"),
])
def test_string_values_in_a_dataset_config_are_refused(make_dataset, info: dict, flags: dict, pattern: str) -> None:
    make_dataset("D", readings(), info=info)
    with pytest.raises(LibTrafficError, match=pattern):
        config(Path.cwd(), **flags)


def test_a_dataset_config_cannot_retype_a_setting(make_dataset) -> None:
    """Types come from our defaults: a flag is read as a number even when the dataset file is wrong."""
    make_dataset("D", readings(), info={"input_window": 6})
    assert config(Path.cwd(), input_window="3")["input_window"] == 3


# ----- 6 and 7: JSON files in other encodings, with a BOM, or of the wrong shape -----

def test_a_config_file_with_a_byte_order_mark_is_read(make_dataset) -> None:
    make_dataset("D", readings())
    Path("bom.json").write_bytes(b"\xef\xbb\xbf" + b'{"hidden_size": 7}')
    assert ConfigParser("traffic_state_pred", "GRU", "D", config_file="bom")["hidden_size"] == 7


def test_a_config_file_that_is_not_utf8_is_refused_naming_the_byte(make_dataset) -> None:
    make_dataset("D", readings())
    Path("latin.json").write_bytes(b'{\n"exp_id": "caf\xe9"}')
    with pytest.raises(LibTrafficError, match=r"latin.json is not UTF-8 text: byte 0xe9 at line 2 .*save it again as UTF-8"):
        ConfigParser("traffic_state_pred", "GRU", "D", config_file="latin")


def test_a_settings_file_that_is_a_list_is_refused(workdir: Path) -> None:
    from libtraffic.results import SETTINGS_FILE, read_settings

    (workdir / SETTINGS_FILE).write_text("[]")
    with pytest.raises(LibTrafficError, match=r"holds a JSON list, not the object hyper_tune.py writes"):
        read_settings(workdir)


def test_json_nested_too_deeply_is_refused(workdir: Path) -> None:
    from libtraffic.utils.jsonio import load_json

    (workdir / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(LibTrafficError, match="nested too deeply"):
        load_json(workdir / "deep.json", "space file")


# ----- 5 and 6: lr_lambda and schedulers -----

@pytest.mark.parametrize("text, pattern", [
    ("min(epoch)", r"min\(\) takes two or more arguments, got 1"),
    ("abs(1, 2)", r"abs\(\) takes one argument, got 2"),
    ("max(epoch, abs())", r"abs\(\) takes one argument, got 0"),
])
def test_lr_lambda_functions_with_a_wrong_number_of_arguments(text: str, pattern: str) -> None:
    from libtraffic.executor.optim import lr_lambda_from_text

    with pytest.raises(LibTrafficError, match=pattern):
        lr_lambda_from_text(text, max_epoch=5)


def test_lr_lambda_check_costs_the_same_for_any_max_epoch() -> None:
    """max_epoch 10**9 used to evaluate the expression 10**9 times before training."""
    import time

    from libtraffic.executor.optim import lr_lambda_from_text

    start = time.process_time()
    factor = lr_lambda_from_text("0.9 ** epoch", max_epoch=10**9)
    assert time.process_time() - start < 2
    assert factor(3) == pytest.approx(0.9 ** 3)
    # An expression that fails only at a late epoch is still found up front, or when reached.
    with pytest.raises(LibTrafficError, match=r"gives -1.0 at epoch 999999999"):
        lr_lambda_from_text("1 - 2 * (epoch // 999999999)", max_epoch=10**9)
    late = lr_lambda_from_text("1 / abs(epoch - 123457)", max_epoch=10**9)
    with pytest.raises(LibTrafficError, match="cannot be computed at epoch 123457: it divides by zero"):
        late(123457)


def test_plateau_factor_of_one_or_more_is_refused(make_dataset) -> None:
    from torch import nn

    from libtraffic.executor.optim import build_optimizer, build_scheduler

    make_dataset("D", readings())
    cfg = config(Path.cwd(), lr_decay="true", lr_scheduler="reducelronplateau", lr_decay_ratio="1.5")
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    with pytest.raises(LibTrafficError, match=r"lr_decay_ratio is 1.5, but ReduceLROnPlateau .* must be below 1"):
        build_scheduler(optimizer, cfg)


# ----- 3: nothing lost; the report names a damaged file -----

@pytest.mark.parametrize("damage, note", [
    ("empty_csv", r"test metrics file .*\.csv is damaged"),
    ("npz_without_truth", r"predictions file .*\.npz is damaged \(it has no truth array\)"),
    ("empty_npz", r"predictions file .*\.npz is damaged"),
])
def test_the_report_names_a_damaged_file(workdir: Path, damage: str, note: str) -> None:
    from libtraffic.report.experiment import load_experiment
    from libtraffic.report.synthetic import write_synthetic_experiment
    from libtraffic.utils import paths

    folder = paths.experiment_dir("synth")
    write_synthetic_experiment(folder, trials=3, max_epoch=2)
    evaluate = folder / "evaluate_cache"
    (csv,), (npz,) = evaluate.glob("*.csv"), evaluate.glob("*.npz")
    if damage == "empty_csv":
        csv.write_text("")
    elif damage == "npz_without_truth":
        np.savez(npz, prediction=np.zeros((2, 3, 4, 1)))
    else:
        npz.write_bytes(b"")
    exp = load_experiment("synth")
    assert any(re.search(note, text) for text in exp.notes), exp.notes
    assert (exp.metrics is None) == (damage == "empty_csv") and (exp.predictions is None) == (damage != "empty_csv")


def test_evaluation_file_names_cannot_collide(workdir: Path) -> None:
    from libtraffic.evaluator import TrafficStateEvaluator

    evaluator = TrafficStateEvaluator({"metrics": ["masked_MAE"], "output_window": 1, "evaluator_mode": "single",
                                       "save_mode": ["csv", "json"], "model": "GRU", "dataset": "D",
                                       "eval_mask_val": 0.0})
    names = [evaluator.reserve_name(workdir) for _ in range(3)]
    assert len(set(names)) == 3
    assert re.fullmatch(r"\d{4}(_\d\d){5}_GRU_D", names[0])  # LibCity's name when it is free
    assert sorted(p.name for p in workdir.iterdir()) == sorted(f"{n}.csv" for n in names)


def test_huge_readings_are_scored_in_float64() -> None:
    """Readings near 1e31 square beyond float32's range: the MSE must not be inf."""
    import torch

    from libtraffic.evaluator import TrafficStateEvaluator

    evaluator = TrafficStateEvaluator({"metrics": ["masked_MSE", "masked_MAE"], "output_window": 1, "evaluator_mode": "single",
                                       "save_mode": ["csv"], "model": "GRU", "dataset": "D", "eval_mask_val": 0.0})
    truth = torch.full((2, 1, 1, 1), 1e31)
    evaluator.collect({"y_true": truth, "y_pred": truth * 0.5})
    result = evaluator.evaluate()
    assert result["masked_MSE@1"] == pytest.approx(0.25e62, rel=1e-5) and np.isfinite(result["masked_MSE@1"])


# ----- 2: data that would give a clean-looking wrong number -----

def test_log_scaler_on_readings_below_minus_one_is_refused(make_dataset) -> None:
    from libtraffic.data.prepared import prepare_data

    make_dataset("D", readings() - 60)
    with pytest.raises(LibTrafficError, match=r"scaler 'log' turns \d+ reading\(s\) of D.dyna into NaN .*e\.g\. -10"):
        prepare_data(config(Path.cwd(), scaler="log", input_window="3", output_window="3"))


def test_a_validation_split_without_valid_readings_is_refused(make_dataset) -> None:
    from libtraffic.data.prepared import prepare_data

    values = readings()
    values[130:175] = 0  # 194 samples: train 136 (targets from step 3), valid 19 (targets at steps 139..160)
    make_dataset("D", values)
    with pytest.raises(LibTrafficError, match=r"The validation split has no valid reading: every target reading from "
                                              r"2012-03-01T11:35:00 to 2012-03-01T13:20:00 \(steps 139..160 of D.dyna\)"):
        prepare_data(config(Path.cwd(), input_window="3", output_window="3"))


def test_the_dataset_cache_is_keyed_on_content_not_mtime(make_dataset) -> None:
    """An edit that keeps the size and mtime (cp -p, rsync) must not reuse the old cache."""
    import os

    from libtraffic.data.prepared import prepare_data

    folder = make_dataset("D", readings())
    cfg = config(Path.cwd(), input_window="3", output_window="3", scaler="none")
    first = prepare_data(cfg)
    dyna = folder / "D.dyna"
    stat = dyna.stat()
    text = dyna.read_text()
    edited = text.replace(",50.0\n", ",59.0\n", 1)  # the first reading, same length
    assert len(edited) == len(text) and edited != text
    dyna.write_text(edited)
    os.utime(dyna, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = prepare_data(cfg)
    assert second.cache_key != first.cache_key
    assert second.data[0, 0, 0] == 59.0 and first.data[0, 0, 0] == 50.0


# ----- 1: no code runs from a file we read -----

def _h5(path: Path, frame) -> Path:
    frame.to_hdf(path, key="df")
    return path


def test_dcrnn_h5_object_columns_are_refused_and_unpickle_no_code(workdir: Path) -> None:
    from fractions import Fraction

    import pandas as pd

    from libtraffic.data.convert.dcrnn import read_h5, read_speeds

    index = pd.date_range("2012-03-01", periods=6, freq="5min")
    plain = _h5(workdir / "objects.h5", pd.DataFrame(np.ones((6, 2)), index=index, columns=["1", "2"]).astype(object))
    with pytest.raises(LibTrafficError, match=r"objects.h5 holds pickled Python objects \(an object column"):
        read_speeds(plain)
    named = pd.DataFrame({"1": [Fraction(1, 3)] * 6, "2": [1.0] * 6}, index=index)
    path = _h5(workdir / "named.h5", named)
    with pytest.raises(LibTrafficError, match=r"named.h5 holds pickled Python objects .* would import numpy"):
        read_h5(path)
    good = _h5(workdir / "good.h5", pd.DataFrame(np.ones((6, 2)), index=index, columns=["1", "2"]))
    assert read_h5(good).shape == (6, 2)  # the index frequency (a pickled pandas offset) is allowed


def test_dcrnn_h5_with_a_code_carrying_attribute_is_refused_and_runs_nothing(workdir: Path) -> None:
    import pandas as pd
    import tables

    from libtraffic.data.convert.dcrnn import read_h5

    index = pd.date_range("2012-03-01", periods=6, freq="5min")
    path = _h5(workdir / "evil.h5", pd.DataFrame(np.ones((6, 2)), index=index, columns=["1", "2"]))
    marker = workdir / "code_ran"
    payload = f"cbuiltins\nexec\n(Vopen({str(marker)!r}, 'w').close()\ntR.".encode()
    with tables.open_file(path, mode="a") as handle:
        handle.root.df._v_attrs.pandas_type = np.bytes_(payload)
    with pytest.raises(LibTrafficError, match=r"evil.h5 holds pickled Python objects .* would import builtins.exec"):
        read_h5(path)
    assert not marker.exists()


# ----- the CLI: each case through run_model.py, exit 2 with one message, or a run that works -----

CLI_CASES: dict[str, list[str]] = {
    "long_id": ["--exp_id", "x" * 240],
    "longer_id": ["--exp_id", "y" * 300],
    "huge_model": ["--exp_id", "huge", "--hidden_size", "100000000"],
    "huge_batch": ["--exp_id", "batch", "--batch_size", "100000"],
    "neg_log": ["--exp_id", "neglog", "--dataset", "NEG", "--scaler", "log"],
    "trained": ["--exp_id", "trained", "--scaler", "standard"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("trust_core")
    write_synthetic_dataset(root / "raw_data", "TINY", num_nodes=4, num_days=2, seed=5)
    write_dataset(root / "raw_data", "NEG", readings() - 60)
    runs = [(root, [*SMALL, "--dataset", "TINY", *extra]) for extra in CLI_CASES.values()]
    results = dict(zip(CLI_CASES, run_clis(REPO_ROOT, runs)))
    evaluate = ["--exp_id", "trained", "--train", "false", *SMALL, "--dataset", "TINY"]
    later = {"other_scaler": [*evaluate, "--scaler", "minmax01"], "other_rate": [*evaluate, "--train_rate", "0.6"],
             "eval_a": [*evaluate, "--scaler", "standard"], "eval_b": [*evaluate, "--scaler", "standard"]}
    results.update(zip(later, run_clis(REPO_ROOT, [(root, args) for args in later.values()])))
    for out in results.values():
        out.cwd = root
    return results


@pytest.mark.parametrize("case, pattern", [
    ("long_id", r"--exp_id is 240 characters long; keep it to 100 or fewer"),
    ("longer_id", r"--exp_id is 300 characters long"),
    ("huge_model", r"Building model GRU ran out of memory \(it tried to allocate [\d,.]+ GiB\).*hidden_size 100000000"),
    ("neg_log", r"The scaler 'log' turns \d+ reading\(s\) of NEG.dyna into NaN or infinity"),
    ("other_scaler", r"(?s)--train false with other data settings .*--scaler: checkpoint 'standard', this run 'minmax01'"),
    ("other_rate", r"--train_rate: checkpoint 0.7, this run 0.6"),
])
def test_cli_refuses_with_one_message(cli, case: str, pattern: str) -> None:
    user_error(cli[case], pattern)


def test_cli_caps_a_batch_size_above_the_training_samples(cli) -> None:
    out = cli["huge_batch"]
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"batch_size 100000 is larger than the \d+ training samples; using \d+", out.stdout)


def test_two_evaluations_at_once_keep_both_results(cli) -> None:
    assert cli["eval_a"].returncode == 0 and cli["eval_b"].returncode == 0, cli["eval_a"].stderr[-2000:]
    evaluate = cli["eval_a"].cwd / "libtraffic/cache/trained/evaluate_cache"
    assert len([p for p in evaluate.glob("*.csv") if p.stat().st_size]) == 3  # training's evaluation and the two
    assert len(list(evaluate.glob("*_predictions.npz"))) == 3
    assert not list(evaluate.glob(".*.tmp"))


# ----- 6 and 7: .ext files -----

def _ext(workdir: Path, rows: list[str]) -> Path:
    path = workdir / "D.ext"
    path.write_text("ext_id,time,temp\n" + "".join(f"{i},{row}\n" for i, row in enumerate(rows)))
    return path


def test_ext_duplicate_time_is_refused(workdir: Path) -> None:
    from libtraffic.data.atomic_reader import read_ext

    times = np.array(["2012-03-01T00:00:00", "2012-03-01T00:05:00"], dtype="datetime64[s]")
    path = _ext(workdir, ["2012-03-01T00:00:00Z,1", "2012-03-01T00:05:00Z,2", "2012-03-01T00:05:00Z,3"])
    with pytest.raises(LibTrafficError, match=r"time 2012-03-01T00:05:00 has two rows \(the second at line 4\)"):
        read_ext(path, times, [])


def test_empty_ext_cells_are_missing_not_nan(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from libtraffic.data.atomic_reader import read_ext

    times = np.array(["2012-03-01T00:00:00", "2012-03-01T00:05:00"], dtype="datetime64[s]")
    path = _ext(workdir, ["2012-03-01T00:00:00Z,", "2012-03-01T00:05:00Z,2"])
    values = read_ext(path, times, [])
    assert values.tolist() == [[0.0], [2.0]]
    assert "1 empty or non-finite external value(s) treated as missing" in caplog.text


# ----- 7: a model without a graph never complains about the graph -----

@pytest.mark.parametrize("model, fails", [("GRU", False), ("GWNET", True)])
def test_one_sensor_graph_matters_only_to_a_graph_model(make_dataset, model: str, fails: bool) -> None:
    from libtraffic.pipeline.build import build_run

    make_dataset("ONE", readings(nodes=1), rel=[(0, 0, 100.0)], info={"calculate_weight_adj": True})
    cfg = ConfigParser("traffic_state_pred", model, "ONE", other_args={"input_window": "3", "output_window": "3",
                                                                       "exp_id": "one", "gpu": "false"})
    if fails:
        with pytest.raises(LibTrafficError, match=r"the 1 finite weight\(s\) of the 1-sensor graph are all equal.*"
                                                  r"This model uses the sensor graph"):
            build_run(cfg)
    else:
        assert build_run(cfg).data_feature["num_nodes"] == 1


@pytest.mark.parametrize("text", ["from,to,cost\n", ""])
def test_an_empty_distances_csv_says_it_has_no_edges(workdir: Path, text: str) -> None:
    from libtraffic.data.convert.readers import read_edges

    (workdir / "PEMS04.csv").write_text(text)
    with pytest.raises(LibTrafficError, match=r"PEMS04.csv (has no edge rows|is empty)"):
        read_edges(workdir / "PEMS04.csv")


def test_hyper_tune_refuses_a_long_exp_id_up_front(tmp_path: Path) -> None:
    import sys

    from conftest import SUBPROCESS_ENV

    write_synthetic_dataset(tmp_path / "raw_data", "TINY", num_nodes=4, num_days=2, seed=5)
    out = warm.run([sys.executable, str(REPO_ROOT / "hyper_tune.py"), "--dataset", "TINY", "--exp_id", "z" * 240],
                         cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    user_error(out, r"--exp_id is 240 characters long; keep it to 100 or fewer")
    assert not (tmp_path / "libtraffic").exists()


def test_a_failed_checkpoint_write_leaves_the_previous_file_whole(workdir: Path) -> None:
    """A write that fails midway (full disk, Ctrl-C, an unpicklable value) never truncates the file."""
    import logging
    from types import SimpleNamespace

    from libtraffic.executor import TrafficStateExecutor

    path = workdir / "model_cache" / "GRU_D_epoch3.tar"
    path.parent.mkdir()
    path.write_bytes(b"the previous checkpoint")
    executor = SimpleNamespace(logger=logging.getLogger("test"))
    with pytest.raises(Exception):
        TrafficStateExecutor.save_model(executor, path, {"epoch": 3, "unsaveable": lambda: 0})
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
