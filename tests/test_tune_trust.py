"""Issue 15, the tuning side: Ray's experiment-state uploads, signals at any moment, files a resume reads."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs
import pytest
from fsspec.implementations.local import LocalFileSystem

from libtraffic.data.synthetic import write_synthetic_dataset
from libtraffic.tune import ray_private
from tests import warm
from tests.ray_nodes import RAY_ENV, free_port, start_node, wait_until

REPO = Path(__file__).resolve().parent.parent
DATASET = "TRUST_TINY"
TIMEOUT = 600
SLOW_UPLOAD_S = 3.0  # how long the first upload below takes; the fixed code waits for it, whatever its length


class _SlowLink(LocalFileSystem):
    """A local folder reached through a slow link: the first file written there takes SLOW_UPLOAD_S to open."""

    opened = 0

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode and path.endswith("experiment_state.json"):
            _SlowLink.opened += 1
            if _SlowLink.opened == 1:
                time.sleep(SLOW_UPLOAD_S)
        return super()._open(path, mode, **kwargs)


def test_experiment_state_is_written_only_after_its_previous_upload_ended(tmp_path: Path, caplog) -> None:
    """Section 8: Ray writes the experiment state into the folder its background thread is still uploading
    (a renamed-away tmp-basic-variant-state-*.json: ERROR and traceback on s3). With our fix the next save
    waits for that upload: Ray's own checkpoint manager and syncer, a real (slow) pyarrow filesystem."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    ray_private.upload_experiment_state_in_turn()
    staging = tmp_path / "staging"

    class Storage(StorageContext):  # Ray's, with its driver-side folder here instead of a Ray session's
        @property
        def experiment_driver_staging_path(self) -> str:
            return str(staging)

    storage = Storage(storage_path=str(tmp_path / "remote"), experiment_dir_name="exp",
                      storage_filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(_SlowLink())))
    uploaded = Path(storage.experiment_fs_path) / "experiment_state.json"
    seen_at_save = []

    def save(n: int):
        def write() -> None:
            seen_at_save.append(uploaded.read_text() if uploaded.is_file() else None)
            staging.mkdir(exist_ok=True)
            tmp = staging / f".tmp-{n}"
            tmp.write_text(str(n))
            os.replace(tmp, staging / "experiment_state.json")
        return write

    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period=0, sync_every_n_trial_checkpoints=1)
    with caplog.at_level(logging.WARNING, logger="ray"):
        manager.sync_up_experiment_state(save(1))  # starts the upload of state 1 in the background
        manager.sync_up_experiment_state(save(2), force=True)  # a trial checkpoint: a forced save
        manager.sync_up_experiment_state(save(3), force=True, wait=True)
    assert seen_at_save == [None, "1", "2"]  # each save came after the previous upload had ended
    assert uploaded.read_text() == "3"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_resumed_trials_log_is_downloaded_after_the_running_upload(tmp_path: Path, caplog) -> None:
    """Section 8, test_s3_storage_interrupt_and_resume (an InvalidRange ERROR with a traceback on --resume):
    Ray's result logger downloads a resumed trial's progress.csv into the folder the experiment upload may be
    sending to storage at that moment, half written. With our fix the download starts once that upload has
    ended: Ray's checkpoint manager, syncer and CSV logger, a real (slow) pyarrow filesystem."""
    from types import SimpleNamespace

    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.logger import CSVLoggerCallback

    ray_private.upload_experiment_state_in_turn()
    staging = tmp_path / "staging"
    events = []

    class Link(_SlowLink):  # notes when the slow upload got through and when the download opened the log
        def _open(self, path, mode="rb", **kwargs):
            if "r" in mode and path.endswith("progress.csv"):
                events.append("download")
            handle = super()._open(path, mode, **kwargs)
            if "w" in mode and path.endswith("experiment_state.json"):
                events.append("upload")
            return handle

    class Storage(StorageContext):
        @property
        def experiment_driver_staging_path(self) -> str:
            return str(staging)

    _SlowLink.opened = 0
    storage = Storage(storage_path=str(tmp_path / "remote"), experiment_dir_name="exp",
                      storage_filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(Link())))
    remote_log = Path(storage.experiment_fs_path) / "trial_0" / "progress.csv"
    remote_log.parent.mkdir(parents=True)
    rows = "epoch,loss\n" + "".join(f"{i},{1 / (i + 1)}\n" for i in range(200))
    remote_log.write_text(rows)
    local = staging / "trial_0"
    local.mkdir(parents=True)
    # The parts of a restored trial the logger reads (Ray's Trial needs a running Tune to build).
    trial = SimpleNamespace(checkpoint=object(), local_path=str(local), storage=SimpleNamespace(
        trial_fs_path=str(remote_log.parent), storage_filesystem=storage.storage_filesystem))

    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period=0, sync_every_n_trial_checkpoints=1)
    with caplog.at_level(logging.WARNING, logger="ray"):
        manager.sync_up_experiment_state(lambda: (staging / "experiment_state.json").write_text("{}"))
        CSVLoggerCallback()._restore_from_remote("progress.csv", trial)
        manager.sync_up_experiment_state(lambda: None, force=True, wait=True)
    assert events[:2] == ["upload", "download"]
    assert (local / "progress.csv").read_text() == rows == remote_log.read_text()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text



