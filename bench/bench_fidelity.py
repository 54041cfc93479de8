"""Fidelity benchmark: LibCity's default GRU (ours now) vs our previous defaults, and padded scoring.

    python bench/bench_fidelity.py [--days 7] [--epochs 20] [--seeds 0 1 2]

On a METR_LA-like synthetic week (207 sensors, METR_LA's schema; real METR_LA is not available
here), trains the GRU with today's defaults (LibCity's RNN.json: time of day, multisteplr decay,
clipping at 5, early stopping) and with the previous defaults (none of those), --epochs each, for
each seed, and reports the test masked MAE at 15 / 30 / 60 minutes (mean over seeds). Then scores
each default model's test split twice: every sample once (ours) and padded with copies of the last
sample to whole batches (LibCity's, `eval_pad_with_last_sample`), to measure what padding changes.
Figures go to bench/RESULTS.md (section "fidelity").
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

import torch

from benchlib import median, table, write_section

OLD_DEFAULTS = {"load_external": False, "add_time_in_day": False, "lr_decay": False, "clip_grad_norm": False,
                "use_early_stop": False}
HORIZONS = (3, 6, 12)


def run(dataset: str, exp_id: str, epochs: int, seed: int, extra: dict) -> dict[str, float]:
    from libtraffic.pipeline import run_model

    return run_model(dataset_name=dataset, other_args={"exp_id": exp_id, "max_epoch": epochs, "seed": seed,
                                                        "log_level": "WARNING", "save_predictions": False, **extra})


def padded_scores(dataset: str, exp_id: str, pad: bool) -> dict[str, float]:
    from libtraffic.pipeline import run_model

    return run_model(dataset_name=dataset, train=False, other_args={
        "exp_id": exp_id, "log_level": "WARNING", "save_predictions": False, "eval_pad_with_last_sample": pad})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=207)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from libtraffic.data.synthetic import write_synthetic_dataset

    work, home = Path(tempfile.mkdtemp(prefix="bench_fidelity_")), Path.cwd()
    os.chdir(work)
    write_synthetic_dataset(work / "raw_data", "WEEK", num_nodes=args.nodes, num_days=args.days, seed=7)
    logging.getLogger("libtraffic").setLevel(logging.WARNING)
    scores: dict[str, list[dict[str, float]]] = {"LibCity's defaults (ours now)": [], "previous defaults": []}
    pad_effect = []
    for seed in args.seeds:
        new = run("WEEK", f"new{seed}", args.epochs, seed, {})
        old = run("WEEK", f"old{seed}", args.epochs, seed, OLD_DEFAULTS)
        scores["LibCity's defaults (ours now)"].append(new)
        scores["previous defaults"].append(old)
        once, padded = padded_scores("WEEK", f"new{seed}", False), padded_scores("WEEK", f"new{seed}", True)
        pad_effect.append({h: padded[f"masked_MAE@{h}"] / once[f"masked_MAE@{h}"] - 1 for h in HORIZONS})
        print(seed, {k: [round(v[-1][f"masked_MAE@{h}"], 4) for h in HORIZONS] for k, v in scores.items()}, flush=True)
    rows = [[name, *[f"{statistics.mean(r[f'masked_MAE@{h}'] for r in runs):.4f}" for h in HORIZONS]]
            for name, runs in scores.items()]
    new_mae = {h: statistics.mean(r[f"masked_MAE@{h}"] for r in scores["LibCity's defaults (ours now)"]) for h in HORIZONS}
    old_mae = {h: statistics.mean(r[f"masked_MAE@{h}"] for r in scores["previous defaults"]) for h in HORIZONS}
    rows.append(["previous / LibCity's", *[f"{old_mae[h] / new_mae[h]:.3f}" for h in HORIZONS]])
    body = table(["GRU defaults", "masked MAE 15 min", "30 min", "60 min"], rows)
    body += (f"\n\nSynthetic data in METR_LA's schema: {args.nodes} sensors x {args.days} days, {args.epochs} epochs, "
             f"mean over seeds {args.seeds}, test split scored once per sample.\n\n")
    body += table(["padded / once, masked MAE", *[f"{h * 5} min" for h in HORIZONS]],
                  [["median over seeds", *[f"{median([p[h] for p in pad_effect]):+.4%}" for h in HORIZONS]]])
    body += ("\n\nLibCity's padded scoring (`eval_pad_with_last_sample true`) adds copies of the last test sample "
             "up to a whole batch of 64 and scores them too; the line gives its relative change of the test "
             "masked MAE for the same trained model.")
    os.chdir(home)
    write_section("fidelity", "Fidelity: LibCity's default GRU vs our previous defaults; padded scoring", body)


if __name__ == "__main__":
    main()
