"""Ray nodes for the tuning tests, started as a user would (`ray start --head`, `ray start --address`).

Each node runs in the foreground (``ray start --block``) in its own process group with its own temp
dir; ending a node sends SIGTERM to that group only, so no other Ray on the machine is touched
(never the `stop` command of the ray CLI). Every port is chosen free here; Ray advertises the machine's own address even
for ``--node-ip-address 127.0.0.1`` (it maps loopback to it), the nodes connect through 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Test-only local clusters: token auth would make the drivers' connections fail.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
STARTED = "Ray runtime started"
# A test node ends at once on SIGTERM: by default `ray start --block` first drains the node for up to
# 30 s (Ray 2.60), and an idle test node waited all of it. No idle workers started for the first
# driver either (the trials run in workers of their own runtime environment; see session.py).
NODE_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_prestart_worker_first_driver": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path
    ray_temp: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def end(self) -> None:
        end_nodes([self])


def end_nodes(nodes: list[Node], grace: float = 10) -> None:
    """SIGTERM to each node's process group at once (ray start --block then ends what it started);
    SIGKILL to a group still there after ``grace`` seconds (its workers, in groups of their own,
    exit when their raylet is gone)."""
    for node in nodes:
        try:
            os.killpg(node.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for node in nodes:
        try:
            node.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=30)
        shutil.rmtree(node.ray_temp, ignore_errors=True)


def start_node(temp: Path, *, head_port: int | None = None, address: str | None = None, num_cpus: int = 1,
               num_gpus: int = 0, env: dict | None = None, timeout: float = 180, prefix: list[str] | None = None) -> Node:
    """A head (``head_port``) or a worker joining ``address``; returns once it is up. ``prefix``: a
    command the node is started through (e.g. ``unshare`` for a node with its own view of the files).

    ``temp`` holds the node's log; Ray's own temp dir is a short one under /tmp, because Ray's
    socket paths inside it must stay under 107 bytes (a pytest tmp path can be too long).
    """
    temp.mkdir(parents=True, exist_ok=True)
    ray_temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--temp-dir", str(ray_temp),
            "--disable-usage-stats", "--object-store-memory", str(100 * 2**20),
            "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
    if head_port is not None:
        args += ["--head", "--port", str(head_port), "--include-dashboard", "false",
                 "--ray-client-server-port", str(free_port())]
    else:
        args += ["--address", address]
    log = temp / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*(prefix or []), *args], env={**(env or os.environ), **RAY_ENV, **NODE_ENV}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=temp, start_new_session=True)
    node = Node(proc, log, ray_temp)
    wait_until(lambda: STARTED in log.read_text() or not node.alive(), timeout, f"Ray node in {temp}")
    assert node.alive(), log.read_text()
    return node


def wait_until(condition, timeout: float, what: str, every: float = 0.3) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
