"""hyper_tune.py on bad input: one clear message, exit code 2, no traceback, no Ray started.

A handful of cases run the real CLI as subprocesses (each pays several seconds of imports, so the
selected ones run two at a time, started once per module); the rest call hyper_parameter()
in-process with Ray start-up and data preparation replaced by tripwires, so none can reach Ray.
"""

from __future__ import annotations

import ast
import json
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from tests import warm
from libtraffic.data.synthetic import write_synthetic_dataset
from libtraffic.tune import driver as tuning
from libtraffic.utils.errors import LibTrafficError

REPO_ROOT = Path(__file__).resolve().parent.parent
HYPER_TUNE = REPO_ROOT / "hyper_tune.py"
BASE_ARGS = ["--task", "traffic_state_pred", "--model", "GRU", "--dataset", "TINY"]
RAY_STARTED = "Started a local Ray instance"


def tutorial_without_comma() -> str:
    """sample_space_file.json with the comma after the max_epoch entry removed, as in LibCity's tutorial."""
    lines = (REPO_ROOT / "sample_space_file.json").read_text().splitlines()
    closing = next(i for i, line in enumerate(lines) if '"hidden_size"' in line) - 1
    assert lines[closing].strip() == "},"
    lines[closing] = lines[closing].replace("},", "}")
    return "\n".join(lines) + "\n"


def missing_comma_position() -> tuple[int, int]:
    """1-based line and column of the "hidden_size" key that follows the missing comma."""
    lines = tutorial_without_comma().splitlines()
    index = next(i for i, line in enumerate(lines) if '"hidden_size"' in line)
    return index + 1, lines[index].index('"hidden_size"') + 1


def make_workdir(folder: Path) -> Path:
    """A working directory with ./raw_data/TINY and ./sample_space_file.json, as a user would have."""
    folder.mkdir(parents=True, exist_ok=True)
    write_synthetic_dataset(folder / "raw_data", "TINY", num_nodes=4, num_days=2, seed=0)
    (folder / "sample_space_file.json").write_text((REPO_ROOT / "sample_space_file.json").read_text())
    return folder


# ----------------------------------------------------------------------------- subprocess cases


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    workdir: Path


def _setup_tutorial_typo(folder: Path) -> None:
    (folder / "typo.json").write_text(tutorial_without_comma())


def _setup_existing_experiment(folder: Path) -> None:
    existing = folder / "libtraffic" / "cache" / "hyper_tune" / "taken"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("user data")


def _setup_run_model_experiment(folder: Path) -> None:
    (folder / "libtraffic" / "cache" / "trained" / "model_cache").mkdir(parents=True)


BAD_SPACE = {"hidden_size": {"type": "choice", "list": [0, 8]}, "dropout": {"type": "uniform", "lower": 0.1, "upper": 1.5},
             "learner": {"type": "grid_search", "list": ["adam", "adamm"]}, "learning_rate": {"type": "choice", "list": [0.01]}}


def _setup_bad_space(folder: Path) -> None:
    (folder / "bad_space.json").write_text(json.dumps(BAD_SPACE))
    _setup_run_model_experiment(folder)


def _setup_header_only_dyna(folder: Path) -> None:
    dyna = folder / "raw_data" / "TINY" / "TINY.dyna"
    dyna.write_text(dyna.read_text().splitlines(keepends=True)[0])


def _setup_file_named_libtraffic(folder: Path) -> None:
    (folder / "libtraffic").write_text("a file in the way\n")


