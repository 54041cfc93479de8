"""Final-runs benchmark: what --final_seeds costs on Ray beyond the training itself, METR_LA size.

    PYTHONPATH=. python bench/bench_final.py [--final_seeds 3] [--max_epoch 1] [--repeats 2] [--keep]

Each repeat, on bench/raw_data/METR_LA_BENCH (207 sensors x 34272 steps; bench/make_data.py):
1. Ray: `cd bench && python ../hyper_tune.py ... --num_samples 1 --max_epoch 1 --final_seeds K --final_top 1
   --max_concurrent 1 --cpu_per_trial 1 --num_threads 1` as a fresh process with a private Ray instance (its
   own RAY_TMPDIR, RAY_ADDRESS unset), on a space of one configuration. Its final-runs phase is the driver's
   log line "Final runs: K run(s) in S s": from handing the data to Ray (ray.put) until the last run
   returned and the actor was killed (actor start, transfers, K runs one after another). Each run's own
   wall time (handed to the actor -> returned; the first includes the actor's start) is in
   hyper_tune_final_runs.json.
2. In-process: the same K runs (configuration and seeds read from the results file) in this process, one
   after another, with 1 thread: final_seeds.train_and_test, i.e. what run_model.py does (train on the
   train split, keep the best epoch by validation, test metrics per horizon) without its files. Its test
   metrics must equal the Ray runs' (the same work, bit for bit).
Overhead per run = (Ray phase - sum of the in-process runs) / K. The two halves alternate their order
between repeats, so both see the same machine load; the load average is noted at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchlib import BENCH_DIR, DATASET, MODEL, TASK, median, require_dataset, table, write_section
from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.results import FINAL_RUNS_FILE as RUNS_FILE
from libtraffic.tune.final_runs import train_and_test

OUT_DIR = BENCH_DIR / "libtraffic" / "bench_final"  # child outputs (git-ignored)
SPACE_FILE = OUT_DIR / "final_space.json"
SPACE = {"learning_rate": {"type": "choice", "list": [0.01]}}  # one configuration: the search is one trial
RAY_TMPDIR = Path("/tmp/bench_final")  # short: Ray's socket paths live under it
PHASE_LINE = re.compile(r"Final runs: (\d+) run\(s\) in ([\d.]+) s")


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def tune_command(exp_id: str, args: argparse.Namespace) -> list[str]:
    return ["../hyper_tune.py", "--task", TASK, "--model", MODEL, "--dataset", DATASET, "--space_file", str(SPACE_FILE.relative_to(BENCH_DIR)),
            "--num_samples", "1", "--max_epoch", str(args.max_epoch), "--final_seeds", str(args.final_seeds),
            "--final_top", "1", "--max_concurrent", "1", "--cpu_per_trial", "1", "--num_threads", "1", "--seed", "0",
            "--exp_id", exp_id]


def ray_phase(exp_id: str, args: argparse.Namespace) -> dict:
    """One hyper_tune.py run; its final-runs phase, each run's wall time, configuration, seeds and test metrics."""
    RAY_TMPDIR.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(RAY_TMPDIR),
                                                                       "PYTHONUNBUFFERED": "1"}
    command = tune_command(exp_id, args)
    print(f"[{time.strftime('%H:%M:%S')}] cd bench && python {' '.join(command)}", flush=True)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *command], cwd=BENCH_DIR, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (OUT_DIR / f"{exp_id}.out").write_text(out.stdout + out.stderr)
    match = PHASE_LINE.search(out.stdout)
    if out.returncode != 0 or match is None:
        sys.exit(f"{exp_id} failed (exit {out.returncode}); see {OUT_DIR / f'{exp_id}.out'}")
    folder = BENCH_DIR / "libtraffic" / "cache" / exp_id
    final = json.loads((folder / "hyper_tune_results.json").read_text())["final_seeds"][0]
    walls = {r["seed"]: r["wall_s"] for r in json.loads((folder / RUNS_FILE).read_text())["runs"]}
    if not args.keep:
        for path in (folder, BENCH_DIR / "libtraffic" / "cache" / "hyper_tune" / exp_id):
            shutil.rmtree(path, ignore_errors=True)
    runs = final["runs"]
    return {"phase_s": float(match.group(2)), "whole_s": wall, "config": final["config"],
            "seeds": [r["seed"] for r in runs], "tests": [r["test"] for r in runs], "run_s": [walls[r["seed"]] for r in runs]}


def in_process(base: ConfigParser, prepared, config: dict, seeds: list[int]) -> tuple[list[float], list[dict]]:
    """The same runs in this process, one thread: seconds and test metrics of each."""
    seconds, tests = [], []
    for seed in seeds:
        start = time.perf_counter()
        tests.append(train_and_test(config, seed, base, prepared, 1))
        seconds.append(time.perf_counter() - start)
        print(f"    in-process run, seed {seed}: {seconds[-1]:.1f} s", flush=True)
    return seconds, tests


