"""Ends a hyper_tune driver's private Ray processes when the driver dies without ending them.

    python -m libtraffic.tune.watchdog DRIVER_PID      (stdin: a pipe the driver holds open)

While the driver lives, its process tree is recorded every second. When the pipe closes (the
driver ended its Ray session and exited, or was killed with kill -9) every recorded process still
alive is ended: first SIGTERM, then SIGKILL. A recorded process is matched by pid and start time,
so a pid reused by an unrelated process is never touched.
"""

from __future__ import annotations

import os
import select
import signal
import sys

import psutil

POLL_S = 1.0
GRACE_S = 5.0


def _tree(driver: psutil.Process) -> dict[int, float]:
    try:
        children = driver.children(recursive=True)
    except psutil.Error:
        return {}
    tree = {}
    for child in children:
        try:
            if child.pid != os.getpid():
                tree[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return tree


def _still_ours(recorded: dict[int, float]) -> list[psutil.Process]:
    alive = []
    for pid, started in recorded.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def watch(driver_pid: int) -> None:
    driver = psutil.Process(driver_pid)
    recorded: dict[int, float] = {}
    while True:
        recorded |= _tree(driver)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break  # the driver closed the pipe or died
    left = _still_ours(recorded)
    for process in left:
        process.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(left, timeout=GRACE_S)
    for process in left:
        process.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver
    watch(int(sys.argv[1]))
