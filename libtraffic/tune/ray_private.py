"""The few places where hyper_tune relies on Ray behaviour that Ray's public API does not offer.

Each is kept here, small, with the reason; if a Ray upgrade changes one, this is the file to fix.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

# Ray loggers quieted during a search, with why. Ray's public API has no switch for these messages.
QUIET_LOGGERS = {
    # A failed trial is listed with its error at the end and in the trial table (with its error
    # file); Ray's full traceback dump per failure would bury the table.
    "ray.tune.execution.tune_controller": logging.CRITICAL,
    # Ray's warnings on Ctrl-C (its Tuner.restore hint) give way to ours (--resume --exp_id).
    "ray.tune.tune": logging.ERROR,
    # Reading the state of trials that never started warns about their missing results.
    "ray.tune.analysis.experiment_analysis": logging.ERROR,
    # One line per checkpoint a trial saves, in the trial's worker.
    "ray.train._internal.storage": logging.WARNING,
    # A new private local instance enables token authentication and says so; the instance is ours.
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


# Messages dropped, by logger and start. Ray's public API has no switch for these either.
QUIET_MESSAGES = {
    # Ray's list of the trials that failed or did not finish: our per-trial lines and final table say it.
    "ray.tune.tune": ("Trials did not complete",),
}


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


# Lines of Ray's classic status table (CLIReporter, --verbose) that progress.StatusTable rewrites: the table
# names Ray's staging folder under /tmp/ray as the results' folder, and the best trial by Ray's trial id.
# CLIReporter has no public option for either.
STATUS_LOGDIR_LINE = "Result logdir:"
STATUS_BEST_LINE = "Current best trial: "


def quiet_ray_loggers() -> None:
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for name, starts in QUIET_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))


def creation_index(trial) -> int:
    """The running number Ray gave a trial when its searcher created it (the same on every run and resume
    of an experiment), read from the start of its experiment tag ('3_hidden_size=8'). Ray's
    BasicVariantGenerator (BasicSearch) counts from 0, its SearchGenerator (every other searcher) from 1:
    see first_creation_index.

    Why: trial seeds must repeat across runs and resumes, so they derive from this number. Ray's public
    Trial API has no creation counter, and a counter of our own would restart at 0 when Ray restores an
    experiment; the tag is what Ray itself stores with each trial.
    """
    index, _, _ = str(trial.experiment_tag).partition("_")
    if not index.isdigit():
        raise ValueError(f"Trial {trial} has no creation index in its experiment tag {trial.experiment_tag!r}.")
    return int(index)


def first_creation_index(search_alg) -> int:
    """The creation index (see creation_index) of the first trial ``search_alg`` creates: 0 for Ray's
    BasicVariantGenerator, 1 for a Searcher (which Ray wraps in its SearchGenerator, counting from 1)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return 0 if isinstance(search_alg, BasicVariantGenerator) else 1


def tune_listens_for_stop() -> bool:
    """Whether Ray Tune's fit() is running with its signal handling on (it is off with
    TUNE_DISABLE_SIGINT_HANDLER=1, and outside fit()).

    Why: a graceful stop (save the experiment state, then return from fit()) can only be requested
    through the SIGUSR1 handler Ray Tune installs in fit(); Ray has no public call for it.
    """
    return signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def request_graceful_stop() -> None:
    """Ask Ray Tune's running fit() to stop after saving the experiment state (see tune_listens_for_stop)."""
    signal.raise_signal(signal.SIGUSR1)


_STATE_LOGGER = "ray.tune.execution.experiment_state"
_patch_lock = threading.Lock()
_after_save: Callable[[str], None] | None = None


def upload_experiment_state_in_turn(after_save: Callable[[str], None] | None = None) -> None:
    """Make Ray Tune write its experiment state only when its previous upload has ended.

    Why: Ray Tune (2.60, ``_ExperimentCheckpointManager.sync_up_experiment_state``) writes the
    experiment state into its local staging folder (experiment_state-*.json in place; the searcher
    and callback states as a temporary file renamed into place) and then uploads that folder in a
    background thread. On a forced save (one after every trial checkpoint, with
    ``CheckpointConfig(num_to_keep=1)``) it writes before waiting for the previous upload, so an
    upload to a URI (s3://, gs://) that is still listing or copying the folder can meet a file
    renamed away under it (an ERROR with a traceback: tmp-basic-variant-state-*.json not found) or
    a half-written experiment_state-*.json, which a resume would then read. Waiting for the
    previous upload before writing closes that window; Ray waits for it right after writing anyway.
    Ray has no public switch for this. Installed once, in the driver.

    ``after_save(folder)`` runs once Ray has written its state into its staging folder, before that
    folder is uploaded (signing.py signs the state files there). The result loggers' downloads on
    --resume are put in turn with the same uploads (_restore_trial_logs_after_upload).
    """
    global _after_save
    _after_save = after_save
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    with _patch_lock:
        original = _ExperimentCheckpointManager.sync_up_experiment_state
        if getattr(original, "_libtraffic", False):
            return

        def sync_up_experiment_state(self, save_fn, force: bool = False, wait: bool = False):
            global _uploading_storage
            _uploading_storage = self._storage

            def save_after_upload() -> None:
                _wait_for_upload(self._storage)
                save_fn()
                if _after_save is not None:
                    _after_save(self._storage.experiment_driver_staging_path)

            return original(self, save_after_upload, force=force, wait=wait)

        sync_up_experiment_state._libtraffic = True
        _ExperimentCheckpointManager.sync_up_experiment_state = sync_up_experiment_state
        _restore_trial_logs_after_upload()


# The storage whose experiment folder the driver uploads (set by the patched sync_up_experiment_state).
_uploading_storage = None


def _restore_trial_logs_after_upload() -> None:
    """Make Ray Tune's result loggers download a resumed trial's progress.csv / result.json only when the
    running upload of the experiment folder has ended.

    Why: on --resume with a URI storage, each logger (LoggerCallback._restore_from_remote, Ray 2.60)
    downloads the trial's file from storage into the driver's staging folder, while a background thread
    may be uploading that same folder (the experiment state sync). The upload could list the file the
    download had just created, still empty or half written, and send it to the URI: the download then
    reads an object that shrank under it (S3: InvalidRange, an ERROR with a traceback) and the rows the
    trial had before the interruption are lost from its progress.csv. No new upload starts while a
    logger runs (both run in the driver's loop), so waiting for the running one closes the window.
    Ray has no public switch for this.
    """
    from ray.tune.logger.logger import LoggerCallback

    original = LoggerCallback._restore_from_remote
    if getattr(original, "_libtraffic", False):
        return

    def _restore_from_remote(self, file_name: str, trial) -> None:
        if _uploading_storage is not None:
            _wait_for_upload(_uploading_storage)
        return original(self, file_name, trial)

    _restore_from_remote._libtraffic = True
    LoggerCallback._restore_from_remote = _restore_from_remote


def _wait_for_upload(storage) -> None:
    """Wait for the running upload of the experiment folder; a failed one is logged as Ray logs it."""
    try:
        storage.syncer.wait()
    except Exception:  # noqa: BLE001 - Ray logs a failed upload and goes on; the next one retries
        logging.getLogger(_STATE_LOGGER).error(
            "Saving experiment state to storage at '%s' failed with exception: ", storage.experiment_fs_path,
            exc_info=True)
