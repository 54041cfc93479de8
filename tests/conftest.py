"""Shared fixtures: tiny LibCity atomic datasets written into tmp_path, which becomes the cwd.

Every run anchors its files (raw_data/, libtraffic/log/, libtraffic/cache/) to the working
directory, so a test that chdirs into tmp_path leaves nothing behind in the repository.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from tests import warm
import torch

from libtraffic.data.synthetic import write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
START = np.datetime64("2012-03-01T00:00:00", "s")  # a Thursday
STEP = 300

# One intra-op thread: with two threads on a two-core machine that is also running other
# work, OpenMP spin-waiting makes small matmuls up to 100x slower and the suite's time erratic.
torch.set_num_threads(1)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# The files with long Ray runs, longest first. The suite runs in three processes that take whole files
# in this order (pyproject.toml), so the long files start first and the processes end together.
LONG_FILES_FIRST = ("test_tuning.py", "test_cluster.py", "test_tuning_resume.py", "test_tune_models.py",
                    "test_tune_trust.py", "test_docs.py", "test_tune_cli_errors.py", "test_trust.py", "test_libcity_checkpoints.py",
                    "test_cli_safety.py", "test_trust_core.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory of the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_dataset(workdir: Path) -> str:
    """A 6-sensor, 3-day synthetic dataset in METR_LA's schema under ./raw_data/TINY."""
    write_synthetic_dataset(workdir / "raw_data", "TINY", num_nodes=6, num_days=3, seed=1)
    return "TINY"


@pytest.fixture(autouse=True)
def _reset_libtraffic_logger():
    """run_model() gives the 'libtraffic' logger handlers and propagate=False; undo that so
    log files are closed and caplog keeps working in later tests."""
    yield
    logger = logging.getLogger("libtraffic")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def hand_values(num_steps: int = 20, num_nodes: int = 3) -> np.ndarray:
    """(T, N) readings with value = 100 * (node + 1) + t: every window is recognisable."""
    return (100.0 * (np.arange(num_nodes) + 1)[None, :] + np.arange(num_steps)[:, None]).astype(np.float32)


def dyna_text(values: np.ndarray, geo_ids: Sequence, columns: Sequence[str], start: np.datetime64 = START,
              order: np.ndarray | None = None, seconds: np.ndarray | None = None) -> str:
    """A .dyna file (rows grouped by entity, then time, as LibCity's converters write them).

    values: (T, N) or (T, N, F); ``order`` permutes the data rows (a shuffled file);
    ``seconds``: (T,) or (T, N) offsets from ``start`` (default every 5 minutes).
    """
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[:, :, None]
    num_steps, num_nodes, _ = values.shape
    seconds = np.arange(num_steps) * STEP if seconds is None else np.asarray(seconds)
    seconds = np.broadcast_to(seconds.reshape(num_steps, -1), (num_steps, num_nodes))
    times = np.datetime_as_string(start + seconds.astype("timedelta64[s]"), unit="s")
    rows = []
    for node in range(num_nodes):
        for t in range(num_steps):
            readings = ",".join("" if np.isnan(v) else repr(float(v)) for v in values[t, node])
            rows.append(f"state,{times[t, node]}Z,{geo_ids[node]},{readings}")
    if order is not None:
        rows = [rows[i] for i in order]
    body = "".join(f"{i},{row}\n" for i, row in enumerate(rows))
    return f"dyna_id,type,time,entity_id,{','.join(columns)}\n" + body


def write_dataset(
    root: Path,
    name: str,
    values: np.ndarray,
    *,
    geo_ids: Sequence | None = None,
    rel: Sequence[tuple[int, int, float]] | None = None,
    info: dict | None = None,
    columns: Sequence[str] | None = None,
    start: np.datetime64 = START,
    shuffle_seed: int | None = None,
    dyna: str | None = None,
    config_text: str | None = None,
) -> Path:
    """Write raw_data/<name>/{name.geo, name.rel, name.dyna, config.json} from Python values.

    values: (T, N) or (T, N, F) readings; geo_ids default 10, 11, ...; rel: (origin index,
    destination index, cost) rows; info: entries of config.json's info block (defaults as
    METR_LA's minus the adjacency kernel); dyna / config_text replace the generated file text.
    """
    values = np.asarray(values, dtype=np.float64)
    num_nodes = values.shape[1]
    geo_ids = list(geo_ids) if geo_ids is not None else [10 + i for i in range(num_nodes)]
    num_features = 1 if values.ndim == 2 else values.shape[2]
    columns = list(columns) if columns is not None else (
        ["traffic_speed"] if num_features == 1 else [f"c{j}" for j in range(num_features)])
    rel = rel if rel is not None else [(i, (i + 1) % num_nodes, 100.0 * (i + 1)) for i in range(num_nodes)]
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.geo").write_text(
        "geo_id,type,coordinates\n" + "".join(f'{g},Point,"[-118.{i}, 34.1]"\n' for i, g in enumerate(geo_ids)))
    (folder / f"{name}.rel").write_text(
        "rel_id,type,origin_id,destination_id,cost\n"
        + "".join(f"{k},geo,{geo_ids[o]},{geo_ids[d]},{c!r}\n" for k, (o, d, c) in enumerate(rel)))
    order = None
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(values.shape[0] * num_nodes)
    (folder / f"{name}.dyna").write_text(dyna if dyna is not None else dyna_text(values, geo_ids, columns, start, order=order))
    base_info = {
        "data_col": columns, "weight_col": "cost", "data_files": [name], "geo_file": name, "rel_file": name,
        "output_dim": num_features, "time_intervals": STEP, "init_weight_inf_or_zero": "zero",
        "set_weight_link_or_dist": "dist", "calculate_weight_adj": False, "weight_adj_epsilon": 0.1,
    }
    base_info.update(info or {})
    text = config_text if config_text is not None else json.dumps({"info": base_info}, indent=2)
    (folder / "config.json").write_text(text)
    return folder


@pytest.fixture
def make_dataset(workdir: Path) -> Callable[..., Path]:
    """write_dataset bound to ./raw_data of the test's working directory."""
    return lambda name, values, **kwargs: write_dataset(workdir / "raw_data", name, values, **kwargs)


def run_clis(repo_root: Path, runs: Sequence[tuple[Path, Sequence[str]]], timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """Run ``python run_model.py ARGS`` in ``cwd`` for each (cwd, ARGS), all at once (each
    process spends seconds importing torch), and return their results in order."""
    procs = [warm.Popen([sys.executable, str(repo_root / "run_model.py"), *args], cwd=cwd, env=SUBPROCESS_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cwd, args in runs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def run_cli(repo_root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``python run_model.py ARGS`` in ``cwd``."""
    return run_clis(repo_root, [(cwd, args)])[0]
