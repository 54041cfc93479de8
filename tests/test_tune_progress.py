"""What hyper_tune prints while it runs (issue 17): durations, the time-left estimate, Ray's table without
/tmp/ray paths, the final table's columns. End-to-end checks of the per-trial lines are in test_tuning.py."""

from __future__ import annotations

import math

import pytest

from libtraffic.results import TrialRecord
from libtraffic.tune.finish import format_trials
from libtraffic.tune.progress import _our_folders, duration, time_left, value_text


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (41.6, "42 s"), (59.4, "59 s"), (60, "1 min 00 s"),
                                           (200, "3 min 20 s"), (3599, "59 min 59 s"), (7500, "2 h 05 min")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_value_text() -> None:
    assert value_text(0.0051157506) == "0.005116" and value_text(16) == "16" and value_text("adam") == "adam"
    assert value_text((5, 20)) == "[5, 20]"


def test_time_left_before_any_trial_finished_is_unknown() -> None:
    assert time_left([], [3.0], 4, 2) is None


def test_time_left_one_at_a_time() -> None:
    # mean 10 s; the running trial needs 10 - 4 = 6 s more, then 3 pending trials of 10 s, one after another
    assert time_left([8.0, 12.0], [4.0], 3, 1) == pytest.approx(36.0)


def test_time_left_shared_by_the_trials_running_at_once() -> None:
    # (10 - 2) + (10 - 6) + 2 pending x 10 = 32 s of work, 2 slots
    assert time_left([10.0], [2.0, 6.0], 2, 2) == pytest.approx(16.0)
    # more slots than trials left: the work left is shared by those trials only
    assert time_left([10.0], [], 1, 4) == pytest.approx(10.0)
    # a running trial past the mean needs nothing more by the estimate
    assert time_left([10.0], [25.0], 0, 1) == 0.0


def test_ray_staging_folder_becomes_ours_and_table_cells_keep_their_width() -> None:
    staging = "/tmp/ray/session_2026-12-04_11-43-45_276583_27040/artifacts/2026-12-04_11-43-59/hl1/driver_artifacts"
    row = f"| trial_00001 |            1 | {staging}/trial_00001/error.txt |"
    ours = "/home/u/libtraffic/cache/hyper_tune/hl1"
    fixed = _our_folders(row, [staging], ours)
    assert fixed.startswith(f"| trial_00001 |            1 | {ours}/trial_00001/error.txt ")
    assert len(fixed) == len(row) and "/tmp/ray" not in fixed and fixed.endswith(" |")


def _record(trial_id: str, status: str, best_epoch: int | None, node: str, metric: str = "loss") -> TrialRecord:
    return TrialRecord(trial_id=trial_id, config={"hidden_size": 8}, seed=1, status=status,
                       epochs_run=0 if best_epoch is None else 2, best_epoch=best_epoch,
                       best_loss=math.nan if best_epoch is None else 2.5, metric=metric,
                       best_value=math.nan if best_epoch is None else 3.25, node=node)


def test_final_table_names_its_columns_as_the_trial_lines() -> None:
    records = [_record("trial_00000", "DONE", 1, "a1b2c3d4e5"), _record("trial_00001", "ERROR", None, "")]
    table = format_trials(records, ["hidden_size"])
    header, done, failed = table.splitlines()
    assert header.split() == ["trial", "hidden_size", "epochs", "best", "epoch", "best", "val", "loss", "status"]
    assert done.split()[3] == "1" and failed.split()[3] == "<NA>"  # whole epoch numbers, not 1.0 / NaN
    assert "node" not in header  # a failed trial without a node is not a second node
    by_metric = format_trials([_record("trial_00000", "DONE", 1, "n", metric="masked_MAE@12")], ["hidden_size"])
    assert "val loss at best epoch" in by_metric and "best val masked_MAE@12" in by_metric
    assert "best val loss" not in by_metric
