"""The Ray session of hyper_tune: joining a cluster or starting a private instance, the trials'
runtime environment, the cluster's resources and where the experiment lives.

Only Ray's public API is used. A Ray session that was running before hyper_parameter() was called
belongs to the caller and is left running.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from libtraffic.tune import ray_private
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

# Environment variables of cloud storage clients (pyarrow's S3 / GCS / Azure filesystems): with a
# --storage_path URI, the driver's values go to every trial, which writes its checkpoints there.
STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_")
# glibc gives threads that allocate at once arenas of their own (up to 8 per core) and keeps their
# freed memory; every trial runs in a new thread of a reused worker. Two arenas bound that
# (bench/RESULTS.md, "Trial worker memory"). A value in the driver's environment wins.
MALLOC_ARENA_MAX = "2"
TUNER_FILE = "tuner.pkl"
STORAGE_RETRY_S = 20  # how long a request to gs:// storage is retried  # Ray Tune's pickled Tuner, in every experiment folder


def is_uri(storage: str) -> bool:
    return "://" in storage


def storage_root(flag: str | None) -> str:
    """--storage_path as an absolute local folder or a URI; default ./libtraffic/cache/hyper_tune."""
    if not flag:
        return str(paths.hyper_tune_dir())
    if is_uri(flag):
        return flag.rstrip("/")
    return str(paths.root() / os.path.expanduser(flag))


def storage_filesystem(storage: str):
    """(pyarrow filesystem, root path) of --storage_path. Google Cloud Storage retries a request it cannot
    send for 15 minutes by default; ours give up after STORAGE_RETRY_S, so an unreachable gs:// fails
    within a minute, as s3:// does."""
    import pyarrow.fs

    if storage.startswith("gs://") and "retry_limit_seconds=" not in storage:
        storage += ("&" if "?" in storage else "?") + f"retry_limit_seconds={STORAGE_RETRY_S}"
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage if is_uri(storage) else os.path.abspath(storage))
    return filesystem, root.rstrip("/")


def experiment_exists(storage: str, name: str) -> bool:
    """Whether ``storage``/``name`` exists, locally or behind a URI (through pyarrow's filesystems)."""
    import pyarrow.fs

    try:
        filesystem, root = storage_filesystem(storage)
        info = filesystem.get_file_info(f"{root}/{name}")
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise LibTrafficError(f"--storage_path {storage} cannot be opened: {err}. Pass a local or shared folder, "
                              "or a URI pyarrow understands (s3://bucket/path, gs://bucket/path) with its "
                              "credentials set.") from err
    return info.type != pyarrow.fs.FileType.NotFound


def experiment_files(storage: str, name: str) -> list[str]:
    """The names of the files directly in experiment ``name`` (Ray's state files; trial folders excluded)."""
    import pyarrow.fs

    filesystem, root = storage_filesystem(storage)
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(f"{root}/{name}", allow_not_found=True))
    return sorted(info.base_name for info in infos if info.type == pyarrow.fs.FileType.File)


def experiment_restorable(storage: str, name: str) -> bool:
    """Whether Ray saved what Tuner.restore needs of experiment ``name``: its tuner.pkl (written when the
    Tuner is made) and an experiment_state-*.json (written when fit() starts)."""
    files = experiment_files(storage, name)
    return TUNER_FILE in files and any(f.startswith("experiment_state-") and f.endswith(".json") for f in files)


def remove_experiment(storage: str, name: str) -> None:
    """Delete Ray's folder of experiment ``name`` (one this run created and nothing can resume)."""
    filesystem, root = storage_filesystem(storage)
    filesystem.delete_dir(f"{root}/{name}")


def runtime_env(threads: int, storage: str) -> dict:
    """The trials' environment: thread and arena limits, storage credentials for a URI, and our
    code as the working_dir, a temporary folder holding a copy of the libtraffic package only.

    Ray uploads the working_dir once and every node imports libtraffic from its copy. (With a
    working_dir Ray also leaves the driver's script folder and working directory off the workers'
    sys.path, where an older checkout at the same path on another node would shadow it.) The
    caller removes the folder once ray.init() has uploaded it.
    """
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "OMP_NUM_THREADS": str(threads),
           "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)}
    if is_uri(storage):
        env |= {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}
    code = Path(tempfile.mkdtemp(prefix="libtraffic_code_"))
    shutil.copytree(paths.PACKAGE_DIR, code / paths.PACKAGE_DIR.name,
                    ignore=shutil.ignore_patterns("cache", "log", "__pycache__", "*.pyc"))
    return {"working_dir": str(code), "env_vars": env}


@dataclass
class Session:
    """The Ray session hyper_tune runs in; ``owned``: started (or joined) here, so ended here."""

    owned: bool
    address: str | None  # None: a private local instance
    watchdog: subprocess.Popen | None = None

    def describe(self) -> str:
        return f"the Ray cluster at {self.address}" if self.address else "this machine"

    def end(self) -> None:
        """Disconnect (and end a private instance); a Ctrl-C or SIGTERM meanwhile is ignored (the process
        ends right after): an interrupted ray.shutdown() leaves the process to exit with code 1 instead
        of our 130 / 143 and hint."""

        main = threading.current_thread() is threading.main_thread()
        ending = (signal.SIGINT, signal.SIGTERM)
        previous = [signal.signal(sig, signal.SIG_IGN) for sig in ending] if main else []
        try:
            if self.owned:
                ray.shutdown()
            if self.watchdog is not None:
                self.watchdog.stdin.close()  # the watchdog finds nothing left to end
                self.watchdog.wait(timeout=30)
        finally:
            for sig, handler in zip(ending, previous):
                signal.signal(sig, handler)


