"""Subprocesses of the real CLIs without their seconds of library imports: a drop-in for the part of
``subprocess.run`` / ``subprocess.Popen`` the tests use.

Each CLI run in the tests is a process of its own running the script (``python run_model.py ...``,
``python -m libtraffic.report ...``) from its ``__main__`` block, with its own working directory,
environment, standard streams, exit code and signals, as with ``subprocess``. What differs is how it
starts: a server process of this module (one per test process) has imported the third-party
libraries (torch, pandas, pyarrow, matplotlib) once and forks a copy of itself for each run, which then
runs the script as ``python`` would. Our own code (libtraffic) is never imported by the server, so
each run imports it afresh under its own environment and working directory. Importing them is ~2.5-3 s
of CPU a process, over a quarter of the suite's CPU time before this (the suite is CPU-bound).

There is a server for each set of values of the variables libraries read when they load (OMP_*,
TORCH*, PYTHON*, ...): a run forks from one that loaded them as the run would have. A run goes to a
plain ``subprocess`` (cold) when a server cannot stand in for a new interpreter: another program than
this Python, ``python -c``, ``cold=True`` (a test whose subject is the start itself), or
LIBTRAFFIC_COLD_CLI=1 (the whole suite cold, as a check). The README's commands run cold (test_docs).

What forked runs share: the server's hash seed (PYTHONHASHSEED). Tests that compare two runs for
reproducibility run them cold.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
# The libraries the server imports once; never libtraffic.
# Not Ray: a process that imported it ends with exit code 1 on an uncaught KeyboardInterrupt instead of
# Python's death by SIGINT, and run_model.py, which never imports it, would then differ from a cold run.
PRELOADED = ("numpy", "pandas", "torch", "torch._dynamo", "torch.optim", "pyarrow.fs", "matplotlib",
             "matplotlib.figure")
# Variables read when those libraries load (or by the interpreter at start), which pick the server; those
# only read while running are not.
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "PYTORCH", "PYTHON", "LD_", "CUDA", "MPL",
                        "NUMEXPR", "ARROW", "JEMALLOC")
RUNTIME_ONLY = {"PYTHONUNBUFFERED", "PYTHONPATH"}


def _import_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k not in RUNTIME_ONLY}


# ---------------------------------------------------------------------------------------------- client

class _Server:
    """A fork server of this test process, started on first use with the environment of its first run,
    ended with the test process."""

    def __init__(self, env: dict) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="warm-"))
        self.address = str(self.folder / "socket")
        # stdin is the server's lifeline: it exits when this process closes the pipe (or dies).
        self.proc = subprocess.Popen([sys.executable, __file__, self.address], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        ready = self.proc.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"the warm CLI server did not start (exit {self.proc.wait()})")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for leftover in self.folder.iterdir():
            leftover.unlink()
        self.folder.rmdir()


# One server per set of import-time variables (IMPORT_TIME_PREFIXES): a run is forked from a server that
# loaded the libraries under the values the run has.
_servers: dict[frozenset, _Server] = {}
_servers_lock = threading.Lock()


def _server_for(env: dict) -> _Server:
    key = frozenset(_import_time_env(env).items())
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server.proc.poll() is not None:
            server = _servers[key] = _Server(env)
            import atexit

            atexit.register(server.close)
        return server


def _warm_target(args: list[str]) -> tuple[str, str] | None:
    """("path", script) or ("module", name) for ``python script ...`` / ``python -m name ...``, else None."""
    if len(args) < 2 or args[0] != sys.executable:
        return None
    if args[1] == "-m" and len(args) > 2:
        return "module", args[2]
    if args[1].startswith("-"):
        return None
    return "path", args[1]


class WarmPopen:
    """A forked run of a CLI with the subset of subprocess.Popen's interface the tests use."""

    def __init__(self, args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
                 start_new_session=False) -> None:
        self.args = list(map(str, args))
        self.returncode: int | None = None
        self.text = bool(text)
        kind, target = _warm_target(self.args)
        cwd = str(cwd if cwd is not None else os.getcwd())
        if kind == "path":
            target = str(Path(cwd, target).resolve())  # a relative script is found from the run's folder
        child_fds, self._close_after, parent_ends = [], [], {}
        null = None
        for name, spec, default in (("stdin", stdin, 0), ("stdout", stdout, 1), ("stderr", stderr, 2)):
            if spec is None:
                child_fds.append(default)
            elif spec == PIPE:
                read, write = os.pipe()
                child_end, parent_end = (read, write) if name == "stdin" else (write, read)
                child_fds.append(child_end)
                self._close_after.append(child_end)
                parent_ends[name] = parent_end
            elif spec == DEVNULL:
                null = null if null is not None else os.open(os.devnull, os.O_RDWR)
                child_fds.append(null)
            elif spec == STDOUT and name == "stderr":
                child_fds.append(child_fds[1])
            else:
                child_fds.append(spec if isinstance(spec, int) else spec.fileno())
        if null is not None:
            self._close_after.append(null)
        mode = "" if self.text else "b"
        self.stdin = os.fdopen(parent_ends["stdin"], "w" + mode) if "stdin" in parent_ends else None
        self.stdout = os.fdopen(parent_ends["stdout"], "r" + mode) if "stdout" in parent_ends else None
        self.stderr = os.fdopen(parent_ends["stderr"], "r" + mode) if "stderr" in parent_ends else None
        env = dict(os.environ if env is None else env)
        request = {"kind": kind, "target": target, "argv": self.args[2:] if kind == "path" else self.args[3:],
                   "cwd": cwd, "env": env,
                   "new_session": bool(start_new_session)}
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(_server_for(env).address)
        socket.send_fds(self._conn, [json.dumps(request).encode() + b"\n"], child_fds)
        for fd in self._close_after:
            os.close(fd)
        self._reply = self._conn.makefile("rb")
        self.pid = int(self._reply.readline())
        self._readers: dict[str, threading.Thread] = {}
        self._output: dict[str, object] = {}

    # -- status

    def _collect(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return None
        line = self._reply.readline()
        self.returncode = os.waitstatus_to_exitcode(int(line))
        self._reply.close()
        self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    # -- signals

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # -- output

    def _read_all(self, name: str) -> None:
        stream = getattr(self, name)
        data = stream.read()
        stream.close()
        if self.text:
            data = data.replace("\r\n", "\n").replace("\r", "\n")
        self._output[name] = data

    def communicate(self, input=None, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        for name in ("stdout", "stderr"):
            if getattr(self, name) is not None and name not in self._readers:
                self._readers[name] = threading.Thread(target=self._read_all, args=(name,), daemon=True)
                self._readers[name].start()
        for thread in self._readers.values():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._output.get("stdout"), self._output.get("stderr")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None and not stream.closed:
                stream.close()
        self.wait()


def Popen(args, **kwargs):  # noqa: N802 - the name of what it stands in for
    """subprocess.Popen, forked from the warm server when it can stand in (see the module's text)."""
    supported = {"cwd", "env", "stdin", "stdout", "stderr", "text", "start_new_session"}
    cold = kwargs.pop("cold", False) or os.environ.get("LIBTRAFFIC_COLD_CLI") == "1"
    if cold or set(kwargs) - supported or _warm_target(list(map(str, args))) is None:
        return subprocess.Popen(args, **kwargs)
    return WarmPopen(args, **kwargs)


def run(args, *, capture_output: bool = False, timeout: float | None = None, check: bool = False, input=None,
        **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run through ``Popen`` above."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = PIPE
    if input is not None:
        kwargs["stdin"] = PIPE
    proc = Popen(args, **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


# ---------------------------------------------------------------------------------------------- server

def _serve(address: str) -> tuple[dict, list[int]] | None:
    """Accept runs until stdin closes. Returns only in a forked run: its request and standard streams."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the waiters below are reaped by the kernel
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.flush()
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready:
            return None
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while not message.endswith(b"\n"):
            message += conn.recv(1 << 20)
        request = json.loads(message)
        if os.fork() == 0:  # the waiter: forks the run, reports its pid and then its exit status
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            pid = os.fork()
            if pid == 0:
                conn.close()
                return request, fds
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            try:
                conn.sendall(f"{status}\n".encode())
            finally:
                os._exit(0)
        conn.close()
        for fd in fds:
            os.close(fd)


def _become(request: dict, fds: list[int]) -> None:
    """Turn this forked copy into ``python <script> ARGS`` (or ``python -m module ARGS``) as started afresh."""
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding="utf-8")
    for fd, name in ((1, "stdout"), (2, "stderr")):
        line_buffered = fd == 2 or os.isatty(fd)
        stream = io.TextIOWrapper(io.open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False),
                                  encoding="utf-8", errors="backslashreplace" if fd == 2 else "strict",
                                  line_buffering=line_buffered, write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    first = os.path.dirname(request["target"]) if request["kind"] == "path" else os.getcwd()
    sys.path[:] = [first, *extra, *_BASE_PATH]
    if request["kind"] == "path":
        sys.argv = [request["target"], *request["argv"]]
    else:
        sys.argv = ["-m", request["target"], *request["argv"]]


_BASE_PATH: list[str] = []

if __name__ == "__main__":
    _BASE_PATH = sys.path[1:]  # the interpreter's own entries, without this file's folder
    for name in PRELOADED:
        __import__(name)
    served = _serve(sys.argv[1])
    if served is None:
        sys.exit(0)
    _become(*served)
    del served
    import runpy

    if sys.argv[0] == "-m":
        runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