# case name -> (extra arguments, setup of the working directory)
CASES: dict[str, tuple[list[str], Callable[[Path], None] | None]] = {
    "default_space_file": (["--dry_run", "--num_samples", "3"], None),
    "malformed_json": (["--space_file", "typo"], _setup_tutorial_typo),
    "unknown_search_alg": (["--space_file", "sample_space_file", "--search_alg", "HyperOpts"], None),
    "gpu_per_trial": (["--space_file", "sample_space_file", "--gpu_per_trial", "1"], None),
    "existing_exp_id": (["--space_file", "sample_space_file", "--exp_id", "taken"], _setup_existing_experiment),
    "dry_run_seed0": (["--space_file", "sample_space_file", "--dry_run", "--num_samples", "4", "--seed", "0"], None),
    "dry_run_seed0_again": (["--space_file", "sample_space_file", "--dry_run", "--num_samples", "4", "--seed", "0"],
                            None),
    "dry_run_seed1": (["--space_file", "sample_space_file", "--dry_run", "--num_samples", "4", "--seed", "1"], None),
    "run_model_exp_id": (["--space_file", "sample_space_file", "--exp_id", "trained"], _setup_run_model_experiment),
    "dry_run_problems": (["--space_file", "bad_space", "--dry_run", "--exp_id", "trained"], _setup_bad_space),
    "dry_run_bad_dyna": (["--space_file", "sample_space_file", "--dry_run"], _setup_header_only_dyna),
    "unwritable_workdir": (["--space_file", "sample_space_file"], _setup_file_named_libtraffic),
    "unknown_metric": (["--space_file", "sample_space_file", "--metric", "masked_MEA", "--dry_run"], None),
    "dry_run_final_seeds": (["--space_file", "sample_space_file", "--dry_run", "--num_samples", "4", "--final_seeds",
                             "3", "--final_top", "2", "--exp_id", "finals"], None),
}
# test name -> the cases it reads (only the cases of selected tests are run)
USED_BY: dict[str, tuple[str, ...]] = {
    "test_cli_without_space_file_uses_libcitys_hyper_example": ("default_space_file",),
    "test_cli_malformed_json": ("malformed_json",),
    "test_cli_unknown_search_alg": ("unknown_search_alg",),
    "test_cli_gpu_per_trial_without_gpu_fails_fast": ("gpu_per_trial",),
    "test_cli_existing_exp_id_without_resume": ("existing_exp_id",),
    "test_cli_dry_run_prints_configs_without_ray": ("dry_run_seed0",),
    "test_cli_dry_run_is_reproducible_per_seed": ("dry_run_seed0", "dry_run_seed0_again", "dry_run_seed1"),
    "test_cli_exp_id_of_a_run_model_experiment": ("run_model_exp_id",),
    "test_cli_dry_run_reports_every_problem": ("dry_run_problems",),
    "test_cli_dry_run_reads_the_dataset": ("dry_run_bad_dyna",),
    "test_cli_unwritable_working_directory": ("unwritable_workdir",),
    "test_cli_unknown_metric": ("unknown_metric",),
    "test_cli_dry_run_counts_the_final_runs": ("dry_run_final_seeds",),
}