def measure(repeat: int, base: ConfigParser, prepared, args: argparse.Namespace, plan: dict | None) -> dict:
    """One repeat: the Ray run and the in-process runs, in alternating order. The configuration and seeds
    come from a Ray run: this one, or (when the in-process half goes first) ``plan``, an earlier one's
    (--seed 0 every time, so the same)."""
    exp_id = f"bench_final_{time.strftime('%Y%m%d_%H%M%S')}_r{repeat}"
    if plan is None or repeat % 2 == 0:
        ray = ray_phase(exp_id, args)
        local_s, local_tests = in_process(base, prepared, ray["config"], ray["seeds"])
    else:
        local_s, local_tests = in_process(base, prepared, plan["config"], plan["seeds"])
        ray = ray_phase(exp_id, args)
        assert (ray["config"], ray["seeds"]) == (plan["config"], plan["seeds"]), "another plan than the first run's"
    k = len(ray["seeds"])
    result = {"repeat": repeat, **ray, "local_s": local_s, "same_tests": local_tests == ray["tests"],
              "overhead_s": (ray["phase_s"] - sum(local_s)) / k,
              "first_s": ray["run_s"][0] - local_s[0],
              "later_s": median([r - s for r, s in zip(ray["run_s"][1:], local_s[1:])]) if k > 1 else float("nan"),
              "outside_s": ray["phase_s"] - sum(ray["run_s"])}
    print(f"    Ray phase {ray['phase_s']:.1f} s, in-process {sum(local_s):.1f} s: overhead "
          f"{result['overhead_s']:.2f} s per run; identical test metrics: {result['same_tests']}", flush=True)
    return result


def report(results: list[dict], args: argparse.Namespace, loads: tuple[str, str], prep_s: float) -> str:
    rows = [[r["repeat"], f"{r['phase_s']:.1f}", f"{sum(r['local_s']):.1f}", f"{r['overhead_s']:.2f}",
             f"{r['first_s']:.2f}", f"{r['later_s']:.2f}", f"{r['outside_s']:.2f}",
             ", ".join(f"{s:.1f}" for s in r["run_s"]), ", ".join(f"{s:.1f}" for s in r["local_s"]),
             "yes" if r["same_tests"] else "NO", f"{r['whole_s']:.0f}"] for r in results]
    med = lambda key: median([r[key] for r in results])
    summary = table(["metric (median of repeats)", "value"], [
        ["final-runs phase on Ray (s)", f"{med('phase_s'):.1f}"],
        ["the same runs in-process (s)", f"{median([sum(r['local_s']) for r in results]):.1f}"],
        ["overhead per final run (s)", f"{med('overhead_s'):.2f}"],
        ["  first run on the actor (actor start, imports, data transfer) (s)", f"{med('first_s'):.2f}"],
        ["  each later run (s)", f"{med('later_s'):.2f}"],
        ["  outside the runs (ray.put, actor kill) (s)", f"{med('outside_s'):.2f}"],
    ])
    return f"""GRU (defaults, hidden_size 64) on {DATASET} (207 sensors x 34272 steps), max_epoch {args.max_epoch},
--final_seeds {args.final_seeds} --final_top 1 --max_concurrent 1 --cpu_per_trial 1 --num_threads 1,
{len(results)} repeat(s). Load average (1, 5, 15 min) at start {loads[0]}, at the end {loads[1]}
(2 cores, shared with other work). Each repeat runs, in alternating order:

    cd bench && python {' '.join(tune_command('<new exp_id>', args))}

with the space `{json.dumps(SPACE)}` (one configuration), and the same K
runs (configuration and seeds from its results file) in this process with final_seeds.train_and_test (data prepared once here,
{prep_s:.1f} s). Overhead per run = (Ray phase - sum of the in-process runs) / K; 'first' and 'later' are
a Ray run's wall time (hyper_tune_final_runs.json wall_s) minus the same run in-process; 'outside' = the
phase minus the runs' wall times. Identical: the Ray runs' test metrics equal the in-process ones. The
in-process baseline is the cheapest possible (no process start, imports or data loading per run, which
a run_model.py per seed would pay), so the overhead is an upper bound against it.

{summary}

Per repeat (seconds):

{table(["repeat", "Ray phase", "in-process", "overhead/run", "first", "later", "outside", "Ray runs",
        "in-process runs", "identical", "whole hyper_tune"], rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--final_seeds", type=int, default=3, help="final runs per repeat (default 3)")
    parser.add_argument("--max_epoch", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' experiment folders")
    args = parser.parse_args()
    require_dataset()
    os.chdir(BENCH_DIR)  # raw_data/ and libtraffic/cache/ resolve under bench/, as for the child
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    SPACE_FILE.write_text(json.dumps(SPACE) + "\n")
    start_load = load()
    print(f"Load average at start: {start_load} on {os.cpu_count()} cores", flush=True)
    torch.set_num_threads(1)
    base = ConfigParser(TASK, MODEL, DATASET, None, other_args={"max_epoch": args.max_epoch, "num_threads": 1, "seed": 0})
    base["hyper_tune"] = True  # as hyper_tune.py's driver config: no files written per run
    start = time.perf_counter()
    prepared = get_dataset(base).prepare()
    prep_s = time.perf_counter() - start
    results: list[dict] = []
    for repeat in range(args.repeats):
        results.append(measure(repeat, base, prepared, args, results[0] if results else None))
    body = report(results, args, (start_load, load()), prep_s)
    print(body)
    write_section("bench_final", "Final runs overhead (bench/bench_final.py)", body)
    print(f"Wrote the section 'Final runs overhead' of {BENCH_DIR / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
