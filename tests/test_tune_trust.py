"""Issue 15, the tuning side: Ray's experiment-state uploads, signals at any moment, files a resume reads."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pyarrow.fs
from fsspec.implementations.local import LocalFileSystem

from libtraffic.tune import ray_private

SLOW_UPLOAD_S = 3.0  # how long the first upload below takes; the fixed code waits for it, whatever its length


class _SlowLink(LocalFileSystem):
    """A local folder reached through a slow link: every file written there takes SLOW_UPLOAD_S to open."""

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
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

    signing.key_path().write_text("0" * 64)  # another machine's key: nothing of this experiment verifies
    with pytest.raises(LibTrafficError, match="copy that machine's key file here, if you trust it"):
        signing.verify_experiment(str(tmp_path / "storage"), "exp")
    assert not (tmp_path / "pwned").exists()