def _run_case(folder: Path, args: list[str]) -> CliResult:
    env = {k: v for k, v in os.environ.items() if k not in ("LIBTRAFFIC_ROOT", "RAY_ADDRESS")}
    env["OMP_NUM_THREADS"] = "1"  # two processes share two cores
    start = time.monotonic()
    proc = warm.run([sys.executable, str(HYPER_TUNE), *BASE_ARGS, *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start, folder)


@pytest.fixture(scope="module")
def cli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start the subprocess cases the selected tests need, two at a time; returns name -> CliResult."""
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    needed = list(dict.fromkeys(case for test, cases in USED_BY.items() if test in selected for case in cases))
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name in needed:
            args, setup = CASES[name]
            folder = make_workdir(tmp_path_factory.mktemp(f"cli_{name}"))
            if setup:
                setup(folder)
            futures[name] = pool.submit(_run_case, folder, args)
        yield lambda name: futures[name].result()


def assert_user_error(result: CliResult, *fragments: str) -> str:
    """Exit code 2, one 'Error: ...' message holding every fragment, no traceback, no Ray."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("Error: ") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in: {result.stderr}"
    assert RAY_STARTED not in result.stderr + result.stdout
    return result.stderr


def test_cli_without_space_file_uses_libcitys_hyper_example(cli) -> None:
    """As LibCity: no --space_file means hyper_example (the shipped copy when ./ has none)."""
    result = cli("default_space_file")
    assert result.returncode == 0, result.stderr
    assert not (result.workdir / "hyper_example.json").exists()
    assert f"Dry run: space file {REPO_ROOT / 'hyper_example.json'} is valid" in result.stdout
    configs = sampled_lines(result)
    assert len(configs) == 3 and all(set(c) == {"learning_rate"} for c in configs)
    assert {c["learning_rate"] for c in configs} <= {0.01, 0.005, 0.001}


def test_cli_malformed_json(cli) -> None:
    line, column = missing_comma_position()
    result = cli("malformed_json")
    assert_user_error(result, f"The space file {result.workdir.resolve() / 'typo.json'} is not valid JSON",
                      "Expecting ',' delimiter", f"at line {line}, column {column}", '"hidden_size": {',
                      "Hint: JSON needs a comma between entries")


def test_cli_unknown_search_alg(cli) -> None:
    assert_user_error(cli("unknown_search_alg"), "Unknown search_alg 'HyperOpts' (from --search_alg).",
                      "Did you mean 'HyperOpt'?", "Valid values: BasicSearch, BayesOptSearch, HyperOpt, OptunaSearch.")


def test_cli_gpu_per_trial_without_gpu_fails_fast(cli) -> None:
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU, so --gpu_per_trial 1 is satisfiable")
    result = cli("gpu_per_trial")
    assert_user_error(result, "--gpu_per_trial 1 cannot be satisfied: this machine has 0 GPU(s)",
                      "Use --gpu_per_trial 0")
    assert result.seconds < 60
    assert not (result.workdir / "libtraffic" / "cache" / "hyper_tune").exists()


def test_cli_existing_exp_id_without_resume(cli) -> None:
    result = cli("existing_exp_id")
    assert_user_error(result, "Experiment taken already exists", "--resume --exp_id taken", "choose a new --exp_id")
    folder = result.workdir / "libtraffic" / "cache" / "hyper_tune" / "taken"
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert (folder / "keep.txt").read_text() == "user data"


def sampled_lines(result: CliResult) -> list[dict[str, Any]]:
    lines = [line.split("sampled ", 1)[1] for line in result.stdout.splitlines() if line.lstrip().startswith("[")]
    return [ast.literal_eval(text) for text in lines]


def test_cli_dry_run_prints_configs_without_ray(cli) -> None:
    result = cli("dry_run_seed0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Dry run: space file" in result.stdout and "4 trial(s) would run" in result.stdout
    configs = sampled_lines(result)
    assert len(configs) == 4
    for config in configs:
        assert set(config) == {"learning_rate", "max_epoch", "hidden_size", "dropout"}
        assert config["learning_rate"] in (0.01, 0.005, 0.001)
        assert config["max_epoch"] in range(2, 10)
        assert config["hidden_size"] in (50, 100, 200, 500)
        assert 0.1 <= config["dropout"] < 0.6
    resolved = [line for line in result.stdout.splitlines() if line.lstrip().startswith("resolved")]
    assert len(resolved) == 4 and all("'model': 'GRU', 'dataset': 'TINY'" in line for line in resolved)
    assert RAY_STARTED not in result.stdout + result.stderr
    assert not (result.workdir / "libtraffic" / "cache" / "hyper_tune").exists()


def test_cli_dry_run_is_reproducible_per_seed(cli) -> None:
    first, again, other = cli("dry_run_seed0"), cli("dry_run_seed0_again"), cli("dry_run_seed1")
    assert first.returncode == again.returncode == other.returncode == 0
    assert len(sampled_lines(first)) == 4
    assert sampled_lines(first) == sampled_lines(again)
    assert sampled_lines(first) != sampled_lines(other)


def test_cli_dry_run_counts_the_final_runs(cli) -> None:
    result = cli("dry_run_final_seeds")
    assert result.returncode == 0, result.stderr
    assert ("4 trial(s) would run, then --final_seeds 3 x --final_top 2 = 6 final run(s) (the best configurations "
            "retrained with fresh seeds, scored on the test split). Sampled configurations:") in result.stdout
    assert len(sampled_lines(result)) == 4 and "no problem found" in result.stdout
    assert not (result.workdir / "libtraffic" / "cache" / "finals").exists()  # nothing written, no final-runs file


def test_cli_exp_id_of_a_run_model_experiment(cli) -> None:
    result = cli("run_model_exp_id")
    assert_user_error(result, f"Experiment folder {result.workdir.resolve()}/libtraffic/cache/trained already exists "
                      "(a run_model.py experiment: there is no", "so --resume cannot continue it). Choose a new --exp_id.")
    assert sorted(p.name for p in (result.workdir / "libtraffic" / "cache" / "trained").iterdir()) == ["model_cache"]


def test_cli_dry_run_reports_every_problem(cli) -> None:
    """Each bad value of the space is named with its entry, plus the clash of --exp_id, all at once."""
    result = cli("dry_run_problems")
    message = assert_user_error(result, "Dry run: 4 problem(s) found before any training",
                                "entry 'hidden_size' = 0 (choice): hidden_size must be >= 1 (a number of units), got 0",
                                "entry 'dropout' = 1.4999999999999998 (uniform just below upper 1.5): dropout must be in [0, 1)",
                                "entry 'learner' = 'adamm' (grid_search): Unknown learner 'adamm'", "Did you mean 'adam'?",
                                "libtraffic/cache/trained already exists (a run_model.py experiment")
    assert "entry 'hidden_size' = 8" not in message and "entry 'dropout' = 0.1" not in message
    assert "Epoch [" not in result.stdout
    assert not (result.workdir / "libtraffic" / "cache" / "hyper_tune").exists()
    assert not (result.workdir / "libtraffic" / "cache" / "dataset_cache").exists()  # a dry run leaves no cache


def test_cli_dry_run_reads_the_dataset(cli) -> None:
    result = cli("dry_run_bad_dyna")
    assert_user_error(result, "Dry run: 1 problem(s)", "the fixed settings (flags, --config_file and defaults): ",
                      f"{result.workdir.resolve()}/raw_data/TINY/TINY.dyna has a header but no data rows")


def test_cli_unwritable_working_directory(cli) -> None:
    result = cli("unwritable_workdir")
    assert_user_error(result, f"Cannot create the folder {result.workdir.resolve()}/libtraffic/cache:",
                      "run from a folder you can write to")
    assert (result.workdir / "libtraffic").read_text() == "a file in the way\n"


# ----------------------------------------------------------------------------- in-process cases


@pytest.fixture
def tune_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, with Ray and data preparation made unreachable."""
    monkeypatch.delenv("LIBTRAFFIC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    make_workdir(tmp_path)

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("validation let a bad input through to data preparation / Ray")

    monkeypatch.setattr(tuning, "_run_ray", tripwire)
    monkeypatch.setattr(tuning, "get_dataset", tripwire)
    monkeypatch.setattr("ray.init", tripwire)
    return tmp_path


def tune(**kwargs: Any) -> None:
    args: dict[str, Any] = {"task": "traffic_state_pred", "model_name": "GRU", "dataset_name": "TINY",
                            "space_file": "sample_space_file"}
    tuning.hyper_parameter(**(args | kwargs))


def tune_error(tune_dir: Path, pattern: str, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(LibTrafficError, match=pattern) as info:
        tune(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert not (tune_dir / "libtraffic" / "log").exists(), "a failed validation still started a run log"
    return message


def test_space_file_not_found(tune_dir: Path) -> None:
    tune_error(tune_dir, r"Space file 'nope' not found", str(tune_dir / "nope.json"), str(tune_dir / "nope"),
               "without .json", space_file="nope")


def test_malformed_json(tune_dir: Path) -> None:
    (tune_dir / "typo.json").write_text(tutorial_without_comma())
    line, column = missing_comma_position()
    tune_error(tune_dir, rf"The space file .*typo\.json is not valid JSON: Expecting ',' delimiter at line {line}, "
               rf"column {column}", "Hint:", space_file="typo")


@pytest.mark.parametrize(("name", "suggestion"), [("HyperOpts", "HyperOpt"), ("hyperopt", "HyperOpt"),
                                                  ("BayesOptSearh", "BayesOptSearch"), ("Random", None)])
def test_unknown_search_alg(tune_dir: Path, name: str, suggestion: str | None) -> None:
    message = tune_error(tune_dir, rf"Unknown search_alg '{name}' \(from --search_alg\)\.",
                         "Valid values: BasicSearch, BayesOptSearch, HyperOpt, OptunaSearch.", search_alg=name)
    assert (f"Did you mean '{suggestion}'?" in message) if suggestion else ("Did you mean" not in message)


@pytest.mark.parametrize(("name", "suggestion"), [("ASAH", "ASHA"), ("fifo", "FIFO"),
                                                  ("MedianStopping", "MedianStoppingRule"), ("PBT", None)])
def test_unknown_scheduler(tune_dir: Path, name: str, suggestion: str | None) -> None:
    message = tune_error(tune_dir, rf"Unknown scheduler '{name}' \(from --scheduler\)\.",
                         "Valid values: ASHA, FIFO, HyperBand, MedianStoppingRule.", scheduler=name)
    assert (f"Did you mean '{suggestion}'?" in message) if suggestion else ("Did you mean" not in message)


def test_gpu_per_trial_without_gpu(tune_dir: Path) -> None:
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    tune_error(tune_dir, r"--gpu_per_trial 1 cannot be satisfied: this machine has 0 GPU\(s\), so every trial "
               r"would wait forever\. Use --gpu_per_trial 0", gpu_per_trial=1)


def test_negative_gpu_per_trial(tune_dir: Path) -> None:
    tune_error(tune_dir, r"--gpu_per_trial -1 cannot be satisfied", gpu_per_trial=-1)


def test_cpu_per_trial_beyond_the_machine(tune_dir: Path) -> None:
    cores = os.cpu_count() or 1
    request = max(99, cores + 1)
    tune_error(tune_dir, rf"--cpu_per_trial {request} exceeds the {cores} CPU\(s\) of this machine; "
               r"no trial could ever start\.", cpu_per_trial=request)


@pytest.mark.parametrize(("flag", "value"), [("num_samples", 0), ("num_samples", -3), ("max_concurrent", 0),
                                             ("cpu_per_trial", 0)])
def test_counts_must_be_positive(tune_dir: Path, flag: str, value: int) -> None:
    tune_error(tune_dir, rf"--{flag} must be at least 1, got {value}\.", **{flag: value})


@pytest.mark.parametrize("budget", [0, -5.0, float("nan")])
def test_time_budget_must_be_positive(tune_dir: Path, budget: float) -> None:
    tune_error(tune_dir, rf"--time_budget_s must be positive, got {budget}\.", time_budget_s=budget)


@pytest.mark.parametrize(("key", "values"), [("model", ["GRU", "LSTM"]), ("seed", [0, 1]), ("exp_id", ["a", "b"]),
                                             ("gpu", [True, False]), ("dataset", ["TINY"])])
def test_space_naming_a_fixed_key(tune_dir: Path, key: str, values: list) -> None:
    (tune_dir / "fixed.json").write_text(json.dumps({"dropout": {"type": "uniform", "lower": 0.1, "upper": 0.5},
                                                    key: {"type": "choice", "list": values}}))
    tune_error(tune_dir, rf"fixed\.json: '{key}' cannot be tuned; set it with --{key} instead\.",
               str(tune_dir / "fixed.json"), space_file="fixed")


def test_fixed_keys_cover_what_chooses_the_run() -> None:
    assert {"task", "model", "dataset", "exp_id", "seed", "gpu", "gpu_id"} <= tuning.FIXED_KEYS


def test_unknown_space_parameter_through_hyper_parameter(tune_dir: Path) -> None:
    (tune_dir / "typo.json").write_text(json.dumps({"hiden_size": {"type": "choice", "list": [8, 16]}}))
    tune_error(tune_dir, r"parameter 'hiden_size' is not a config key of GRU / TINY", "Did you mean 'hidden_size'?",
               space_file="typo")


def test_sample_space_with_bayesopt_is_explained(tune_dir: Path) -> None:
    tune_error(tune_dir, r"--search_alg BayesOptSearch cannot handle 'learning_rate' \(choice\)",
               "Use --search_alg BasicSearch, HyperOpt or OptunaSearch", search_alg="BayesOptSearch")


def test_resume_without_exp_id(tune_dir: Path) -> None:
    tune_error(tune_dir, r"--resume needs the --exp_id of the experiment to continue\.", resume=True)


def test_resume_of_a_missing_experiment(tune_dir: Path) -> None:
    tune_error(tune_dir, r"--resume: no experiment .*hyper_tune/ghost to continue; check --exp_id\.",
               resume=True, other_args={"exp_id": "ghost"})
    assert not (tune_dir / "libtraffic" / "cache" / "hyper_tune" / "ghost").exists()


@pytest.mark.parametrize(("existing", "pattern"), [
    ("libtraffic/cache/hyper_tune/taken", r"Experiment taken already exists \(.*hyper_tune/taken\)\. "
                                          r"Continue it with --resume --exp_id taken, or choose a new --exp_id\."),
    # an experiment of run_model.py: the message names that folder, and says --resume cannot continue it
    ("libtraffic/cache/taken", r"Experiment folder .*libtraffic/cache/taken already exists \(a run_model\.py experiment: "
                               r"there is no .*hyper_tune/taken, so --resume cannot continue it\)\. Choose a new --exp_id\."),
])
def test_existing_exp_id_without_resume(tune_dir: Path, existing: str, pattern: str) -> None:
    folder = tune_dir / existing
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("user data")
    tune_error(tune_dir, pattern, other_args={"exp_id": "taken"})
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("exp_id", "dataset", "pattern"), [
    ("../x", "TINY", r"--exp_id '\.\./x' is not a plain name"), ("a/b", "TINY", r"--exp_id 'a/b' is not a plain name"),
    (None, "../raw_data/TINY", r"--dataset '\.\./raw_data/TINY' is not a plain name"), (None, "", r"--dataset is empty"),
])
def test_names_that_would_escape(tune_dir: Path, exp_id: str | None, dataset: str, pattern: str) -> None:
    tune_error(tune_dir, pattern, dataset_name=dataset, other_args={"exp_id": exp_id})
    tune_error(tune_dir, pattern, dataset_name=dataset, other_args={"exp_id": exp_id}, dry_run=True)
    assert not (tune_dir / "libtraffic").exists() and not (tune_dir.parent / "x").exists()


def test_cli_unknown_metric(cli) -> None:
    result = cli("unknown_metric")
    assert_user_error(result, "Unknown metric 'masked_MEA' (from --metric).", "Did you mean 'masked_MAE'?",
                      "Valid values: EVAR, MAE, MAPE, MSE, R2, RMSE, loss, masked_MAE, masked_MAPE, masked_MSE, "
                      "masked_RMSE.")
    # --dry_run goes on and lists it with any other problem (issue 17), building nothing
    assert "Dry run: 1 problem(s) found in the flags and space file" in result.stdout


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize(("metric", "pattern"), [
    ("val_loss", r"Unknown metric 'val_loss' \(from --metric\)\..*Valid values: EVAR, MAE"),
    ("r2", r"Unknown metric 'r2' \(from --metric\)\. Did you mean 'R2'\?"),
    ("masked_MAE@13", r"--metric: 'masked_MAE@13': the horizon after @ must be a whole number from 1 to output_window "
                      r"\(12\), e.g\. masked_MAE@12\."),
    ("masked_MAE@x", r"horizon after @ must be a whole number"),
    ("loss@3", r"the validation loss has no horizons"),
])
def test_unknown_metric(tune_dir: Path, metric: str, pattern: str, dry_run: bool) -> None:
    tune_error(tune_dir, pattern, metric=metric, dry_run=dry_run)


def test_space_may_not_tune_the_metric(tune_dir: Path) -> None:
    (tune_dir / "metric.json").write_text(json.dumps({"best_metric": {"type": "choice", "list": ["loss", "MAE"]}}))
    tune_error(tune_dir, r"'best_metric' cannot be tuned; set it with --best_metric instead\.", space_file="metric")


@pytest.mark.parametrize(("flags", "pattern"), [
    ({"final_seeds": 1}, r"--final_seeds must be 0 \(no retraining\) or at least 2 \(a spread needs two runs\), got 1\."),
    ({"final_seeds": -2}, r"--final_seeds must be 0 .* got -2\."),
    ({"final_seeds": 3, "final_top": 0}, r"--final_top must be at least 1, got 0\."),
])
def test_final_seeds_counts(tune_dir: Path, flags: dict, pattern: str) -> None:
    tune_error(tune_dir, pattern, **flags)


MANY_PROBLEMS = {"hidden_size": {"type": "choice", "list": [0, 8]},
                 "max_epoch": {"type": "randint", "lower": 2, "upper": 4, "q": 2},
                 "dropout": {"type": "unifrom", "lower": 0.1, "upper": 0.5},
                 "learning_rat": {"type": "choice", "list": [0.1]},
                 "weight_decay": {"type": "loguniform", "lower": 0, "upper": 0.1, "step": 1},
                 "steps": {"type": "choice", "list": [[5, 20], [10, 30]]},
                 "seed": {"type": "choice", "list": [1, 2]}, "batch_size": {"type": "choice", "list": [16, 32]}}


def test_dry_run_lists_every_problem_at_once(tune_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 17: every entry, every field, every flag in one message (one run to see them all), with the
    problems that would make every trial of the real run fail (HyperOpt with list values); and the flags the
    space file overrides are named."""
    (tune_dir / "many.json").write_text(json.dumps(MANY_PROBLEMS))
    message = tune_error(
        tune_dir, r"Dry run: 10 problem\(s\) found before any training",
        "--num_samples must be at least 1, got 0.", "--gpu_per_trial nan cannot be satisfied",
        "entry 'max_epoch' (randint) has unknown key 'q'.",
        "entry 'dropout' has unknown type 'unifrom'. Did you mean 'uniform'?",
        "parameter 'learning_rat' is not a config key", "Did you mean 'learning_rate'?",
        "entry 'weight_decay' (loguniform) has unknown key 'step'.",
        "--search_alg HyperOpt cannot handle list or object values ('steps')",
        "'seed' cannot be tuned; set it with --seed instead.",
        "entry 'hidden_size' = 0 (choice): hidden_size must be >= 1 (a number of units), got 0",
        "--metric", space_file="many", search_alg="HyperOpt", num_samples=0, gpu_per_trial=math.nan,
        metric="masked_MEA", dry_run=True, other_args={"batch_size": 64})
    assert message.count("\n  - ") == 10
    out = capsys.readouterr().out
    assert "Note: batch_size in the space file overrides --batch_size 64 (every trial takes the space file's value)." in out
    assert "problem(s) found in the flags and space file, listed at the end" in out


def test_dry_run_names_the_flags_and_config_file_values_the_space_overrides(tune_dir: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    (tune_dir / "mine.json").write_text(json.dumps({"learning_rate": 0.05}))
    tune(config_file="mine", other_args={"max_epoch": 10}, dry_run=True, num_samples=1)  # the sample space file
    out = capsys.readouterr().out
    assert "Note: max_epoch in the space file overrides --max_epoch 10 (every trial takes the space file's value)." in out
    assert "Note: learning_rate in the space file overrides learning_rate = 0.05 of the config file mine.json" in out
    assert "Note: dropout" not in out and "no problem found" in out


def test_a_real_run_stops_at_its_first_problem_with_the_same_message(tune_dir: Path) -> None:
    (tune_dir / "many.json").write_text(json.dumps(MANY_PROBLEMS))
    tune_error(tune_dir, r"^--num_samples must be at least 1, got 0\.$", space_file="many", num_samples=0)
    message = tune_error(tune_dir, r"^5 problems in the space file:\n  - ", space_file="many", search_alg="HyperOpt")
    assert "'seed' cannot be tuned" not in message  # checked once the space file is fixed, as before


# ----------------------------------------------------------------------------- issue 15 (tuning side)


def test_a_grid_too_big_to_expand_is_refused_before_ray(tune_dir: Path) -> None:
    """A 1000 x 1000 grid: refused at once, counted from the file (Ray would build every trial first, for
    longer than any --time_budget_s)."""
    space = {"hidden_size": {"type": "grid_search", "list": list(range(2, 1002))},
             "learning_rate": {"type": "grid_search", "list": [0.0001 * (i + 1) for i in range(1000)]}}
    (tune_dir / "huge.json").write_text(json.dumps(space))
    tune_error(tune_dir, r"huge\.json: 1,000,000 grid point\(s\) x --num_samples 1 = 1,000,000 trials, more than the "
               r"10,000 a search may have", "sample the space instead", space_file="huge", num_samples=1,
               time_budget_s=20)


def test_tuning_data_path_is_refused_up_front(tune_dir: Path) -> None:
    """Every trial receives the data this process read: a tuned data_path would be ignored."""
    (tune_dir / "paths.json").write_text(json.dumps({"data_path": {"type": "choice", "list": ["a", "b"]}}))
    tune_error(tune_dir, r"paths\.json: 'data_path' chooses which files or columns are read and cannot be tuned",
               "Run one experiment per value instead", space_file="paths")
    tune_error(tune_dir, r"'data_path' chooses which files", space_file="paths", dry_run=True)


def test_a_space_file_nested_100k_levels_deep(tune_dir: Path) -> None:
    (tune_dir / "deep.json").write_text('{"hidden_size": ' + "[" * 100_000 + "]" * 100_000 + "}")
    tune_error(tune_dir, r"space file .*deep\.json is nested too deeply to be read as JSON", space_file="deep")


def test_unreachable_gcs_storage_fails_within_a_minute(tune_dir: Path) -> None:
    """--storage_path gs://...: Google's client retries an unsendable request for 15 minutes by default."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: pytest.raises(LibTrafficError, tune, other_args={"exp_id": "gcs"},
                                                   storage_path="gs://libtraffic-no-such-bucket-15/tune"))
        error = future.result(timeout=120).value  # our retry limit is 20 s; a hang fails here
    assert "--storage_path gs://libtraffic-no-such-bucket-15/tune cannot be opened" in str(error)
    assert not (tune_dir / "libtraffic" / "cache" / "gcs").exists()


def test_any_integer_seed_works_for_every_searcher(tune_dir: Path) -> None:
    """hyper_tune --seed -1 is accepted, as by run_model.py (numpy's samplers take 0 <= seed < 2**32 only)."""
    from libtraffic.config import ConfigParser
    from libtraffic.tune.context import TuneRun
    from libtraffic.tune.options import TuneOptions
    from libtraffic.tune.searchers import SEARCHERS
    from libtraffic.tune.spaces import load_search_space

    (tune_dir / "lr.json").write_text(json.dumps({"learning_rate": {"type": "uniform", "lower": 0.001,
                                                                     "upper": 0.01}}))
    for seed in (-1, -2**40, 2**40):
        config = ConfigParser("traffic_state_pred", "GRU", "TINY", None, other_args={"seed": seed})
        for name, searcher in SEARCHERS.items():
            run = TuneRun(config, load_search_space("lr", config, name), TuneOptions.from_arguments({}), "storage")
            assert 0 <= run.sampler_seed < 2**32 and searcher.build(run) is not None
    assert TuneRun(ConfigParser("traffic_state_pred", "GRU", "TINY", None, other_args={"seed": 7}),
                   load_search_space("lr", config, "BasicSearch"), TuneOptions.from_arguments({}),
                   "storage").sampler_seed == 7  # seeds numpy takes are unchanged


def test_resume_of_a_ray_folder_without_state_or_with_an_empty_tuner_pkl(tune_dir: Path) -> None:
    """--resume of an experiment Ray never saved a state of (stopped before its first trial), and of one whose
    tuner.pkl is empty or experiment_state is truncated: exit 2 with what to do, before Ray reads anything."""
    folder = tune_dir / "libtraffic" / "cache" / "hyper_tune" / "cut"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"")
    tune_error(tune_dir, r"--resume: .*hyper_tune/cut holds no saved experiment state \(tuner\.pkl and "
               r"experiment_state-\*\.json\)", "Start a new experiment with a new --exp_id", resume=True,
               other_args={"exp_id": "cut"})
    (folder / "experiment_state-2026-12-04_10-00-00.json").write_text('{"trial_data": [')
    tune_error(tune_dir, r"cut/experiment_state-2026-12-04_10-00-00\.json carries no signature", resume=True,
               other_args={"exp_id": "cut"})
