"""Helpers shared by the benchmark scripts: the dataset, machine facts, medians, RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
DATASET = "METR_LA_BENCH"
NUM_NODES, NUM_DAYS, SEED = 207, 119, 0  # METR_LA: 207 sensors x 34272 five-minute steps
TASK, MODEL = "traffic_state_pred", "GRU"
GIB = 1024**3
START_LOAD = os.getloadavg()  # the scripts import this module first
HEADER = """# Benchmark results

Written by the scripts in bench/, each refreshing only its own section. From the repository root:

    python bench/make_data.py     # once: bench/raw_data/METR_LA_BENCH (207 sensors x 34272 steps)
    python bench/bench_data.py    # data preparation, cold and cached, in fresh processes
    python bench/bench_train.py   # one training epoch, rnn_impl plain vs fast
    python bench/check_fast.py    # fast == plain (outputs and gradients) over many configurations
    PYTHONPATH=. python bench/bench_report.py  # the tuning report's time for 50 trials

Timings on a shared 2-core machine are noisy: compare medians, and look at the load average noted
with each section.
"""


def dataset_dir() -> Path:
    return BENCH_DIR / "raw_data" / DATASET


def dataset_ready() -> bool:
    return (dataset_dir() / f"{DATASET}.dyna").is_file()


def require_dataset() -> None:
    if not dataset_ready():
        sys.exit(f"{dataset_dir()} is missing; run `python bench/make_data.py` first.")


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in START_LOAD)
    return (f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load} at start")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]])


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md, leaving the other sections alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    section = (f"{start}\n## {title}\n\n- Date: {stamp}\n- Machine: {machine()}\n"
               f"- Command (from the repository root): `{command()}`\n\n{body.rstrip()}\n{end}")
    text = RESULTS.read_text() if RESULTS.is_file() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text if text.endswith("\n") else text + "\n")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (also readable as plain text)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