@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_final_run_bookkeeping_waits_for_its_end(sig) -> None:
    """Section 8: a final run that returned is recorded in memory and in its file together, so the results file
    of an interruption lists exactly the runs the resume reuses (a real signal to this process)."""
    from libtraffic.tune.interrupt import CtrlC, Terminated, ctrl_c_deferred

    recorded = []
    with CtrlC("e1"), pytest.raises(Terminated if sig == signal.SIGTERM else KeyboardInterrupt) as stop:
        with ctrl_c_deferred():
            recorded.append("in memory")
            os.kill(os.getpid(), sig)  # handled by Python at the next instruction, inside the block
            recorded.append("in the file")
    assert recorded == ["in memory", "in the file"]
    assert "--resume --exp_id e1" in str(stop.value)


def test_ctrl_c_while_ray_starts_waits_for_it_and_a_second_one_does_not(capsys) -> None:
    """Section 4, at ~3 s: a Ctrl-C inside ray.init() takes effect once it returned (Ray half started could
    crash at exit, 139), saying so; a second Ctrl-C stops at once (real signals to this process)."""
    from libtraffic.tune.interrupt import RAY_STARTING, CtrlC, ctrl_c_deferred

    steps = []
    with CtrlC("e2"), pytest.raises(KeyboardInterrupt) as stop:
        with ctrl_c_deferred(RAY_STARTING):
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("Ray started")
    assert steps == ["Ray started"] and "--resume --exp_id e2" in str(stop.value)
    assert RAY_STARTING in capsys.readouterr().err
    with CtrlC("e3"), pytest.raises(KeyboardInterrupt):
        with ctrl_c_deferred(RAY_STARTING):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("not reached")
    assert steps == ["Ray started"]


def test_ctrl_c_before_the_run_sets_its_message_names_the_next_command(capsys) -> None:
    """Section 4, the first second (libraries loading): Python's own KeyboardInterrupt ended with a blank
    line and exit 130; it now says what happened and what to do (a real signal to this process)."""
    from libtraffic.utils.cli import run_cli

    def main() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Python's default handler raises KeyboardInterrupt() here
        time.sleep(60)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as end:
            run_cli(main, interrupted="Interrupted before the tuning started: nothing was saved.")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert end.value.code == 130
    assert capsys.readouterr().err.strip() == "Interrupted before the tuning started: nothing was saved."


