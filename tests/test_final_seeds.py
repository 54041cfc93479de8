"""The durable record of --final_seeds runs (hyper_tune_final_runs.json) and the dry run's words on them.

The end-to-end interrupt-and-resume test is in test_tuning_resume.py; these check, on real files, which saved
runs a resume may reuse and that a new experiment never reads the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libtraffic.tune.final_runs import FinalRun, FinishedRuns, describe
from libtraffic.utils.errors import LibTrafficError

CONFIG = {"learning_rate": 0.005, "hidden_size": 64, "dropout": 0.1234567890123}
TEST = {"masked_MAE@1": 2.5, "masked_MAE@12": 3.75}


def saved(path: Path, *runs: dict) -> Path:
    path.write_text(json.dumps({"runs": list(runs)}))
    return path


def test_final_runs_resume_reuses_only_matching_finished_runs(tmp_path: Path) -> None:
    path = saved(tmp_path / "hyper_tune_final_runs.json",
                 {"trial_id": "t0", "config": CONFIG, "seed": 11, "test": TEST},
                 {"trial_id": "t0", "config": CONFIG, "seed": 12, "error": "RuntimeError: boom"},
                 {"trial_id": "t1", "config": CONFIG, "seed": 13, "test": TEST})
    finished = FinishedRuns(path, resume=True)
    assert finished.reusable(FinalRun(0, "t0", dict(CONFIG), 11)) == {"seed": 11, "test": TEST}
    assert finished.reusable(FinalRun(0, "t0", CONFIG, 12)) is None  # failed: runs again
    assert finished.reusable(FinalRun(0, "t0", CONFIG, 13)) is None  # another trial's seed
    assert finished.reusable(FinalRun(0, "t0", CONFIG | {"hidden_size": 32}, 11)) is None  # another configuration
    assert finished.reusable(FinalRun(1, "t1", CONFIG, 11)) is None
    assert finished.reusable(FinalRun(1, "t1", CONFIG, 13)) == {"seed": 13, "test": TEST}


def test_final_runs_file_of_a_new_experiment_is_never_read(tmp_path: Path) -> None:
    path = saved(tmp_path / "hyper_tune_final_runs.json",
                 {"trial_id": "t0", "config": CONFIG, "seed": 11, "test": TEST})
    finished = FinishedRuns(path, resume=False)
    assert finished.reusable(FinalRun(0, "t0", CONFIG, 11)) is None
    finished.write()  # the start of the final runs: the stale content is gone
    assert json.loads(path.read_text()) == {"runs": []}


def test_final_runs_are_saved_after_each_run_and_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "exp" / "hyper_tune_final_runs.json"
    first = FinishedRuns(path, resume=False)
    first.write()
    test = {"masked_MAE@1": 0.1 + 0.2, "masked_MAPE@1": float("nan")}
    first.save(FinalRun(0, "t0", CONFIG, 21), {"seed": 21, "test": test}, 12.5)
    first.save(FinalRun(0, "t0", CONFIG, 22), {"seed": 22, "error": "ValueError: nan loss"}, 0.25)
    assert [(run["seed"], run["wall_s"]) for run in json.loads(path.read_text())["runs"]] == [(21, 12.5), (22, 0.25)]
    assert not list(path.parent.glob("*.tmp"))
    again = FinishedRuns(path, resume=True)
    reused = again.reusable(FinalRun(0, "t0", CONFIG, 21))
    assert reused == {"seed": 21, "test": reused["test"]}  # what the results file holds for a run, no more
    assert reused["test"]["masked_MAE@1"] == 0.1 + 0.2  # the same float, bit for bit
    assert again.reusable(FinalRun(0, "t0", CONFIG, 22)) is None


def test_final_runs_resume_without_a_file_runs_everything(tmp_path: Path) -> None:
    finished = FinishedRuns(tmp_path / "hyper_tune_final_runs.json", resume=True)
    assert finished.reusable(FinalRun(0, "t0", CONFIG, 11)) is None


def test_final_runs_file_not_ours_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "hyper_tune_final_runs.json"
    path.write_text(json.dumps([{"seed": 1}]))
    with pytest.raises(LibTrafficError, match=r"is not one hyper_tune.py wrote .* delete it to run every final run"):
        FinishedRuns(path, resume=True)


def test_final_runs_dry_run_words() -> None:
    assert describe(3, 2, 8) == ("then --final_seeds 3 x --final_top 2 = 6 final run(s) (the best configurations "
                                 "retrained with fresh seeds, scored on the test split)")
    assert describe(4, 5, 2).startswith("then --final_seeds 4 x 2 configuration(s) = 8 final run(s)")
    assert describe(4, 5, 2).endswith("--final_top 5 asks for more configurations than there are trials")
