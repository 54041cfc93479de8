"""Ctrl-C and SIGTERM while tuning: every way they can arrive ends with our resume hint and exit code
130 (Ctrl-C) or 143 (SIGTERM)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ray.tune import Callback

from libtraffic.tune import ray_private


def interrupt_hint(exp_id: str | int, what: str = "Interrupted") -> str:
    return f"{what}: finished trials are kept. Continue with the same command plus --resume --exp_id {exp_id}."


def stop_kind(stop: BaseException) -> tuple[type[KeyboardInterrupt], str]:
    """(the exception class, the word) of a stop: SIGTERM or Ctrl-C."""
    if isinstance(stop, Terminated) or getattr(stop, "terminated", False):
        return Terminated, "Terminated (SIGTERM)"
    return KeyboardInterrupt, "Interrupted"


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops like a Ctrl-C at once (the same saving and hint); hyper_tune.py then exits with 143."""


def raise_terminated(signum, frame) -> None:
    raise Terminated("Terminated (SIGTERM).")


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
        self._in_fit = False

    def __enter__(self) -> "CtrlC":
        self._in_fit = False
        if threading.current_thread() is threading.main_thread():
            self._previous = (signal.signal(signal.SIGINT, self.at_once), signal.getsignal(signal.SIGTERM))
            self.handle_sigterm()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous[0])
            signal.signal(signal.SIGTERM, self._previous[1])

    def __getstate__(self) -> dict:  # Ray Tune pickles its callbacks with the experiment
        return {"hint": self.hint, "_previous": None, "_in_fit": False}

    def handle_sigterm(self) -> None:
        """SIGTERM stops at once with the hint. Called again once Ray is started: its core worker puts a
        handler of its own on SIGTERM that dumps a C stack and aborts (exit 134)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.terminated)

    def at_once(self, signum, frame) -> None:
        raise KeyboardInterrupt(self.hint)

    def terminated(self, signum, frame) -> None:
        raise Terminated(self.hint.replace("Interrupted", stop_kind(Terminated())[1], 1))

    def fit_ended(self) -> None:
        """Tuner.fit() returned: Ray Tune no longer listens for a graceful stop (it leaves its handlers
        set), so from here a Ctrl-C stops at once."""
        self._in_fit = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.at_once)

    def first(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, self.at_once)
        if not (self._in_fit and ray_private.tune_listens_for_stop()):
            raise KeyboardInterrupt(self.hint)  # Ray Tune is not listening: stop at once
        print("\nCtrl-C: stopping after saving the experiment state (Ctrl-C again to quit at once).",
              file=sys.stderr, flush=True)
        ray_private.request_graceful_stop()

    def callback(self) -> Callback:
        return _InstallCtrlC(self)


class _InstallCtrlC(Callback):
    """Installs CtrlC.first once Tuner.fit() has set up Ray Tune's own signal handling."""

    def __init__(self, ctrl_c: CtrlC) -> None:
        self.ctrl_c = ctrl_c

    def setup(self, **info) -> None:
        if threading.current_thread() is threading.main_thread():
            self.ctrl_c._in_fit = True
            signal.signal(signal.SIGINT, self.ctrl_c.first)


@contextmanager
def ctrl_c_deferred(notice: str | None = None) -> Iterator[None]:
    """A Ctrl-C or SIGTERM during the block takes effect right after it (through the handler that was set),
    so bookkeeping that must stay consistent (a finished run recorded in memory and in its file) is never
    cut in half. With ``notice`` (a block that can take seconds), the first Ctrl-C prints it and a second
    one takes effect at once. Outside the main thread the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    deferred = (signal.SIGINT, signal.SIGTERM)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def defer(signum, frame) -> None:
        if notice is not None and signum == signal.SIGINT and signal.SIGINT in caught:
            restore()
            _take_effect(previous[signum], signum)  # the second Ctrl-C: at once
            return
        caught.append(signum)
        if notice is not None and signum == signal.SIGINT:
            print(f"\n{notice}", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, defer) for sig in deferred}
    try:
        yield
    finally:
        restore()
        if caught:
            _take_effect(previous[caught[0]], caught[0])


def _take_effect(handler, signum: int) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


RAY_STARTING = "Ctrl-C: stopping once Ray has started (Ctrl-C again to quit at once)."
