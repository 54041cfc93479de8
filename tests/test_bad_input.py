"""User mistakes end with one clear message naming the file or flag: exit code 2 and no traceback
from run_model.py (a representative few, as subprocesses run at once), LibTrafficError from
libtraffic.pipeline.run_model for the rest."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from libtraffic.pipeline import run_model
from libtraffic.utils.errors import LibTrafficError

from conftest import REPO_ROOT, dyna_text, hand_values, run_clis, write_dataset

VALUES = hand_values(20, 3)
GEO = [10, 11, 12]
SMALL = {"input_window": 3, "output_window": 2, "batch_size": 4, "max_epoch": 1, "hidden_size": 4,
         "exp_id": "bad", "log_level": "WARNING"}


def good_dyna(**kwargs) -> list[str]:
    return dyna_text(VALUES, GEO, ["traffic_speed"], **kwargs).splitlines(keepends=True)


def bad_dataset(root: Path, name: str, lines: list[str] | None = None, **kwargs) -> Path:
    return write_dataset(root, name, VALUES, dyna="".join(lines) if lines is not None else None, **kwargs)


def with_value(lines: list[str], line: int, value: str) -> list[str]:
    """``lines`` with the reading of (1-based) file line ``line`` replaced."""
    lines = list(lines)
    fields = lines[line - 1].rstrip("\n").split(",")
    fields[-1] = value
    lines[line - 1] = ",".join(fields) + "\n"
    return lines


def us_times(lines: list[str]) -> list[str]:
    """The .dyna lines with times written as 03/01/2012 00:00 (month/day/year), not ISO 8601."""
    return [lines[0]] + [re.sub(r"(\d{4})-(\d\d)-(\d\d)T(\d\d:\d\d):00Z", r"\2/\3/\1 \4", line) for line in lines[1:]]


# ----- as the user sees them: run_model.py subprocesses -----

CLI_CASES = {
    "unknown_task": (["--task", "traffc_state_pred", "--dataset", "OK"],
                     [r"Unknown task 'traffc_state_pred' \(from --task\)\. Did you mean 'traffic_state_pred'\?"]),
    "metr_la_missing": (["--dataset", "METR_LA"],
                        [r"Dataset 'METR_LA' not found: the folder .*raw_data/METR_LA does not exist",
                         r"METR_LA\.geo, METR_LA\.rel, METR_LA\.dyna and config\.json",
                         r"python -m libtraffic\.data\.synthetic --dataset METR_LA",
                         r"--dataset SYNTH_LA"]),
    "malformed_config_json": (["--dataset", "BADJSON"],
                              [r"BADJSON/config\.json is not valid JSON: Expecting ',' delimiter at line 3, column 3"]),
    "non_numeric_reading": (["--dataset", "TEXT", "--input_window", "3", "--output_window", "2"],
                            [r"TEXT\.dyna: column 'traffic_speed' has a non-numeric value 'fast' at data row 5 \(line 6\)"]),
    "batch_size_abc": (["--dataset", "OK", "--batch_size", "abc"], [r"argument --batch_size: invalid int value: 'abc'"]),
    "unknown_flag": (["--dataset", "OK", "--hiden_size", "16"],
                     [r"Unknown config key 'hiden_size' \(--hiden_size\)\. Did you mean 'hidden_size'\?"]),
    "us_style_times": (["--dataset", "USTIME"],
                       [r"USTIME\.dyna: line 2 has the time '03/01/2012 00:00', which is not an ISO 8601 time",
                        r"2012-03-01T00:00:00Z", r"Convert the column"]),
    "geo_entity_without_rows": (["--dataset", "GEOX"],
                                [r"GEOX\.dyna: 1 entity of the \.geo file \(99\) has no rows in \.dyna",
                                 r"remove the entity from the \.geo file"]),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cwd = tmp_path_factory.mktemp("bad_cli")
    raw = cwd / "raw_data"
    write_dataset(raw, "OK", VALUES)
    write_dataset(raw, "BADJSON", VALUES, config_text='{\n  "info": {"output_dim": 1}\n  "x": 1\n}\n')
    bad_dataset(raw, "TEXT", with_value(good_dyna(), 6, "fast"))
    bad_dataset(raw, "USTIME", us_times(good_dyna()))
    bad_dataset(raw, "GEOX", good_dyna())
    with open(raw / "GEOX" / "GEOX.geo", "a") as geo:
        geo.write('99,Point,"[-118.9, 34.1]"\n')
    results = run_clis(REPO_ROOT, [(cwd, args) for args, _ in CLI_CASES.values()])
    return {"cwd": cwd, **dict(zip(CLI_CASES, results))}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_reports_bad_input(cli_results: dict, case: str) -> None:
    result = cli_results[case]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for pattern in CLI_CASES[case][1]:
        assert re.search(pattern, result.stderr), (pattern, result.stderr)
    assert "Epoch [" not in result.stdout


def test_cli_errors_write_no_experiment(cli_results: dict) -> None:
    cache = cli_results["cwd"] / "libtraffic" / "cache"
    folders = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
    assert [f for f in folders if f != "dataset_cache"] == []


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "maybe"], "argument --gpu: expected true or false, got 'maybe'"),
    (["--max_epoch", "1.5"], "argument --max_epoch: invalid int value: '1.5'"),
    (["--train", "sometimes"], "argument --train: expected true or false, got 'sometimes'"),
    (["--learning_rate", "fast"], "argument --learning_rate: invalid float value: 'fast'"),
])
def test_typed_flags_are_checked_by_the_parser(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                               argv: list[str], message: str) -> None:
    """Flag values argparse types itself fail before any pipeline code runs (exit 2, usage)."""
    import run_model as cli

    monkeypatch.setattr(sys, "argv", ["run_model.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: run_model.py" in err


# ----- the same checks in-process -----


def fails(dataset: str, match: str, **overrides) -> None:
    with pytest.raises(LibTrafficError, match=match):
        run_model(dataset_name=dataset, other_args={**SMALL, **overrides})


def test_unknown_model(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "OK", VALUES)
    with pytest.raises(LibTrafficError, match=r"Unknown model 'GRX' \(from --model\)\. Did you mean 'GRU'\?"):
        run_model(model_name="GRX", dataset_name="OK", other_args=SMALL)


def test_unknown_dataset_folder(workdir: Path) -> None:
    fails("NOPE", r"Dataset 'NOPE' not found: the folder .*raw_data/NOPE does not exist")


def test_missing_config_json(workdir: Path) -> None:
    folder = write_dataset(workdir / "raw_data", "NOCFG", VALUES)
    (folder / "config.json").unlink()
    fails("NOCFG", r"Dataset 'NOCFG' has no config\.json in .*raw_data/NOCFG")


@pytest.mark.parametrize("missing", [".geo", ".rel", ".dyna"])
def test_missing_atomic_file(workdir: Path, missing: str) -> None:
    folder = write_dataset(workdir / "raw_data", "HOLE", VALUES)
    (folder / f"HOLE{missing}").unlink()
    fails("HOLE", rf"Dataset 'HOLE' in .*raw_data/HOLE is missing HOLE\{missing}\. A dataset needs")


def test_malformed_config_file(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "OK", VALUES)
    (workdir / "mine.json").write_text('{"max_epoch": 2,\n "batch_size": 4,\n}')
    with pytest.raises(LibTrafficError, match=r"config file .*mine\.json is not valid JSON: .* at line 3, column 1"):
        run_model(dataset_name="OK", config_file="mine", other_args=SMALL)


def test_missing_config_file(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "OK", VALUES)
    with pytest.raises(LibTrafficError, match=r"Config file 'absent' not found: looked for .*absent\.json"):
        run_model(dataset_name="OK", config_file="absent", other_args=SMALL)


def test_data_col_not_in_dyna(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "COLS", VALUES, info={"data_col": ["speed"]})
    fails("COLS", r"COLS\.dyna has no data column 'speed' \(data_col in config\.json\)\. "
                  r"Its columns are dyna_id, type, time, entity_id, traffic_speed")


def test_non_numeric_reading(workdir: Path) -> None:
    bad_dataset(workdir / "raw_data", "TEXT", with_value(good_dyna(), 30, "n/a?"))
    fails("TEXT", r"TEXT\.dyna: column 'traffic_speed' has a non-numeric value 'n/a\?' at data row 29 \(line 30\)")


def test_row_count_not_a_multiple(workdir: Path) -> None:
    bad_dataset(workdir / "raw_data", "ROWS", good_dyna()[:-1])
    fails("ROWS", r"ROWS\.dyna has 59 rows, not a multiple of the 3 entities in \.geo")


@pytest.mark.parametrize("name, edits, match", [
    # three rows of entity 10 relabelled as entity 11
    ("UNEVEN", {2: (",10,", ",11,"), 3: (",10,", ",11,"), 4: (",10,", ",11,")},
     r"UNEVEN\.dyna: entity 10 has 17 rows but 20 were expected \(60 rows / 3 entities\)"),
    ("GHOST", {25: (",11,", ",99,")}, r"GHOST\.dyna: entity_id 99 \(line 25\) is not in the \.geo file"),
    ("WHEN", {8: ("2012-03-01T00:30:00Z", "yesterday")}, r"WHEN\.dyna: line 8 has the time 'yesterday', which is not an ISO 8601 time"),
])
def test_edited_dyna_lines(workdir: Path, name: str, edits: dict, match: str) -> None:
    lines = good_dyna()
    for line, (old, new) in edits.items():
        assert old in lines[line - 1]
        lines[line - 1] = lines[line - 1].replace(old, new)
    bad_dataset(workdir / "raw_data", name, lines)
    fails(name, match)


def test_irregular_time_steps(workdir: Path) -> None:
    seconds = 300 * np.arange(20)
    seconds[10:] += 300  # a 10-minute gap after step 9
    bad_dataset(workdir / "raw_data", "GAP", good_dyna(seconds=seconds))
    fails("GAP", r"GAP\.dyna: irregular time steps: 2012-03-01T00:45:00 is followed by 2012-03-01T00:55:00 "
                 r"\(600 s\), but time_intervals is 300 s")


def test_wrong_time_intervals(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "FIVE", VALUES, info={"time_intervals": 600})
    fails("FIVE", r"irregular time steps: .* \(300 s\), but time_intervals is 600 s")


def test_entities_on_different_timelines(workdir: Path) -> None:
    seconds = 300 * np.arange(20)[:, None] + np.array([0, 300, 0])[None, :]
    bad_dataset(workdir / "raw_data", "SHIFT", good_dyna(seconds=seconds))
    fails("SHIFT", r"SHIFT\.dyna: entities do not share one timeline \(step 0: 2012-03-01T00:00:00 vs 2012-03-01T00:05:00\)")


def test_empty_dyna(workdir: Path) -> None:
    bad_dataset(workdir / "raw_data", "EMPTY", [])
    fails("EMPTY", r"EMPTY\.dyna is empty")


def test_output_dim_beyond_columns(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "DIMS", VALUES, info={"output_dim": 2})
    fails("DIMS", r"output_dim is 2 but the \.dyna file has 1 data column")


def test_output_dim_of_the_wrong_type(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "ANYDIM", VALUES, info={"output_dim": None})
    fails("ANYDIM", r"output_dim is 'abc' but the \.dyna file has 1 data column", output_dim="abc")


@pytest.mark.parametrize("overrides, match", [
    ({"scaler": "standart"}, r"Unknown scaler 'standart' \(from config key 'scaler'\)\. Did you mean 'standard'\?"),
    ({"train_rate": 0.95, "eval_rate": 0.1}, r"train_rate \(0\.95\) and eval_rate \(0\.1\) must be in \(0, 1\)"),
    ({"input_window": 0}, r"input_window must be a positive integer, got 0"),
    ({"metrics": ["masked_MAE", "RMSEE"]}, r"Unknown metric 'RMSEE' \(from config key 'metrics'\)\. Did you mean 'RMSE'\?"),
    ({"set_weight_link_or_dist": "distance"}, r"set_weight_link_or_dist must be 'link' or 'dist', got 'distance'"),
    ({"log_every": 0}, r"log_every must be a positive integer \(log every N epochs\), got 0"),
])
def test_bad_setting_values(workdir: Path, overrides: dict, match: str) -> None:
    write_dataset(workdir / "raw_data", "OK", VALUES)
    fails("OK", match, **overrides)


def test_nothing_is_overwritten_on_a_rerun(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "OK", VALUES)
    run_model(dataset_name="OK", other_args=SMALL)
    model_file = workdir / "libtraffic/cache/bad/model_cache/GRU_OK.m"
    stamp = model_file.stat().st_mtime_ns
    fails("OK", r"Experiment folder .*libtraffic/cache/bad already exists")
    assert model_file.stat().st_mtime_ns == stamp
    # Evaluating it with other model settings names the settings it was trained with.
    with pytest.raises(LibTrafficError, match=r"GRU_OK\.m does not fit this run's settings; it was trained with "
                                              r"--hidden_size 4 --input_window 3"):
        run_model(dataset_name="OK", train=False, other_args={**SMALL, "hidden_size": 5, "input_window": 4})
    assert model_file.stat().st_mtime_ns == stamp


# ----- messages that name the file, the line or the entity -----


def test_us_style_times(workdir: Path) -> None:
    bad_dataset(workdir / "raw_data", "USTIME", us_times(good_dyna()))
    fails("USTIME", r"USTIME\.dyna: line 2 has the time '03/01/2012 00:00', which is not an ISO 8601 time\. .*"
                    r"2012-03-01T00:00:00Z")


def test_empty_time_cell(workdir: Path) -> None:
    lines = good_dyna()
    fields = lines[6].split(",")
    fields[2] = ""
    lines[6] = ",".join(fields)
    bad_dataset(workdir / "raw_data", "NOTIME", lines)
    fails("NOTIME", r"NOTIME\.dyna: line 7 has an empty time\. .*Fill in the time of that row")


def test_header_only_dyna(workdir: Path) -> None:
    bad_dataset(workdir / "raw_data", "HEADER", good_dyna()[:1])
    fails("HEADER", r"HEADER\.dyna has a header but no data rows")


def test_geo_entity_without_readings(workdir: Path) -> None:
    folder = bad_dataset(workdir / "raw_data", "GEOX", good_dyna())
    with open(folder / "GEOX.geo", "a") as geo:
        geo.write('99,Point,"[-118.9, 34.1]"\n98,Point,"[-118.8, 34.1]"\n')
    fails("GEOX", r"GEOX\.dyna: 2 entities of the \.geo file \(99, 98\) have no rows in \.dyna")


@pytest.mark.parametrize("seconds", [0, -300])
def test_time_intervals_not_positive(workdir: Path, seconds: int) -> None:
    write_dataset(workdir / "raw_data", "TI", VALUES, info={"time_intervals": seconds})
    fails("TI", rf"time_intervals is {seconds} \(config\.json of TI\); it must be the positive number of seconds")


def test_data_col_as_a_string_is_one_column(workdir: Path) -> None:
    write_dataset(workdir / "raw_data", "ONECOL", VALUES, info={"data_col": "traffic_speed"})
    result = run_model(dataset_name="ONECOL", other_args={**SMALL, "exp_id": "onecol"})
    assert np.isfinite(result["masked_MAE@1"])
