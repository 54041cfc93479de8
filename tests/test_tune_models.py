"""Every model through hyper_tune.py (issue 16, item 6): its shipped space file spaces/<MODEL>.json,
searchers and schedulers in rotation, --metric, --final_seeds, the best model, the best config and
the report, on one shared Ray head and a tiny graph dataset. The runs go at once (the head queues
their trials), so the module costs about as much as its slowest run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from libtraffic.data.synthetic import write_synthetic_dataset
from libtraffic.model import MODELS
from tests import warm
from tests.ray_nodes import RAY_ENV, free_port, start_node

REPO = Path(__file__).resolve().parent.parent
DATASET = "TUNE_GRAPH"
NODES = 20  # MTGNN's default subgraph_size is 20 sensors
# (search_alg, scheduler, extra flags) per model; GRU/LSTM/RNN are tuned in test_tuning.py.
PLANS = {
    "STID": ("BasicSearch", "FIFO", ["--metric", "masked_MAE@3"]),
    "GWNET": ("HyperOpt", "ASHA", []),
    "STGCN": ("OptunaSearch", "MedianStoppingRule", []),
    "DCRNN": ("HyperOpt", "FIFO", []),
    "AGCRN": ("BasicSearch", "HyperBand", ["--metric", "R2"]),
    "MTGNN": ("OptunaSearch", "ASHA", ["--metric", "masked_MAE"]),
    "TGCN": ("BasicSearch", "MedianStoppingRule", ["--final_seeds", "2"]),
}
TUNED = [model for model in MODELS if model not in ("GRU", "LSTM", "RNN")]


def test_every_model_has_a_plan() -> None:
    assert set(TUNED) <= set(PLANS), "add the new model to PLANS"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("tune_models")
    write_synthetic_dataset(root / "raw_data", DATASET, num_nodes=NODES, num_days=2, seed=5)
    port = free_port()
    head = start_node(tmp_path_factory.mktemp("ray"), head_port=port, num_cpus=2)
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": f"127.0.0.1:{port}", "OMP_NUM_THREADS": "1"}
    try:
        procs = {}
        for model in TUNED:
            search_alg, scheduler, extra = PLANS[model]
            cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--task", "traffic_state_pred", "--model", model,
                   "--dataset", DATASET, "--space_file", str(REPO / "spaces" / model), "--exp_id", model,
                   "--search_alg", search_alg, "--scheduler", scheduler, "--num_samples", "2", "--max_epoch", "2",
                   "--batch_size", "64", *extra]
            procs[model] = warm.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
        done = {}
        for model, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            done[model] = (root, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        yield done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        head.end()


@pytest.mark.parametrize("model", TUNED)
def test_model_is_tuned_end_to_end(runs: dict, model: str) -> None:
    root, out = runs[model]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cache = root / "libtraffic" / "cache" / model
    saved = json.loads((cache / "hyper_tune_results.json").read_text())
    rows = saved["trials"] if isinstance(saved, dict) else saved  # with --final_seeds: {"trials", "final_seeds"}
    assert len(rows) == 2 and any(r["status"] == "DONE" for r in rows)
    space = json.loads((REPO / "spaces" / f"{model}.json").read_text())
    for row in rows:
        assert set(space) <= set(row["config"]), row["config"]
    search_alg, scheduler, extra = PLANS[model]
    metric = extra[1] if extra[:1] == ["--metric"] else "loss"
    assert f"best val {metric}" in out.stdout or f"best {metric}" in out.stdout, out.stdout[-2000:]
    # The best model is the model asked for, with the best trial's tuned values.
    state = torch.load(cache / "model_cache" / f"{model}_{DATASET}.m", weights_only=True)
    assert state["config"]["model"] == model
    best = json.loads((cache / f"{model}_{DATASET}_best_config.json").read_text())
    for key in space:
        assert state["config"][key] == best[key], key
    assert "masked_MAE" in out.stdout  # the best model's test metrics
    assert (cache / "hyper_tune_report.html").is_file()
    if "--final_seeds" in extra:
        assert len(json.loads((cache / "hyper_tune_final_runs.json").read_text())["runs"]) == 2
        (final,) = saved["final_seeds"]
        assert len([run for run in final["runs"] if "test" in run]) == 2
        assert "±" in out.stdout