def _signed_experiment(storage: Path, name: str) -> Path:
    """An experiment folder as hyper_tune leaves it: Ray's state files, signed as Ray writes them."""
    from libtraffic.tune import signing

    staging = storage / "staging"
    staging.mkdir(parents=True)
    (staging / "experiment_state-2026.json").write_text('{"trial_data": []}')
    (staging / "basic-variant-state-2026.json").write_bytes(b"\x80\x05K\x01.")
    signing.sign_staging(staging)
    folder = storage / name
    staging.rename(folder)
    (folder / "tuner.pkl").write_bytes(b"\x80\x05K\x02.")
    signing.sign_tuner(str(storage), name)
    return folder


def test_resume_refuses_ray_state_files_not_signed_here(tmp_path: Path, monkeypatch) -> None:
    """Section 1: every file Tuner.restore would unpickle must carry this machine's signature; a changed,
    truncated, empty or added one is refused before anything is unpickled (the check reads bytes only)."""
    import pytest

    from libtraffic.tune import signing
    from libtraffic.utils.errors import LibTrafficError

    monkeypatch.chdir(tmp_path)
    folder = _signed_experiment(tmp_path / "storage", "exp")
    signing.verify_experiment(str(tmp_path / "storage"), "exp")
    assert signing.key_path().stat().st_mode & 0o777 == 0o600

    for name, content in [("tuner.pkl", b""), ("experiment_state-2026.json", b'{"trial_data": ['),
                          ("callback-states-2026.pkl", b"cos\nsystem\n(S'touch pwned'\ntR.")]:
        path = folder / name
        before = path.read_bytes() if path.exists() else None
        path.write_bytes(content)
        with pytest.raises(LibTrafficError, match=rf"exp/{name} (carries no signature|does not match its signature)"):
            signing.verify_experiment(str(tmp_path / "storage"), "exp")
        path.write_bytes(before) if before is not None else path.unlink()
    signing.verify_experiment(str(tmp_path / "storage"), "exp")

    # Ray saves again: the new version is signed, and the last one stays valid (an upload cut short can
    # leave the previous file beside the new signatures)
    state = folder / "experiment_state-2026.json"
    first = state.read_bytes()
    state.write_text('{"trial_data": [1]}')
    signing.sign_staging(folder)
    signing.verify_experiment(str(tmp_path / "storage"), "exp")
    state.write_bytes(first)
    signing.verify_experiment(str(tmp_path / "storage"), "exp")

    signing.key_path().write_text("0" * 64)  # another machine's key: nothing of this experiment verifies
    with pytest.raises(LibTrafficError, match="copy that machine's key file here, if you trust it"):
        signing.verify_experiment(str(tmp_path / "storage"), "exp")
    assert not (tmp_path / "pwned").exists()


