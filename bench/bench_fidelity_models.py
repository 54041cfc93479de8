"""Training fidelity per model: our test scores after LibCity's training recipe, beside LibCity's own.

    PYTHONPATH=. python bench/bench_fidelity_models.py [--models STID STGCN] [--seeds 0 1 2]

tests/libcity_reference/SYNTH_LA/TRAINING.md holds LibCity's test masked MAE at 15 / 30 / 60 minutes
after `run_model.py --model M --dataset SYNTH_LA --gpu false --max_epoch E --seed S` with its default
config and 1 CPU thread (STID 20 epochs, STGCN 10, seeds 0-2). This script runs the same command on
our side (same defaults, epochs and seeds; the built-in SYNTH_LA, byte-identical to LibCity's files;
a fresh working directory; the best epoch by validation loss, as LibCity) and scores the 802 test
samples once each, as the reference does. Figures go to bench/RESULTS.md (section "fidelity_models").
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchlib import BENCH_DIR, table, write_section

REFERENCE = BENCH_DIR.parent / "tests" / "libcity_reference" / "SYNTH_LA" / "TRAINING.md"
HORIZONS = (3, 6, 12)


def libcity_scores() -> dict[str, tuple[int, dict[int, tuple[float, ...]]]]:
    """model -> (epochs, {seed: (MAE@3, @6, @12)}) from TRAINING.md's table."""
    out: dict[str, tuple[int, dict[int, tuple[float, ...]]]] = {}
    for model, epochs, seed, *maes in re.findall(
            r"^\| (\w+), (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", REFERENCE.read_text(), re.M):
        out.setdefault(model, (int(epochs), {}))[1][int(seed)] = tuple(float(m) for m in maes)
    return out


def train_ours(model: str, epochs: int, seed: int) -> tuple[tuple[float, ...], float]:
    """Our test masked MAE at HORIZONS after LibCity's command, and the run's seconds."""
    from libtraffic.pipeline import run_model

    start = time.perf_counter()
    metrics = run_model("traffic_state_pred", model, "SYNTH_LA", other_args={
        "gpu": False, "max_epoch": epochs, "seed": seed, "exp_id": f"{model}_{seed}", "log_level": "WARNING",
        "save_predictions": False})
    return tuple(metrics[f"masked_MAE@{h}"] for h in HORIZONS), time.perf_counter() - start


def main() -> None:
    reference = libcity_scores()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(reference), default=sorted(reference, reverse=True))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    home, work = Path.cwd(), Path(tempfile.mkdtemp(prefix="bench_fidelity_models_"))
    os.chdir(work)  # raw_data/SYNTH_LA and libtraffic/ are written here
    logging.getLogger("libtraffic").setLevel(logging.WARNING)
    rows, summary, seconds = [], [], []
    for model in args.models:
        epochs, theirs = reference[model]
        ours = {}
        for seed in args.seeds:
            load = os.getloadavg()[0]
            ours[seed], took = train_ours(model, epochs, seed)
            seconds.append(f"{model} seed {seed}: {took:.0f} s (load {load:.1f})")
            ref = theirs.get(seed)
            print(f"{model} seed {seed}: ours {['%.4f' % v for v in ours[seed]]}, LibCity "
                  f"{['%.4f' % v for v in ref] if ref else '-'} ({took:.0f} s)", flush=True)
            rows.append([f"{model}, {epochs}", seed, *(f"{v:.4f}" for v in ours[seed]),
                         *((f"{v:.4f}" for v in ref) if ref else ["-"] * len(HORIZONS))])
        mean_ours = [statistics.mean(ours[s][i] for s in args.seeds) for i in range(len(HORIZONS))]
        common = [s for s in args.seeds if s in theirs]
        mean_theirs = [statistics.mean(theirs[s][i] for s in common) for i in range(len(HORIZONS))] if common else None
        rows.append([f"{model}, {epochs}", "mean", *(f"**{v:.4f}**" for v in mean_ours),
                     *((f"**{v:.4f}**" for v in mean_theirs) if mean_theirs else ["-"] * len(HORIZONS))])
        if mean_theirs:
            summary.append([model, *(f"{o / t - 1:+.1%}" for o, t in zip(mean_ours, mean_theirs)),
                            *(f"{min(ours[s][i] for s in args.seeds):.3f}-{max(ours[s][i] for s in args.seeds):.3f}"
                              for i in (2,)),
                            f"{min(theirs[s][2] for s in common):.3f}-{max(theirs[s][2] for s in common):.3f}"])
    os.chdir(home)
    header = ["model, epochs", "seed", *(f"ours @{h}" for h in HORIZONS), *(f"LibCity @{h}" for h in HORIZONS)]
    tab = table(header, rows)
    gaps = table(["model", *(f"mean ours / LibCity - 1, @{h}" for h in HORIZONS), "ours @12 range", "LibCity @12 range"],
                 summary)
    print(tab, gaps, sep="\n\n")
    body = (f"Test masked MAE (mph; zero labels ignored) over SYNTH_LA's 802 test samples, each once, after "
            "`run_model.py --task traffic_state_pred --model M --dataset SYNTH_LA --gpu false --max_epoch E --seed S` "
            "with each model's default config, 1 CPU thread, best epoch by validation loss. LibCity's columns are "
            f"tests/libcity_reference/SYNTH_LA/TRAINING.md (LibCity's own runs).\n\n{tab}\n\n{gaps}\n\n"
            f"Run times: {'; '.join(seconds)}.\n")
    write_section("fidelity_models", "Training fidelity per model vs LibCity (bench/bench_fidelity_models.py)", body)


if __name__ == "__main__":
    main()
