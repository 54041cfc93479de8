"""Per-model benchmark: parameters, one training epoch + validation, peak memory, beside LibCity's figures.

    PYTHONPATH=. python bench/bench_models.py [--models STID GWNET ...] [--repeats N]

Each model runs with its LibCity defaults (our defaults) on a METR_LA-like synthetic week,
bench/raw_data/METR_LA_WEEK (207 sensors x 2016 five-minute steps, METR_LA's schema with a .rel graph;
written on first use), CPU, one torch thread, as LibCity's reference figures were measured. Every
(model, repeat) is a fresh process (cwd bench/): it prepares the data, builds the run as run_model.py
does, trains one epoch and validates it (the executor's own epoch, as LibCity's log line times it),
and reports the parameter count, the epoch's seconds and its own peak RSS (getrusage ru_maxrss).
The machine is shared: the load average is noted around every run.

Memory: LibCity publishes no peak RSS. Beside ours the table gives what LibCity's data path holds
that ours does not: it stacks every window into x / y arrays of samples x 12 x N x F float64 for
train, valid and test, where we keep one (T, N, F) float32 array and cut windows by index. That figure
is computed from the sizes (not measured), a lower bound on LibCity's extra memory over ours.
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

from benchlib import BENCH_DIR, TASK, median, table, write_section

DATASET, NUM_NODES, NUM_DAYS, SEED = "METR_LA_WEEK", 207, 7, 0  # 207 x 2016 steps
# LibCity's 1-epoch train + validation seconds at its defaults on 207 sensors x 2016 steps, 1 thread,
# this machine type under other load (issue 16).
LIBCITY_SECONDS = {"GRU": 2.7, "STID": 11.3, "TGCN": 44.1, "STGCN": 88.8, "MTGNN": 105.6, "AGCRN": 158.8,
                   "GWNET": 212.5, "DCRNN": 600.6}
# LibCity's parameter counts at its defaults on 207 sensors of speed data (issue 16).
LIBCITY_PARAMS = {"GRU": 105_615, "STID": 117_100, "GWNET": 276_600, "STGCN": 319_969, "DCRNN": 372_353,
                  "AGCRN": 747_810, "MTGNN": 405_452, "TGCN": 31_812}
TARGET_SPEEDUP = 1.5
MB = 1e6


def ensure_dataset() -> None:
    from libtraffic.data.synthetic import write_synthetic_dataset

    if not (BENCH_DIR / "raw_data" / DATASET / f"{DATASET}.dyna").is_file():
        folder = write_synthetic_dataset(BENCH_DIR / "raw_data", DATASET, NUM_NODES, NUM_DAYS, SEED)
        print(f"Wrote {folder}")


def libcity_window_bytes(num_steps: int, input_window: int, output_window: int, num_nodes: int,
                         feature_dim: int) -> int:
    """Bytes of LibCity's stacked x and y arrays (float64) over all samples of train, valid and test."""
    samples = num_steps - input_window - output_window + 1
    return samples * (input_window + output_window) * num_nodes * feature_dim * 8


def child(model: str) -> None:
    """One epoch of ``model`` in this process; prints a JSON line of its figures."""
    import torch

    torch.set_num_threads(1)
    from libtraffic.config import ConfigParser
    from libtraffic.pipeline.build import build_run
    from libtraffic.utils import paths

    exp_id = f"bench_models_{model}_{os.getpid()}"
    config = ConfigParser(TASK, model, DATASET, other_args={
        "gpu": False, "num_threads": 1, "max_epoch": 1, "exp_id": exp_id, "log_level": "WARNING"})
    run = build_run(config)
    prepared = run.dataset.prepared
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    run.executor.train(run.train_data, run.valid_data)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    shutil.rmtree(paths.experiment_dir(exp_id), ignore_errors=True)
    print(json.dumps({
        "params": sum(p.numel() for p in run.model.parameters()),
        "epoch_s": run.executor.history[-1]["epoch_time"], "train_call_s": wall, "cpu_s": cpu,
        "peak_rss": peak, "rss_before_training": rss_before,
        "our_data_bytes": prepared.data.nbytes,
        "libcity_window_bytes": libcity_window_bytes(prepared.data.shape[0], config["input_window"],
                                                     config["output_window"], run.data_feature["num_nodes"],
                                                     run.data_feature["feature_dim"]),
        "feature_dim": run.data_feature["feature_dim"], "batch_size": config["batch_size"],
        "batches": [len(run.train_data), len(run.valid_data)], "threads": torch.get_num_threads(),
    }))


