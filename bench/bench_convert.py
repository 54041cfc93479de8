"""Converter benchmark: DCRNN-format METR_LA-sized files -> atomic files, then data preparation of
the converted dataset against the synthetic one.

    python bench/make_data.py && python bench/bench_convert.py [--repeats N]

Makes bench/data/metr-la.h5 (pandas HDF5, 207 sensors x 34272 five-minute steps, the speeds of
bench/raw_data/METR_LA_BENCH) and bench/data/sensor_graph/ (locations, distances of its road links),
once; converts them with `python -m libtraffic.data.convert dcrnn` into bench/raw_data/METR_LA_CONV
(a fresh process per run, timed by the parent, peak RSS from wait4), checks that the converted
.geo/.rel/.dyna equal the synthetic dataset's byte for byte, and times cold data preparation of
both datasets with bench_data.py's child (alternating).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from bench_data import run_once
from benchlib import BENCH_DIR, DATASET, NUM_DAYS, NUM_NODES, SEED, dataset_dir, median, require_dataset, table, write_section
from libtraffic.data.synthetic import START_TIME, STEP_SECONDS, generate_speeds

SOURCE_DIR = BENCH_DIR / "data"
CONVERTED = "METR_LA_CONV"
TARGET_S, TARGET_BYTES = 30.0, 1e9  # "seconds, under 1 GB" for the whole conversion process
REPO_ROOT = BENCH_DIR.parent


def make_sources() -> None:
    """bench/data/metr-la.h5 and sensor_graph/ in DCRNN's formats, from the synthetic generator."""
    h5 = SOURCE_DIR / "metr-la.h5"
    if h5.is_file():
        print(f"Reusing {SOURCE_DIR}")
        return
    started = time.perf_counter()
    data = generate_speeds(NUM_NODES, NUM_DAYS, SEED)
    graph = SOURCE_DIR / "sensor_graph"
    graph.mkdir(parents=True, exist_ok=True)
    ids = [str(s) for s in data.sensor_ids]
    locations = pd.DataFrame({"index": range(len(ids)), "sensor_id": ids, "latitude": data.coordinates[:, 1],
                              "longitude": data.coordinates[:, 0]})
    locations.to_csv(graph / "graph_sensor_locations.csv", index=False)
    origin, dest = data.edge_index[:, 0], data.edge_index[:, 1]
    distances = pd.DataFrame({"from": data.sensor_ids[origin], "to": data.sensor_ids[dest], "cost": data.edge_cost})
    distances.to_csv(graph / "distances_la_2012.csv", index=False)
    index = pd.date_range(pd.Timestamp(START_TIME), periods=len(data.speeds), freq=f"{STEP_SECONDS}s")
    speeds = np.round(data.speeds.astype(np.float64), 3)  # METR_LA's h5 holds float64
    pd.DataFrame(speeds, index=index, columns=ids).to_hdf(h5, key="df")
    print(f"Wrote {SOURCE_DIR} ({h5.stat().st_size / 1e6:.0f} MB h5) in {time.perf_counter() - started:.1f} s")


def run_conversion() -> dict:
    """One conversion in a fresh process, reaped with wait4: wall time, its own peak RSS, its output."""
    args = [sys.executable, "-m", "libtraffic.data.convert", "dcrnn", "--h5", str(SOURCE_DIR / "metr-la.h5"),
            "--sensor_graph", str(SOURCE_DIR / "sensor_graph"), "--dataset", CONVERTED, "--force"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    out_path, err_path = BENCH_DIR / "data" / "convert.out", BENCH_DIR / "data" / "convert.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.perf_counter()
        pid = subprocess.Popen(args, cwd=BENCH_DIR, env=env, stdout=out, stderr=err).pid
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"conversion failed:\n{err_path.read_text()}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024,
            "stdout": out_path.read_text(),
            "stderr": err_path.read_text()}


