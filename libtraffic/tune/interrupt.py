"""Ctrl-C while tuning: every way it can arrive ends with our resume hint and exit code 130."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ray.tune import Callback

from libtraffic.tune import ray_private


def interrupt_hint(exp_id: str | int) -> str:
    return f"Interrupted: finished trials are kept. Continue with the same command plus --resume --exp_id {exp_id}."


class CtrlC:
    """Ctrl-C while tuning. Inside Tuner.fit() the first asks Ray Tune to stop after saving the
    experiment state, the second stops at once; elsewhere (Ray start-up, shutdown, the end of the
    run) it stops at once. Every way ends with our resume hint, not Ray's; this works with
    TUNE_DISABLE_SIGINT_HANDLER=1 too. A context manager: the previous handler is put back on exit.

    Whether a run was interrupted is read from the trial states afterwards (``unfinished``).
    """

    def __init__(self, exp_id: str | int) -> None:
        self.hint = interrupt_hint(exp_id)
        self._previous = None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self.at_once)  # Ray Tune restores it after its stop
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __getstate__(self) -> dict:  # Ray Tune pickles its callbacks with the experiment
        return {"hint": self.hint, "_previous": None}

    def at_once(self, signum, frame) -> None:
        raise KeyboardInterrupt(self.hint)

    def first(self, signum, frame) -> None:
        print("\nCtrl-C: stopping after saving the experiment state (Ctrl-C again to quit at once).",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, self.at_once)
        if not ray_private.tune_listens_for_stop():
            raise KeyboardInterrupt(self.hint)  # Ray Tune is not listening: stop at once
        ray_private.request_graceful_stop()

    def callback(self) -> Callback:
        return _InstallCtrlC(self)


class _InstallCtrlC(Callback):
    """Installs CtrlC.first once Tuner.fit() has set up Ray Tune's own signal handling."""

    def __init__(self, ctrl_c: CtrlC) -> None:
        self.ctrl_c = ctrl_c

    def setup(self, **info) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.ctrl_c.first)


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """A Ctrl-C during the block takes effect right after it (through the handler that was set), so
    bookkeeping that must stay consistent (a finished run recorded in memory and in its file) is never
    cut in half. Outside the main thread the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def unfinished(results, expected_trials: int) -> bool:
    """Trials still pending or running, or fewer trials than the search would create."""
    done = results.num_terminated + results.num_errors
    return done < len(results) or len(results) < expected_trials