def run_child(model: str) -> dict:
    before = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--child", model], cwd=BENCH_DIR, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCH_DIR.parent)})
    if done.returncode != 0:
        sys.exit(f"{model}: child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = (before, os.getloadavg()[0])
    return result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def row(model: str, runs: list[dict]) -> list[str]:
    first = runs[0]
    seconds = median([r["epoch_s"] for r in runs])
    cpu = median([r["cpu_s"] for r in runs])
    peak = median([r["peak_rss"] for r in runs])
    ref = LIBCITY_SECONDS.get(model)
    ref_params = LIBCITY_PARAMS.get(model)
    return [model, f"{first['params']:,}", f"{ref_params:,}" if ref_params else "-",
            f"{seconds:.1f}", f"{cpu:.1f}", f"{ref:g}" if ref else "-", f"{ref / seconds:.1f}x" if ref else "-",
            f"{ref / cpu:.1f}x" if ref else "-",
            ("yes" if ref / seconds >= TARGET_SPEEDUP else "NO") if ref else "-",
            f"{peak / MB:.0f}", f"{first['libcity_window_bytes'] / MB:.0f}", f"{first['our_data_bytes'] / MB:.1f}",
            f"{first['batch_size']}, {first['batches'][0]}+{first['batches'][1]}",
            ", ".join(f"{r['epoch_s']:.1f}" for r in runs),
            ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in runs)]


HEADER = ["model", "params", "LibCity params", "s/epoch", "CPU s", "LibCity s/epoch", "speed-up", "vs CPU s",
          f">= {TARGET_SPEEDUP:g}x", "peak RSS MB", "LibCity windows MB", "our data MB", "batch, batches tr+val",
          "runs s", "load (1-min) per run"]


def main() -> None:
    from libtraffic.model import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [m for m in sorted(LIBCITY_SECONDS, key=LIBCITY_SECONDS.get) if m in MODELS]
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=default,
                        help=f"models to run (default: {' '.join(default)})")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per model (default 3)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    ensure_dataset()
    start_uptime = uptime()
    print(start_uptime, flush=True)
    results: dict[str, list[dict]] = {m: [] for m in args.models}
    for i in range(args.repeats):
        for model in args.models:  # models alternate, so a burst of load hits one repeat of each at most
            r = run_child(model)
            results[model].append(r)
            print(f"repeat {i + 1}/{args.repeats} {model}: {r['params']:,} parameters, {r['epoch_s']:.1f} s/epoch "
                  f"(LibCity {LIBCITY_SECONDS.get(model, '-')}), peak RSS {r['peak_rss'] / MB:.0f} MB, "
                  f"load {r['load'][0]:.2f} -> {r['load'][1]:.2f}", flush=True)
    tab = table(HEADER, [row(m, runs) for m, runs in results.items()])
    end_uptime = uptime()
    print(tab)
    print(end_uptime)
    body = (
        f"Each model with LibCity's defaults (ours) on {DATASET}: {NUM_NODES} sensors x {NUM_DAYS * 288} steps of "
        "synthetic METR_LA-like speeds with a .rel graph (bench/raw_data, written by this script), CPU, 1 torch "
        f"thread, {args.repeats} fresh process(es) per model, models alternating. 's/epoch' is the median of the "
        "executor's first epoch, training plus validation (what LibCity's epoch log line times); 'runs s' lists every "
        "run; 'CPU s' is the process's CPU time over the same call (train + validate + its epoch checkpoint), which "
        "with one thread measures the work whatever else the machine runs. LibCity's figures (issue 16) were measured on this machine type with 1 thread under other load; "
        f"speed-up = LibCity s / our s, 'vs CPU s' = LibCity s / our CPU s (target >= {TARGET_SPEEDUP:g}x). 'peak RSS' is the whole process's ru_maxrss "
        "(interpreter, torch, data, model, optimiser, one epoch), median over runs. LibCity publishes no peak RSS; "
        "'LibCity windows MB' is computed, not measured: the stacked x and y arrays (samples x 12 x N x F, float64, "
        "train + valid + test) LibCity's data path holds in addition to everything we hold, where our data is one "
        "(T, N, F) float32 array ('our data MB'). LibCity's parameter counts are from issue 16 (its defaults on 207 "
        f"sensors of speed data).\n\n{tab}\n\n- uptime at start: `{start_uptime}`\n- uptime at end: `{end_uptime}`\n")
    write_section("bench_models", "Models: parameters, s/epoch and memory vs LibCity (bench/bench_models.py)", body)


if __name__ == "__main__":
    main()
