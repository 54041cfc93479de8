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
