"""A synthetic experiment folder in the real formats, for the report's tests and benchmark.

The files are those tuning writes (results json, settings json, best config, evaluator csv,
predictions npz); the numbers follow simple known rules so that a test can check the figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from libtraffic.results import SETTINGS_FILE, TrialRecord, best_config_path, ranked, write_results
from libtraffic.utils.safe_write import write_json

SPACE = {"learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-1},
         "hidden_size": {"type": "choice", "list": [16, 32, 64]},
         "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.5},
         "num_layers": {"type": "randint", "lower": 1, "upper": 4}}
METRICS = ["MAE", "MAPE", "MSE", "RMSE", "masked_MAE", "masked_MAPE", "masked_MSE", "masked_RMSE", "R2", "EVAR"]


def _trial(i: int, rng: np.random.Generator, max_epoch: int) -> TrialRecord:
    """One trial record; the loss depends mostly on the learning rate (distance of log10 from -2.5)."""
    config = {"learning_rate": float(10 ** rng.uniform(-4, -1)), "hidden_size": int(rng.choice([16, 32, 64])),
              "dropout": float(rng.uniform(0, 0.5)), "num_layers": int(rng.integers(1, 4))}
    floor = 2.5 + 0.8 * (math.log10(config["learning_rate"]) + 2.5) ** 2 + 0.2 * config["dropout"]
    # as ASHA would: the poor trials (high loss floor) are stopped early
    status = "ERROR" if i % 17 == 16 else ("STOPPED EARLY" if floor > 3.2 else "DONE")
    epochs = 0 if status == "ERROR" else (max_epoch if status == "DONE" else int(rng.integers(1, max_epoch)))
    curve = [float(floor + 3.0 * math.exp(-0.5 * e) + rng.normal(0, 0.02)) for e in range(epochs)]
    best = int(np.argmin(curve)) if curve else None
    # random ids as Ray's searchers give; started (unix seconds) in creation order
    best_loss = curve[best] if curve else math.nan
    return TrialRecord(trial_id=f"{int(rng.integers(16 ** 8)):08x}", started=1_764_331_200.0 + 7 * i,
                       config=config, seed=1000 + i, status=status, epochs_run=epochs, best_epoch=best,
                       best_loss=best_loss, loss_curve=curve, best_value=best_loss, metric_curve=curve,
                       epoch_seconds=[1.5] * epochs, wall_time_s=1.5 * epochs + 2.0,
                       error="ValueError: dropout must be in [0, 1)" if status == "ERROR" else "")


def write_synthetic_experiment(folder: Path, trials: int = 20, max_epoch: int = 10, nodes: int = 8,
                               samples: int = 600, output_window: int = 12, settings: bool = True,
                               seed: int = 0) -> list[dict[str, Any]]:
    """Write an experiment into ``folder`` (libtraffic/cache/<exp_id>); returns the trial records as dicts."""
    rng = np.random.default_rng(seed)
    records = ranked([_trial(i, rng, max_epoch) for i in range(trials)])  # best first, as tuning writes them
    write_results(folder, records)
    records = [asdict(r) for r in records]
    if settings:
        write_json(folder / SETTINGS_FILE, {
            "command": "python hyper_tune.py --model GRU --dataset SYNTH --space_file space", "argv": [],
            "task": "traffic_state_pred", "model": "GRU", "dataset": "SYNTH", "exp_id": folder.name,
            "space_file": "space.json", "space": SPACE, "search_alg": "OptunaSearch", "scheduler": "ASHA",
            "num_samples": trials, "max_concurrent": 2, "cpu_per_trial": 1, "gpu_per_trial": 0, "seed": seed,
            "time_budget_s": None, "fixed": {"max_epoch": max_epoch}, "started": "2026-11-28 12:00:00"})
    write_json(best_config_path(folder, "GRU", "SYNTH"), {**records[0]["config"], "seed": records[0]["seed"]})
    evaluate = folder / "evaluate_cache"
    evaluate.mkdir(parents=True, exist_ok=True)
    horizons = pd.Index(range(1, output_window + 1), name="horizon")
    # metric k at horizon h is (h + 1) * (0.5 + 0.1 k), MAPEs as fractions (/ 100)
    table = pd.DataFrame({m: [(i + 1) * (0.5 + 0.1 * k) / (100 if "MAPE" in m else 1) for i in range(output_window)]
                          for k, m in enumerate(METRICS)}, index=horizons)
    table.to_csv(evaluate / "2026_11_28_12_00_00_GRU_SYNTH.csv")
    steps = np.arange(samples + output_window)[:, None]
    series = 60 + 10 * np.sin(2 * np.pi * steps / 288 + np.arange(nodes)) + rng.normal(0, 1, (len(steps), nodes))
    truth = np.stack([series[s: s + output_window] for s in range(samples)])[..., None].astype(np.float32)
    noise = rng.normal(0, 1, truth.shape) * (1 + np.arange(output_window)[None, :, None, None] * 0.2)
    noise *= (1 + np.arange(nodes))[None, None, :, None]  # sensor k errs (k+1) times as much as sensor 0
    np.savez_compressed(evaluate / "2026_11_28_12_00_00_GRU_SYNTH_predictions.npz",
                        prediction=(truth + noise).astype(np.float32), truth=truth)
    return records
