"""The tuning report's time for a 50-trial experiment (METR_LA-sized predictions), median of runs.

    python bench/bench_report.py [--runs 5]

Writes a synthetic experiment folder in the real formats (results json with 50 trial records of
up to 100 epochs, settings, best config, evaluator csv, predictions npz of 6850 test samples x 12
horizons x 207 sensors) into a temporary directory, then times the report in this process
(write_report) and as the command a user runs (python -m libtraffic.report, imports included).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TRIALS, MAX_EPOCH, NODES, SAMPLES = 50, 100, 207, 6850  # METR_LA's test split: 6850 samples


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from libtraffic.report import write_report
    from libtraffic.report.synthetic import write_synthetic_experiment

    home = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the report reads ./libtraffic/cache/<exp_id>
        folder = Path(tmp) / "libtraffic" / "cache" / "bench"
        write_synthetic_experiment(folder, trials=TRIALS, max_epoch=MAX_EPOCH, nodes=NODES, samples=SAMPLES)
        inproc, inproc_cpu = [], []
        for _ in range(args.runs):
            start, cpu = time.perf_counter(), time.process_time()
            path = write_report("bench")
            inproc.append(time.perf_counter() - start)
            inproc_cpu.append(time.process_time() - cpu)
        env = {**os.environ, "PYTHONPATH": str(benchlib.BENCH_DIR.parent)}
        cli, cli_cpu = [], []
        for _ in range(args.runs):
            start, cpu = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-m", "libtraffic.report", "--exp_id", "bench"], env=env, check=True,
                           capture_output=True)
            cli.append(time.perf_counter() - start)
            cli_cpu.append(_children_cpu() - cpu)
        size = path.stat().st_size / 1e6
        pngs = len(list((folder / "hyper_tune_report").glob("*.png")))
        os.chdir(home)
    rows = [[what, str(args.runs), f"{benchlib.median(wall):.2f}", f"{benchlib.median(cpu):.2f}",
             ", ".join(f"{t:.2f}" for t in wall)]
            for what, wall, cpu in (("write_report (in process)", inproc, inproc_cpu),
                                    ("python -m libtraffic.report", cli, cli_cpu))]
    body = (f"Synthetic experiment in the real file formats: {TRIALS} trials (up to {MAX_EPOCH} epochs each, "
            f"some stopped early, one failed), 4 tuned parameters, predictions {SAMPLES} x 12 x {NODES} x 1. "
            f"The report has {pngs} figures; the HTML is {size:.1f} MB. 'python -m' includes the interpreter "
            "start and imports (matplotlib, optuna, pandas). 'CPU s' is the process's CPU time: on a loaded "
            "machine it is close to what a quiet one would take in wall time (the report is single-threaded).\n\n"
            + benchlib.table(["what", "runs", "median s", "median CPU s", "all runs s"], rows))
    benchlib.write_section("bench_report", "Tuning report, 50 trials (bench/bench_report.py)", body)
    print(body)


if __name__ == "__main__":
    main()
