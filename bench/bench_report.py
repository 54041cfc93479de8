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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TRIALS, MAX_EPOCH, NODES, SAMPLES = 50, 100, 207, 6850  # METR_LA's test split: 6850 samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from libtraffic.report import write_report
    from libtraffic.report.synthetic import write_synthetic_experiment

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        folder = Path(tmp) / "libtraffic" / "cache" / "bench"
        write_synthetic_experiment(folder, trials=TRIALS, max_epoch=MAX_EPOCH, nodes=NODES, samples=SAMPLES)
        inproc = []
        for _ in range(args.runs):
            start = time.perf_counter()
            path = write_report("bench")
            inproc.append(time.perf_counter() - start)
        env = {**os.environ, "PYTHONPATH": str(benchlib.BENCH_DIR.parent)}
        cli = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "libtraffic.report", "--exp_id", "bench"], env=env, check=True,
                           capture_output=True)
            cli.append(time.perf_counter() - start)
        size = path.stat().st_size / 1e6
        pngs = len(list((folder / "hyper_tune_report").glob("*.png")))
    rows = [["write_report (in process)", str(args.runs), f"{benchlib.median(inproc):.2f}",
             ", ".join(f"{t:.2f}" for t in inproc)],
            ["python -m libtraffic.report", str(args.runs), f"{benchlib.median(cli):.2f}",
             ", ".join(f"{t:.2f}" for t in cli)]]
    body = (f"Synthetic experiment in the real file formats: {TRIALS} trials (up to {MAX_EPOCH} epochs each, "
            f"some stopped early, one failed), 4 tuned parameters, predictions {SAMPLES} x 12 x {NODES} x 1. "
            f"The report has {pngs} figures; the HTML is {size:.1f} MB. 'python -m' includes the interpreter "
            "start and imports (matplotlib, optuna, pandas).\n\n"
            + benchlib.table(["what", "runs", "median s", "all runs s"], rows))
    benchlib.write_section("bench_report", "Tuning report, 50 trials (bench/bench_report.py)", body)
    print(body)


if __name__ == "__main__":
    main()
