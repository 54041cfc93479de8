"""Data preparation benchmark: cold (no dataset cache) and cached, in fresh subprocesses.

    python bench/bench_data.py [--repeats N]

Preparation = ConfigParser(...) + get_dataset(config).get_data() + get_data_feature() with the default
GRU config on bench/raw_data/METR_LA_BENCH (make it with bench/make_data.py). Each run is a new Python
process with bench/ as its working directory, so raw_data/ and libtraffic/cache/ resolve under bench/.
The child times the preparation itself and its start-up (interpreter and imports), and reports its
own peak RSS (getrusage ru_maxrss); the parent also times the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

from benchlib import BENCH_DIR, DATASET, GIB, MODEL, TASK, median, require_dataset, table, write_section

TARGETS = {"cold": (12.0, 1.5e9), "cached": (2.0, 1.5e9)}  # seconds, bytes
LIBCITY = {"cold": (123.0, 7.6 * GIB), "cached": (27.0, 6.4 * GIB)}
LAUNCHED = "BENCH_DATA_LAUNCHED"  # the parent's time.time() when it started the child
CACHE_DIR = BENCH_DIR / "libtraffic" / "cache" / "dataset_cache"


def child(name: str = DATASET) -> None:
    """Prepare dataset ``name`` once in this process and print {'prep_s', 'startup_s', 'peak_rss', ...} as JSON."""
    from libtraffic.config import ConfigParser
    from libtraffic.data import get_dataset

    startup = time.time() - float(os.environ[LAUNCHED])  # interpreter start and all imports
    imported = time.perf_counter()
    config = ConfigParser(TASK, MODEL, name)
    dataset = get_dataset(config)
    train, valid, test = dataset.get_data()
    feature = dataset.get_data_feature()
    prep = time.perf_counter() - imported
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"prep_s": prep, "startup_s": startup, "peak_rss": peak,
                      "batches": [len(train), len(valid), len(test)], "num_nodes": feature["num_nodes"]}))


def run_once(cold: bool, dataset: str = DATASET) -> dict:
    """Prepare ``dataset`` in a fresh process (cwd bench/); cold deletes the prepared-data cache first."""
    if cold:
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
    start = time.perf_counter()
    env = {**os.environ, LAUNCHED: repr(time.time())}
    done = subprocess.run([sys.executable, __file__, "--child", dataset], cwd=BENCH_DIR, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"child failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def summarise(runs: dict[str, list[dict]]) -> tuple[str, str]:
    rows, notes = [], []
    for mode, results in runs.items():
        prep, wall = median([r["prep_s"] for r in results]), median([r["wall_s"] for r in results])
        startup, peak = median([r["startup_s"] for r in results]), median([r["peak_rss"] for r in results])
        (t_target, m_target), (t_ref, m_ref) = TARGETS[mode], LIBCITY[mode]
        rows.append([mode, len(results), f"{prep:.2f}", f"{startup:.2f}", f"{wall:.2f}",
                     f"{peak / 1e9:.2f} GB ({peak / GIB:.2f} GiB)", f"<= {t_target:g} s, <= {m_target / 1e9:g} GB",
                     "yes" if prep <= t_target and peak <= m_target else "NO",
                     f"{t_ref:g} s, {m_ref / GIB:.1f} GiB", f"{t_ref / prep:.0f}x faster, {m_ref / peak:.1f}x less"])
        per_run = ", ".join(f"{r['prep_s']:.2f} s / {r['peak_rss'] / 1e9:.2f} GB" for r in results)
        notes.append(f"- {mode} runs: {per_run}")
    header = ["mode", "runs", "prep s", "startup s", "process s", "peak RSS", "target", "met", "LibCity",
              "vs LibCity"]
    return table(header, rows), "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument("--child", metavar="DATASET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    require_dataset()
    runs: dict[str, list[dict]] = {"cold": [], "cached": []}
    for i in range(args.repeats):
        runs["cold"].append(run_once(cold=True))
        runs["cached"].append(run_once(cold=False))
        print(f"run {i + 1}/{args.repeats}: cold {runs['cold'][-1]['prep_s']:.2f} s, cached {runs['cached'][-1]['prep_s']:.2f} s",
              flush=True)
    first = runs["cold"][0]
    tab, notes = summarise(runs)
    print(tab)
    body = (f"Default GRU config on {DATASET} ({first['num_nodes']} sensors x 34272 steps; loaders of "
            f"{'/'.join(map(str, first['batches']))} train/valid/test batches). 'prep s' is ConfigParser + "
            "get_data() + get_data_feature() timed inside a fresh process (cwd bench/), median of the runs; "
            "'startup s' is the interpreter start and imports (torch, pandas, ...) before that, 'process s' "
            "the whole process as the parent saw it; peak RSS is the process's ru_maxrss. Cold runs delete bench/libtraffic/cache/dataset_cache "
            "first (the atomic files stay in the OS page cache); cold and cached runs alternate.\n\n"
            f"{tab}\n\n{notes}\n")
    write_section("bench_data", "Data preparation (bench/bench_data.py)", body)


if __name__ == "__main__":
    main()
