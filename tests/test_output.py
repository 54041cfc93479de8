"""What a run prints (issue 17): a progress bar with batches/s and ETA on a terminal only, plain epoch lines with
the time left, and the GPU notice only for a user who asked for a GPU."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import torch

from tests import warm
from conftest import REPO_ROOT, SUBPROCESS_ENV, run_cli

FLAGS = ("--model", "GRU", "--dataset", "TINY", "--max_epoch", "2", "--batch_size", "16", "--hidden_size", "8")


def _run_on_terminal(cwd: Path, *args: str) -> tuple[int, str, str]:
    """run_model.py with stderr on a pseudo-terminal (as in an interactive shell) and stdout piped."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns of a real window
    proc = warm.Popen([sys.executable, str(REPO_ROOT / "run_model.py"), *args], cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    os.close(leader)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only_and_gpu_notice_only_when_asked(tiny_dataset, workdir):
    notice = "no CUDA device is available"
    code, out, terminal = _run_on_terminal(workdir, *FLAGS, "--exp_id", "tty", "--gpu", "true")
    assert code == 0, out[-2000:] + terminal[-2000:]
    assert "epoch 0/1" in terminal and "batch/s" in terminal  # tqdm's bar: the epoch, its rate and the ETA
    assert "Epoch [0/2]" in out and ", about " in out and " left" in out  # the plain line says how long is left
    assert torch.cuda.is_available() or notice in out  # asked for a GPU: told there is none

    piped = run_cli(REPO_ROOT, workdir, *FLAGS, "--exp_id", "piped")
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "batch/s" not in piped.stderr + piped.stdout and "Epoch [1/2]" in piped.stdout
    assert notice not in piped.stdout  # gpu true is the default: not worth a line
    if not torch.cuda.is_available():
        assert notice in next((workdir / "libtraffic" / "log").glob("piped-*.log")).read_text()  # at debug level