# ---- hyper_tune.py as a subprocess on one shared Ray head, signals sent at points read from its output ----


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    port = free_port()
    head = start_node(tmp_path_factory.mktemp("ray"), head_port=port, num_cpus=2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.end()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    write_synthetic_dataset(root / "raw_data", DATASET, num_nodes=4, num_days=2, seed=4)
    (root / "one.json").write_text(json.dumps({"hidden_size": {"type": "grid_search", "list": [4]}}))
    (root / "two.json").write_text(json.dumps({"hidden_size": {"type": "grid_search", "list": [4, 6]}}))
    return root


def command(exp_id: str, space: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", DATASET, "--space_file", space, "--exp_id",
            exp_id, "--batch_size", "32", "--num_samples", "1", "--max_epoch", "1", *args]


def environment(ray_address: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TUNE_DISABLE_SIGINT_HANDLER"}
    return {**env, **RAY_ENV, "RAY_ADDRESS": ray_address, "OMP_NUM_THREADS": "1"}


def run(workdir: Path, ray_address: str, cmd: list[str]) -> subprocess.CompletedProcess:
    return warm.run(cmd, cwd=workdir, env=environment(ray_address), capture_output=True, text=True,
                          timeout=TIMEOUT)


def signal_when(workdir: Path, ray_address: str, cmd: list[str], sig: int, printed: str | None = None,
                condition=None) -> tuple[int, str, str]:
    """Run ``cmd``; send ``sig`` once stdout shows ``printed`` (or once ``condition()`` holds); (code, out, err)."""
    err_file = workdir / f"stderr-{os.getpid()}-{id(cmd)}.txt"
    with open(err_file, "w") as err_out:
        # Unbuffered: a line piped in blocks would reach us only when the process flushes at its exit,
        # and the signal would land after the moment it is meant for.
        proc = warm.Popen(cmd, cwd=workdir, env={**environment(ray_address), "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=err_out, text=True)
        out = []
        if printed is not None:
            for line in proc.stdout:
                out.append(line)
                if printed in line:
                    break
        else:
            wait_until(lambda: condition() or proc.poll() is not None, TIMEOUT, "the moment to send the signal",
                       every=0.05)
        assert proc.poll() is None, "".join(out)[-3000:] + err_file.read_text()[-3000:]
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=TIMEOUT)
    err = err_file.read_text()
    err_file.unlink()
    return proc.returncode, "".join(out) + rest, err


def assert_no_crash(out: str, err: str) -> None:
    for noise in ("Traceback", "*** SIG", "Aborted", "Exception ignored", "stack trace"):
        assert noise not in out + err, (noise, err[-3000:])


def next_command(err: str, cmd: list[str]) -> list[str]:
    """The command the interruption message says works next."""
    if "Continue with the same command plus --resume --exp_id" in err:
        return [*cmd, "--resume"]
    assert "Start again with the same command." in err, err[-2000:]
    return cmd


def test_ctrl_c_just_after_the_data_is_prepared_names_a_command_that_works(workdir, ray_head):
    """Section 4, at ~3 s: the message's next command runs (before, it said --resume, which found no experiment)."""
    cmd = command("early", "one")
    code, out, err = signal_when(workdir, ray_head, cmd, signal.SIGINT, printed="Prepared data once in the driver")
    assert code == 130, err[-3000:]
    assert_no_crash(out, err)
    again = run(workdir, ray_head, next_command(err, cmd))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "Best trial config" in again.stdout


def test_ctrl_c_while_trials_are_pending_then_resume(workdir, ray_head):
    """Section 4, at ~6 s: a Ctrl-C while one trial runs and the others wait (PENDING) ends with 130, no
    traceback (before: an AttributeError on the waiting trials' missing config), the waiting trials listed as
    NOT STARTED with their sampled configs, and the printed command finishes the search."""
    (workdir / "three.json").write_text(json.dumps({"hidden_size": {"type": "grid_search", "list": [4, 6, 8]}}))
    # three trials allowed at once, but the 2-CPU head has room for one of 2 CPUs: the others wait as PENDING
    cmd = command("pending", "three", "--max_concurrent", "3", "--cpu_per_trial", "2", "--max_epoch", "4")
    first = workdir / "libtraffic" / "cache" / "hyper_tune" / "pending" / "trial_00000" / "result.json"

    def first_epoch_reported() -> bool:
        return first.is_file() and bool(first.read_text().strip())

    code, out, err = signal_when(workdir, ray_head, cmd, signal.SIGINT, condition=first_epoch_reported)
    assert code == 130, out[-2000:] + err[-3000:]
    assert_no_crash(out, err)
    assert "Continue with the same command plus --resume --exp_id pending." in err, err[-3000:]
    saved = json.loads((workdir / "libtraffic" / "cache" / "pending" / "hyper_tune_results.json").read_text())
    assert saved["interrupted"] is True
    rows = saved["trials"]
    waiting = [r for r in rows if r["status"] == "NOT STARTED"]
    assert len(rows) == 3 and waiting, rows
    assert sorted(r["config"]["hidden_size"] for r in rows) == [4, 6, 8], rows
    again = run(workdir, ray_head, next_command(err, cmd))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    rows = json.loads((workdir / "libtraffic" / "cache" / "pending" / "hyper_tune_results.json").read_text())
    assert [r["status"] for r in rows] == ["DONE"] * 3, rows


def test_sigterm_during_the_final_runs_then_resume_then_tampered(workdir, ray_head):
    """Section 4: SIGTERM in the final runs ends with 143 and the resume command (before: a C stack, exit 134);
    the resume (which verifies the signed Ray state first) reuses the run that finished."""
    # Runs of 4 epochs, one at a time: once the first is saved, the other two take seconds, and the signal
    # (polled every 0.05 s) lands among them; with 1-epoch runs all three could end before it.
    cmd = command("term", "one", "--final_seeds", "3", "--max_concurrent", "1", "--max_epoch", "4")
    durable = workdir / "libtraffic" / "cache" / "term" / "hyper_tune_final_runs.json"

    def one_run_saved() -> bool:
        return durable.is_file() and len(json.loads(durable.read_text())["runs"]) >= 1

    code, out, err = signal_when(workdir, ray_head, cmd, signal.SIGTERM, condition=one_run_saved)
    assert code == 143, out[-2000:] + err[-3000:]
    assert_no_crash(out, err)
    assert "Terminated (SIGTERM): finished trials are kept. Continue with the same command plus --resume " \
           "--exp_id term." in err and "final run(s) that finished are kept too" in err, out[-2000:] + err[-2000:]
    kept = json.loads(durable.read_text())["runs"]
    again = run(workdir, ray_head, next_command(err, cmd))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"Reusing {len(kept)} of 3 final run(s)" in again.stdout

    # Section 1: the storage is writable by others; a tuner.pkl replaced by a pickle that runs a command is
    # refused with exit 2 before Ray unpickles it (before: Ray ran it on Tuner.restore)
    marker = workdir / "code-ran"
    tuner = workdir / "libtraffic" / "cache" / "hyper_tune" / "term" / "tuner.pkl"
    tuner.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    tampered = run(workdir, ray_head, [*cmd, "--resume"])
    assert tampered.returncode == 2, tampered.stdout[-2000:] + tampered.stderr[-3000:]
    assert "term/tuner.pkl does not match its signature" in tampered.stderr and "Traceback" not in tampered.stderr
    assert not marker.exists()


def test_ctrl_c_in_the_end_phase_stops(workdir, ray_head):
    """Section 4: a Ctrl-C once the search ended (best model, test metrics, report) stops with 130 and the
    resume command; before, "stopping after saving" was printed and the run went on to exit 0."""
    code, out, err = signal_when(workdir, ray_head, command("late", "one"), signal.SIGINT,
                                 printed="Best trial config")
    assert code == 130, out[-2000:] + err[-3000:]
    assert "Continue with the same command plus --resume --exp_id late." in err
    assert "stopping after saving" not in err
    assert_no_crash(out, err)


def test_time_budget_cut_is_named_at_the_end_and_in_the_results(workdir, ray_head):
    """Sections 4 and 6: --time_budget_s 1 stops the search mid-way: no traceback, the end says so, and no trial
    is called DONE or STOPPED EARLY without its epochs; a trial that never ran keeps its sampled config."""
    out = run(workdir, ray_head, command("budget", "two", "--max_epoch", "50", "--time_budget_s", "1"))
    assert_no_crash(out.stdout, out.stderr)
    rows = json.loads((workdir / "libtraffic" / "cache" / "budget" / "hyper_tune_results.json").read_text())
    assert {r["status"] for r in rows} <= {"TIME BUDGET", "NOT STARTED"}, rows
    assert all(r["config"]["hidden_size"] in (4, 6) for r in rows), rows
    if out.returncode == 0:
        assert "The run was stopped by --time_budget_s 1:" in out.stdout
    else:
        assert out.returncode == 1 and "No trial finished an epoch within --time_budget_s 1" in out.stderr, \
            out.stderr[-3000:]
