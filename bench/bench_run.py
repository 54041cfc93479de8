"""Whole-run benchmark: a cold `run_model.py --max_epoch 1` on the METR_LA-sized dataset, per thread setting.

    python bench/bench_run.py [--repeats N] [--threads 1 0] [--loads quiet loaded]

Each run is the real CLI in a fresh working directory (no dataset cache: data preparation, one
training epoch, validation, test evaluation, result files), timed from process start to exit; the
log's timestamps split it into stages. `--num_threads 0` is torch's default (one thread per core).
"loaded" runs a second identical run_model.py at the same time (the machine busy with other work),
and times the first. Figures go to bench/RESULTS.md (section "run").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BENCH_DIR, DATASET, MODEL, TASK, dataset_dir, median, require_dataset, table, write_section

REPO = BENCH_DIR.parent
TARGET_S = 39.0
LIBCITY_S = 195.0
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - \w+ - (.*)$")
# Log messages that end each stage (first match, in order).
MARKS = [("start", r"Log file:"), ("data", r"Data: \d+ nodes"), ("epoch", r"Epoch \[0/1\]"),
         ("test", r"Saved evaluation to")]


def _workdir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench_run_", dir=BENCH_DIR))
    (folder / "raw_data").mkdir()
    os.symlink(dataset_dir(), folder / "raw_data" / DATASET)
    return folder


def _command(threads: int, exp_id: str) -> list[str]:
    return [sys.executable, str(REPO / "run_model.py"), "--task", TASK, "--model", MODEL, "--dataset", DATASET,
            "--max_epoch", "1", "--num_threads", str(threads), "--exp_id", exp_id]


def _stages(log: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    for line in log.read_text().splitlines():
        match = STAMP.match(line)
        if not match:
            continue
        when = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for name, pattern in MARKS:
            if name not in times and re.search(pattern, match.group(2)):
                times[name] = when
    return {"data": times["data"] - times["start"], "epoch": times["epoch"] - times["data"],
            "test": times["test"] - times["epoch"]}


def one_run(threads: int, loaded: bool) -> dict[str, float]:
    folder = _workdir()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.cpu_count())}
    try:
        other = None
        if loaded:
            other = subprocess.Popen(_command(threads, "load"), cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        start = time.perf_counter()
        out = subprocess.run(_command(threads, "timed"), cwd=folder, env=env, capture_output=True, text=True)
        total = time.perf_counter() - start
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        stages = _stages(next((folder / "libtraffic" / "log").glob("timed-*.log")))
        if other is not None:
            other.wait()
        return {"total": total, **stages}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="num_threads values (0 = torch's default)")
    parser.add_argument("--loads", nargs="+", default=["quiet", "loaded"], choices=["quiet", "loaded"])
    args = parser.parse_args()
    require_dataset()
    rows, results = [], {}
    for load in args.loads:
        for threads in args.threads:
            runs = [one_run(threads, load == "loaded") for _ in range(args.repeats)]
            med = {k: median([r[k] for r in runs]) for k in runs[0]}
            results[(load, threads)] = med
            label = "torch default (one per core)" if threads == 0 else str(threads)
            rows.append([load, label, f"{med['total']:.1f}", f"{med['data']:.1f}", f"{med['epoch']:.1f}",
                         f"{med['test']:.1f}", ", ".join(f"{r['total']:.1f}" for r in runs)])
            print(rows[-1], flush=True)
    body = table(["machine", "num_threads", "whole run s (median)", "data prep s", "epoch s", "test eval s",
                  "all runs s"], rows)
    body += (f"\n\nA cold `run_model.py --max_epoch 1` (fresh cache) on the METR_LA-sized data; target < {TARGET_S:.0f} s, "
             f"LibCity ~{LIBCITY_S:.0f} s. \"loaded\" = a second identical run at the same time. Stages from the "
             "log's timestamps: data = start to data ready, epoch = training + validation, test = test evaluation "
             "and result files (the process's import and exit time is in the whole run only).")
    write_section("run", "Whole run: cold run_model.py, one epoch, by num_threads", body)


if __name__ == "__main__":
    main()