def _quiet_environment() -> None:
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    # Checkpointing every improving epoch is intended; Ray would warn about it on tiny datasets.
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic trial table: parameters, status, loss
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour codes in redirected output


def _check_reachable(address: str) -> None:
    """Fail at once if nothing listens at a HOST:PORT address (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # 'auto', ray://..., left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise LibTrafficError(f"Nothing answers at the Ray cluster address {address} ({err.strerror or err}). Start "
                              "the cluster with `ray start --head` (see docs/cluster.md) or "
                              "fix --ray_address / RAY_ADDRESS.") from err


def connect(address: str | None, threads: int, storage: str) -> Session:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a private local instance."""

    _quiet_environment()
    quiet_exit_in_callbacks()
    ray_private.quiet_ray_loggers()
    if ray.is_initialized():
        return Session(owned=False, address=ray.get_runtime_context().gcs_address)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_reachable(address)
    # Trial workers' own output stays in Ray's session logs (logs/worker-*.err on each node): the
    # trial table, the results file and the failed trials' errors say what happened.
    env = runtime_env(threads, storage)
    code = env["working_dir"]  # ray.init replaces it with the uploaded package's URI
    kwargs = dict(runtime_env=env, include_dashboard=False, logging_level=logging.WARNING,
                  log_to_driver=False, configure_logging=True)
    if address is None:
        kwargs |= dict(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count())
        # A new local Ray starts one idle worker per CPU for its first driver. Our trials run in
        # workers of their own (our runtime environment), so those sat unused: a one-trial run took
        # 21 s of CPU with them, 17.6 s without. A value in the driver's environment wins.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError) as err:
        raise LibTrafficError(f"Cannot join the Ray cluster at {address}: {err}. Start it with `ray start --head` "
                              "(see docs/cluster.md) or fix --ray_address / RAY_ADDRESS.") from err
    finally:
        shutil.rmtree(code, ignore_errors=True)  # uploaded by ray.init
    return Session(owned=True, address=address, watchdog=_start_watchdog() if address is None else None)


def _start_watchdog() -> subprocess.Popen:
    """A process that ends this driver's private Ray processes if the driver dies (kill -9)."""
    return subprocess.Popen([sys.executable, "-m", "libtraffic.tune.watchdog", str(os.getpid())],
                            stdin=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                filter(None, [str(paths.PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")]))})


def _alive_nodes() -> list[dict]:

    return [node for node in ray.nodes() if node.get("Alive")]


def multi_node() -> bool:
    return len(_alive_nodes()) > 1


def check_resources(session: Session, cpu_per_trial: int, gpu_per_trial: float | None) -> float:
    """GPUs per trial (default 1 if the cluster has a GPU); fails fast if no node fits a trial."""

    gpus = ray.cluster_resources().get("GPU", 0)
    gpu = gpu_per_trial if gpu_per_trial is not None else (1 if gpus else 0)
    nodes = [node["Resources"] for node in _alive_nodes()]
    if not any(n.get("CPU", 0) >= cpu_per_trial and n.get("GPU", 0) >= gpu for n in nodes):
        have = "; ".join(sorted(f"{n.get('CPU', 0):g} CPU(s), {n.get('GPU', 0):g} GPU(s)" for n in nodes))
        raise LibTrafficError(
            f"--cpu_per_trial {cpu_per_trial} --gpu_per_trial {gpu:g} cannot be satisfied: no node of "
            f"{session.describe()} has that much ({len(nodes)} node(s): {have}), so every trial would wait forever. "
            "Lower --cpu_per_trial / --gpu_per_trial (a fraction such as 0.25 shares a GPU)."
        )
    return gpu


def _sees(marker: str) -> bool:
    return os.path.exists(marker)


def check_storage_shared(session: Session, storage: str) -> None:
    """On a cluster of several nodes, a local --storage_path must be visible from every node."""

    here = ray.get_runtime_context().get_node_id()
    others = [node for node in _alive_nodes() if node["NodeID"] != here]
    if is_uri(storage) or not others:
        return
    os.makedirs(storage, exist_ok=True)
    marker = os.path.join(storage, f".visible-{uuid.uuid4().hex}")
    open(marker, "w").close()
    try:
        probe = ray.remote(num_cpus=0)(_sees)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                        .remote(marker) for node in others])
    finally:
        os.remove(marker)
    blind = [node["NodeManagerAddress"] for node, ok in zip(others, seen) if not ok]
    if blind:
        raise LibTrafficError(
            f"--storage_path {storage} is a folder only this machine can see: node(s) {', '.join(blind)} of "
            f"{session.describe()} cannot reach it, so their trials' checkpoints would be lost. Pass a folder every "
            "node mounts (NFS) or a URI such as s3://bucket/path (see docs/cluster.md)."
        )


def quiet_exit_in_callbacks() -> None:
    """Drop the "Exception ignored in ... SystemExit" report of a process Ray is ending.

    Ray ends a worker (a finished trial's, or every worker when a driver shuts down) with SIGTERM,
    and its handler raises SystemExit wherever the process is; inside a weakref or __del__
    callback Python cannot raise it and prints it with a traceback instead. Other unraisable
    exceptions are still reported.
    """
    if getattr(sys.unraisablehook, "_libtraffic", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
            previous(unraisable)

    hook._libtraffic = True
    sys.unraisablehook = hook
