"""Trial worker memory: RSS of the reused Ray worker after each trial, MALLOC_ARENA_MAX 2 vs unlimited.

    python bench/bench_arena.py [--trials 10] [--num_nodes 50] [--num_days 14]

Runs hyper_tune.py twice on a private Ray instance (its own RAY_TMPDIR) with --max_concurrent 1, so
one worker process trains every trial in turn (reused actor): once as shipped (the trials' runtime
environment sets MALLOC_ARENA_MAX=2) and once with MALLOC_ARENA_MAX=64 in the driver's environment,
which hyper_tune forwards instead (64 is above glibc's own limit of 8 arenas per core, so this is
glibc's default behaviour). A poller reads the worker's RSS every 0.2 s; the RSS after trial k is
the last reading before trial k+1's folder appears. Prints one row per setting: RSS after the first
and the last trial and the growth per trial in between.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20


def _worker_rss(driver: psutil.Process) -> int:
    """RSS of the trial worker (the descendant running the trainable), 0 if none yet."""
    for child in driver.children(recursive=True):
        try:
            if "train_trial" in child.name() or "ImplicitFunc" in child.name():
                return child.memory_info().rss
        except psutil.Error:
            continue
    return 0


def run(work: Path, arena: str | None, trials: int, exp_id: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MALLOC_ARENA_MAX")}
    env |= {"RAY_TMPDIR": tempfile.mkdtemp(prefix="arena_", dir="/tmp"), "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0"}
    if arena is not None:
        env["MALLOC_ARENA_MAX"] = arena
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", "ARENA", "--space_file", "arena_space",
           "--exp_id", exp_id, "--num_samples", str(trials), "--max_concurrent", "1", "--max_epoch", "1",
           "--batch_size", "64", "--seed", "0"]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = psutil.Process(proc.pid)
    folder = work / "libtraffic" / "cache" / "hyper_tune" / exp_id
    after: dict[int, float] = {}
    last, started = 0, 0
    while proc.poll() is None:
        rss = _worker_rss(driver)
        now_started = len(list(folder.glob("trial_*"))) if folder.is_dir() else 0
        if now_started > started:
            if started:
                after[started - 1] = last / MIB
            started = now_started
        last = rss or last
        time.sleep(0.2)
    after[started - 1] = last / MIB
    if proc.returncode:
        raise SystemExit(f"hyper_tune.py failed ({proc.returncode}) for MALLOC_ARENA_MAX={arena}")
    return [after[k] for k in sorted(after)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--num_nodes", type=int, default=50)
    parser.add_argument("--num_days", type=int, default=14)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from libtraffic.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="bench_arena_") as tmp:
        work = Path(tmp)
        write_synthetic_dataset(work / "raw_data", "ARENA", num_nodes=args.num_nodes, num_days=args.num_days, seed=0)
        (work / "arena_space.json").write_text(json.dumps({
            "hidden_size": {"type": "choice", "list": [32, 64]},
            "learning_rate": {"type": "loguniform", "lower": 0.001, "upper": 0.01}}))
        print(f"{args.trials} trials of 1 epoch, {args.num_nodes} sensors x {args.num_days} days, one reused worker")
        print("| MALLOC_ARENA_MAX | RSS after trial 1 | RSS after last | growth per trial |")
        print("|---|---|---|---|")
        for label, arena in (("2 (shipped)", None), ("64 (glibc default)", "64")):
            rss = run(work, arena, args.trials, f"arena_{arena or 'default'}")
            growth = (rss[-1] - rss[0]) / max(len(rss) - 1, 1)
            print(f"| {label} | {rss[0]:.0f} MiB | {rss[-1]:.0f} MiB | {growth:+.1f} MiB |", flush=True)
            print("   per trial:", " ".join(f"{x:.0f}" for x in rss), flush=True)


if __name__ == "__main__":
    main()
