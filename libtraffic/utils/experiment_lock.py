"""Claiming an experiment folder, so that two runs never write into the same one.

A new experiment creates ``libtraffic/cache/<exp_id>`` with a create-exclusive mkdir: of two runs
started with the same --exp_id, exactly one gets the folder and the other stops at once. While a
run works in the folder it holds a lock on ``<folder>/.lock`` (exclusive while training or
tuning, shared while only evaluating), so a second resume of the same experiment stops too. The
operating system releases the lock when the process ends, even after ``kill -9``.
"""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

LOCK_FILE = ".lock"


def claim_new(folder: Path) -> bool:
    """Create ``folder`` atomically; False if it exists already (another run, or an older experiment)."""
    paths.make_dir(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    except OSError:
        paths.make_dir(folder)  # raises the explanation (read-only working directory, ...)
    return True


def claim_new_experiment(exp_id: str | int | None, taken_hint: str) -> str | int:
    """Create the folder of a new experiment atomically and return its id.

    ``exp_id`` None picks a fresh random id. A given id whose folder exists (an older experiment, or
    another run started at the same moment) stops with ``taken_hint``.
    """
    rng = random.SystemRandom()
    while True:
        candidate = rng.randint(0, 100000) if exp_id is None else exp_id
        folder = paths.experiment_dir(candidate)
        if claim_new(folder):
            return candidate
        if exp_id is not None:
            raise LibTrafficError(f"Experiment folder {folder} already exists; {taken_hint}")


@contextmanager
def hold(folder: Path, exclusive: bool = True) -> Iterator[None]:
    """Lock ``folder`` for this process while the block runs; a run holding it already is an error."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise LibTrafficError(f"Cannot open {folder / LOCK_FILE}: {err.strerror}. The experiment folder must be "
                              "writable.") from err
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise LibTrafficError(
                f"Experiment folder {folder} is in use by another run right now (training, tuning or "
                "evaluating it). Wait until that run ends, or choose another --exp_id."
            ) from err
        yield
    finally:
        os.close(fd)  # also releases the lock


def discard_if_unused(folder: Path, disposable: frozenset[str] = frozenset({LOCK_FILE})) -> None:
    """Remove a claimed folder again when a run failed before writing anything but ``disposable``
    files, so that a mistake leaves no experiment behind and its --exp_id stays free."""
    try:
        if {p.name for p in folder.iterdir()} <= disposable:
            for name in disposable:
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:  # another run opened it meanwhile: leave it
        pass


@contextmanager
def using(folder: Path, exclusive: bool = True, discard_on_failure: Callable[[], bool] = lambda: False,
          disposable: frozenset[str] = frozenset({LOCK_FILE})) -> Iterator[None]:
    """hold() ``folder`` for the block; when the block fails and ``discard_on_failure()`` is true
    (a new experiment), the folder is removed again if it holds only ``disposable`` files."""
    try:
        with hold(folder, exclusive):
            yield
    except BaseException:
        if discard_on_failure():
            discard_if_unused(folder, disposable)
        raise
