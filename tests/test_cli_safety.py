"""run_model.py never loses or mixes an experiment: claimed folders, plain names, unreadable
checkpoints, an unwritable working directory and Ctrl-C, each through the real CLI."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from libtraffic.data.synthetic import write_synthetic_dataset
from libtraffic.pipeline import run_model
from libtraffic.utils.errors import LibTrafficError

from tests import warm
from conftest import REPO_ROOT, SUBPROCESS_ENV, run_clis

SMALL = ["--dataset", "TINY", "--input_window", "4", "--output_window", "2", "--batch_size", "16", "--log_level", "INFO"]
TIMEOUT = 300


def start(cwd: Path, *args: str, script: str = "run_model.py") -> subprocess.Popen:
    return warm.Popen([sys.executable, str(REPO_ROOT / script), *args], cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = TIMEOUT):
    """Poll ``condition()`` until it returns something true (a bounded loop, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def new_log(cwd: Path, exp_id: str, before: set[Path]) -> Path | None:
    logs = set((cwd / "libtraffic" / "log").glob(f"{exp_id}-*.log")) - before
    return next(iter(logs), None)


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two run_model.py processes started at once with the same --exp_id (hidden_size 4 and 6)."""
    cwd = tmp_path_factory.mktemp("safety")
    write_synthetic_dataset(cwd / "raw_data", "TINY", num_nodes=4, num_days=2, seed=0)
    procs = {hidden: start(cwd, *SMALL, "--exp_id", "race", "--max_epoch", "2", "--hidden_size", str(hidden))
             for hidden in (4, 6)}
    ended: list[int] = []

    def both_ended() -> bool:
        ended.extend(h for h, p in procs.items() if p.poll() is not None and h not in ended)
        return len(ended) == 2

    wait_for(both_ended, "both runs to end")
    runs = {}
    for hidden, proc in procs.items():
        out, err = proc.communicate()
        runs[hidden] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return {"cwd": cwd, "runs": runs, "ended": ended}


def test_same_exp_id_at_once_exactly_one_wins(race: dict) -> None:
    runs = race["runs"]
    assert sorted(r.returncode for r in runs.values()) == [0, 2], {h: r.stderr[-800:] for h, r in runs.items()}
    winner = next(h for h, r in runs.items() if r.returncode == 0)
    loser = runs[10 - winner]
    assert race["ended"][0] == 10 - winner  # the loser stopped at once, before the winner's training ended
    assert re.search(r"^Error: Experiment folder .*libtraffic/cache/race already exists; choose a new --exp_id",
                     loser.stderr), loser.stderr
    assert "Traceback" not in loser.stderr and "Epoch [" not in loser.stdout
    # The winner's printed best-model path holds the winner's model, not the loser's.
    saved = re.findall(r"Saved model at (\S+\.m)$", runs[winner].stdout, re.MULTILINE)
    assert len(saved) == 1
    state = torch.load(saved[0], weights_only=True)
    assert state["config"]["hidden_size"] == winner
    assert any(t.shape[0] == 3 * winner for t in state["model_state_dict"].values())  # GRU gates: 3 x hidden


def test_second_resume_is_refused_and_ctrl_c_says_how_to_continue(race: dict) -> None:
    cwd = race["cwd"]
    winner = next(h for h, r in race["runs"].items() if r.returncode == 0)
    args = [*SMALL, "--exp_id", "race", "--hidden_size", str(winner), "--max_epoch", "100000", "--epoch", "1"]
    before = set((cwd / "libtraffic" / "log").glob("race-*.log"))
    first = start(cwd, *args)
    try:
        log = wait_for(lambda: new_log(cwd, "race", before), "the resumed run's log", first)
        wait_for(lambda: "Resuming training after epoch 1" in log.read_text(), "the resume to start", first)
        second = warm.run([sys.executable, str(REPO_ROOT / "run_model.py"), *args], cwd=cwd, env=SUBPROCESS_ENV,
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 2, second.stderr
        assert re.search(r"^Error: Experiment folder .*cache/race is in use by another run right now", second.stderr)
        # Ctrl-C once an epoch after the resumed one has been checkpointed or logged.
        wait_for(lambda: re.search(r"Epoch \[[2-9]/", log.read_text()), "an epoch after the resume", first)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    match = re.search(r"Interrupted: experiment race keeps the checkpoints of epoch\(s\) ([0-9, ]+) in \S+model_cache"
                      r".*--epoch (\d+) --exp_id race\.", err, re.DOTALL)
    assert match, err
    kept = [int(e) for e in match.group(1).split(", ")]
    assert 1 in kept and int(match.group(2)) == max(kept)
    for epoch in kept:
        assert (cwd / f"libtraffic/cache/race/model_cache/GRU_TINY_epoch{epoch}.tar").is_file()
    # The suggested command continues training.
    resumed = run_clis(REPO_ROOT, [(cwd, [*SMALL, "--exp_id", "race", "--hidden_size", str(winner),
                                          "--epoch", str(max(kept)), "--max_epoch", str(max(kept) + 2)])])[0]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming training after epoch {max(kept)}" in resumed.stdout


# ----- unreadable checkpoints: --train false (.m) and --epoch K (.tar) -----

def _write_empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _text(path: Path) -> None:
    path.write_text("not a model\n")


def _foreign_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps([1, 2, 3]))


def _bare_state_dict(path: Path) -> None:  # LibCity-style: not our checkpoint dict
    torch.save(torch.load(path, weights_only=True)["model_state_dict"], path)


def _unsafe_objects(path: Path) -> None:  # needs NumPy's unpickling (as our checkpoints before weights-only loading)
    state = torch.load(path, weights_only=True)
    state["rng_state"]["numpy"] = np.random.get_state()
    torch.save(state, path)


def _other_shape(path: Path) -> None:  # a checkpoint dict whose weights have other shapes
    state = torch.load(path, weights_only=True)
    state["model_state_dict"] = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in state["model_state_dict"].items()}
    torch.save(state, path)


BREAKS = {"empty": (_write_empty, r"is not a readable checkpoint \(EOFError"),
          "truncated": (_truncate, r"is not a readable checkpoint \((RuntimeError|OSError)"),
          "text": (_text, r"is not a readable checkpoint \((UnpicklingError|KeyError)"),
          "unsafe_objects": (_unsafe_objects, r"is not a checkpoint we can load safely: it holds Python objects "
                                              r"\(numpy\..*\) that only unpickling arbitrary code could restore"),
          "foreign_pickle": (_foreign_pickle, r"is not a readable checkpoint|holds a list, not a libtraffic checkpoint"),
          "bare_state_dict": (_bare_state_dict, r"holds a OrderedDict with keys .*, not a libtraffic checkpoint"),
          "other_shape": (_other_shape, r"does not fit this run's settings")}


def _broken_copy(race: dict, name: str, break_file, target: str, tag: str = "") -> tuple[str, Path]:
    """A copy of the winning experiment whose ``target`` file is broken by ``break_file``."""
    cwd = race["cwd"]
    exp_id = f"broken_{name}_{target.split('.')[-1]}{tag}"
    shutil.copytree(cwd / "libtraffic/cache/race", cwd / "libtraffic/cache" / exp_id)
    path = cwd / "libtraffic/cache" / exp_id / "model_cache" / target
    break_file(path)
    return exp_id, path


@pytest.mark.parametrize("target", ["GRU_TINY.m", "GRU_TINY_epoch1.tar"])
@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_checkpoint_files(race: dict, name: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--train false reads the .m file, --epoch 1 the epoch-1 .tar file."""
    winner = next(h for h, r in race["runs"].items() if r.returncode == 0)
    exp_id, path = _broken_copy(race, name, BREAKS[name][0], target)
    content = path.read_bytes()
    monkeypatch.chdir(race["cwd"])
    mode = {"train": False} if target.endswith(".m") else {"other_epoch": 1}
    with pytest.raises(LibTrafficError, match=BREAKS[name][1]) as info:
        run_model(dataset_name="TINY", train=mode.get("train"), other_args={
            "exp_id": exp_id, "input_window": 4, "output_window": 2, "batch_size": 16, "hidden_size": winner,
            "max_epoch": 3, "log_level": "WARNING", **({"epoch": 1} if "other_epoch" in mode else {})})
    assert str(path) in str(info.value)
    assert path.read_bytes() == content  # nothing overwritten


def test_broken_checkpoints_through_the_cli(race: dict) -> None:
    """The user's view: exit code 2, one message naming the file and what to do, no traceback."""
    winner = next(h for h, r in race["runs"].items() if r.returncode == 0)
    cases = []
    for name, target, extra in (("truncated", "GRU_TINY.m", ["--train", "false"]),
                                ("empty", "GRU_TINY_epoch1.tar", ["--epoch", "1", "--max_epoch", "3"])):
        exp_id, path = _broken_copy(race, name, BREAKS[name][0], target, tag="_cli")
        cases.append((path, path.read_bytes(), [*SMALL, "--exp_id", exp_id, "--hidden_size", str(winner), *extra]))
    results = run_clis(REPO_ROOT, [(race["cwd"], args) for _, _, args in cases])
    for (path, content, args), result in zip(cases, results):
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and result.stderr.count("Error: ") == 1, result.stderr
        assert str(path) in result.stderr and "or train again with a new --exp_id" in result.stderr
        assert ("--epoch K with the same --exp_id" if path.suffix == ".m" else "another epoch's checkpoint") in result.stderr
        assert path.read_bytes() == content
        assert "Epoch [" not in result.stdout


# ----- names, data_path and the working directory -----

def test_names_that_would_escape_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "work"
    write_synthetic_dataset(cwd / "raw_data", "TINY", num_nodes=4, num_days=2, seed=0)
    cases = {
        "exp_up": (["--dataset", "TINY", "--exp_id", "../../x"], r"--exp_id '\.\./\.\./x' is not a plain name"),
        "data_up": (["--dataset", "../raw_data/TINY"], r"--dataset '\.\./raw_data/TINY' is not a plain name: a dataset is a "
                                                       r"folder name under \./raw_data \(to read files elsewhere, set data_path"),
    }
    results = run_clis(REPO_ROOT, [(cwd, args + ["--max_epoch", "1"]) for args, _ in cases.values()])
    for (name, (_, pattern)), result in zip(cases.items(), results):
        assert result.returncode == 2, (name, result.stderr[-1500:])
        assert re.search(pattern, result.stderr) and "Traceback" not in result.stderr, (name, result.stderr)
    monkeypatch.chdir(cwd)
    for dataset, exp_id, pattern in (("TINY", "a/b", r"--exp_id 'a/b' is not a plain name"),
                                     ("TINY", ".hidden", r"--exp_id '\.hidden' is not a plain name"),
                                     (str(cwd / "raw_data" / "TINY"), None, r"--dataset '/.*' is not a plain name"),
                                     ("", None, r"--dataset is empty")):
        with pytest.raises(LibTrafficError, match=pattern):
            run_model(dataset_name=dataset, other_args={"exp_id": exp_id, "max_epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing written beside the working directory
    assert not (cwd / "libtraffic" / "cache").exists() or not any((cwd / "libtraffic" / "cache").iterdir())


def test_data_path_reads_a_dataset_elsewhere(workdir: Path) -> None:
    write_synthetic_dataset(workdir / "elsewhere", "TINY", num_nodes=4, num_days=2, seed=0)
    result = run_model(dataset_name="TINY", other_args={
        "data_path": "elsewhere/TINY", "exp_id": "far", "max_epoch": 1, "input_window": 4, "output_window": 2,
        "hidden_size": 4, "log_level": "WARNING"})
    assert result["masked_MAE@1"] > 0
    assert not (workdir / "raw_data").exists()
    with pytest.raises(LibTrafficError, match=r"Dataset 'TINY' not found: data_path 'nowhere': the folder .*nowhere "
                                              r"does not exist"):
        run_model(dataset_name="TINY", other_args={"data_path": "nowhere", "exp_id": "none"})


def test_unwritable_working_directory(tmp_path: Path) -> None:
    """A file named libtraffic in the working directory (unwritable for root too) and, when not
    running as root, a read-only working directory: exit 2 saying where runs write."""
    blocked = tmp_path / "blocked"
    write_synthetic_dataset(blocked / "raw_data", "TINY", num_nodes=4, num_days=2, seed=0)
    (blocked / "libtraffic").write_text("a file in the way\n")
    readonly = tmp_path / "readonly"
    write_synthetic_dataset(readonly / "raw_data", "TINY", num_nodes=4, num_days=2, seed=0)
    readonly.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        runs = [(blocked, SMALL + ["--max_epoch", "1"])]
        if not os.access(readonly, os.W_OK):  # root ignores the mode bits
            runs.append((readonly, SMALL + ["--max_epoch", "1"]))
        results = run_clis(REPO_ROOT, runs)
    finally:
        readonly.chmod(stat.S_IRWXU)
    for (cwd, _), result in zip(runs, results):
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr
        assert re.search(rf"Error: Cannot create the folder {re.escape(str(cwd))}/libtraffic/cache: .*Runs write their log "
                         rf"and results under \./libtraffic/ of the working directory .*run from a folder you can write to",
                         result.stderr), result.stderr
    assert (blocked / "libtraffic").read_text() == "a file in the way\n"


def test_second_ctrl_c_while_exiting_keeps_exit_code_130(tmp_path: Path) -> None:
    """A Ctrl-C that arrives while the process ends after the first one (here: a cleanup still running as
    the exit unwinds, as Ray's shutdown does) exits at once with 130 and the message, not by SIGINT (-2)."""
    script = tmp_path / "second_ctrl_c.py"
    script.write_text(
        "import os, signal, time\n"
        "from libtraffic.utils.cli import run_cli\n"
        "def main():\n"
        "    raise KeyboardInterrupt('Interrupted: the hint.')\n"
        "try:\n"
        "    run_cli(main)\n"
        "finally:\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # the user's second Ctrl-C, during the cleanup\n"
        "    for _ in range(50):\n"
        "        time.sleep(0.1)\n"
        "    print('cleanup finished')\n")
    done = warm.run([sys.executable, str(script)], cwd=tmp_path, env={**SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip() == "Interrupted: the hint." and "cleanup finished" not in done.stdout