def same_files() -> list[str]:
    """Which of .geo/.rel/.dyna the converted dataset shares byte for byte with the synthetic one."""
    converted = BENCH_DIR / "raw_data" / CONVERTED
    return [ext for ext in ("geo", "rel", "dyna")
            if filecmp.cmp(dataset_dir() / f"{DATASET}.{ext}", converted / f"{CONVERTED}.{ext}", shallow=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="conversions and preparations per dataset (default 3)")
    args = parser.parse_args()
    require_dataset()
    make_sources()
    conversions = []
    for i in range(args.repeats):
        conversions.append(run_conversion())
        print(f"conversion {i + 1}/{args.repeats}: {conversions[-1]['wall_s']:.2f} s ({conversions[-1]['cpu_s']:.2f} s CPU), "
              f"{conversions[-1]['peak_rss'] / 1e9:.2f} GB", flush=True)
    identical = same_files()
    prep: dict[str, list[dict]] = {DATASET: [], CONVERTED: []}
    for i in range(args.repeats):
        for name in prep:
            prep[name].append(run_once(cold=True, dataset=name))
        print(f"preparation {i + 1}/{args.repeats}: " + ", ".join(f"{n} {r[-1]['prep_s']:.2f} s" for n, r in prep.items()),
              flush=True)
    wall, peak = median([c["wall_s"] for c in conversions]), median([c["peak_rss"] for c in conversions])
    cpu = median([c["cpu_s"] for c in conversions])
    convert_rows = [["conversion (whole process)", f"{wall:.2f}", f"{cpu:.2f}", f"{peak / 1e9:.2f} GB",
                     f"<= {TARGET_S:g} s, < {TARGET_BYTES / 1e9:g} GB",
                     "yes" if wall <= TARGET_S and peak < TARGET_BYTES else "NO"]]
    prep_rows = [[name, f"{median([r['prep_s'] for r in runs]):.2f}", f"{median([r['peak_rss'] for r in runs]) / 1e9:.2f} GB",
                  ", ".join(f"{r['prep_s']:.2f}" for r in runs)] for name, runs in prep.items()]
    runs = ", ".join(f"{c['wall_s']:.2f} s ({c['cpu_s']:.2f} s CPU) / {c['peak_rss'] / 1e9:.2f} GB" for c in conversions)
    ratio = median([r["prep_s"] for r in prep[CONVERTED]]) / median([r["prep_s"] for r in prep[DATASET]])
    summary_line = conversions[-1]["stdout"].splitlines()[0]
    progress = [line for line in conversions[-1]["stderr"].splitlines() if line.startswith("Writing")]
    body = (
        f"`python -m libtraffic.data.convert dcrnn --h5 bench/data/metr-la.h5 --sensor_graph bench/data/sensor_graph "
        f"--dataset {CONVERTED} --force` (cwd bench/) on DCRNN-format files holding {DATASET}'s speeds "
        f"({NUM_NODES} sensors x {NUM_DAYS * 288} steps = {NUM_NODES * NUM_DAYS * 288:,} .dyna rows). Each conversion is a "
        "fresh process (interpreter start and imports included), timed by the parent; CPU s (user + system) and "
        f"peak RSS (ru_maxrss) come from wait4: on a busy machine, CPU s is the steadier figure. Median of {args.repeats} runs:\n\n"
        + table(["what", "wall s", "CPU s", "peak RSS", "target", "met"], convert_rows)
        + f"\n\n- runs: {runs}"
        + f"\n- converter's summary: `{summary_line}`"
        + f"\n- progress lines (stderr is not a terminal here, so every 10%): `{progress[1] if len(progress) > 1 else ''}` ..."
        + f"\n- converted files identical byte for byte to {DATASET}'s: {', '.join(identical) or 'none'}"
        + "\n\nCold data preparation (bench_data.py's child: ConfigParser + get_data() + get_data_feature(), "
        "default GRU config, dataset cache deleted before each run, datasets alternating):\n\n"
        + table(["dataset", "prep s (median)", "peak RSS", "runs (s)"], prep_rows)
        + f"\n\nConverted / synthetic preparation time: {ratio:.2f}x.\n"
    )
    print(body)
    write_section("bench_convert", "Converting DCRNN's files (bench/bench_convert.py)", body)


if __name__ == "__main__":
    main()
