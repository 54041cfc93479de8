"""A converted dataset and how it is written: raw_data/<dataset>/ (or --out DIR) with
<dataset>.geo, <dataset>.rel, <dataset>.dyna and config.json, all or nothing.

The files are written into a temporary folder next to the target and moved into place only when
all four are complete, so a failed conversion leaves nothing behind and an existing dataset is
replaced (with --force) only by a complete one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from libtraffic.utils.safe_write import write_atomically
from libtraffic.data.atomic_writer import (
    dataset_config, dyna_chunks, geo_text, number_texts, rel_text, time_texts,
)
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError


@dataclass
class Converted:
    """A dataset read from the original files.

    sensor_ids: (N,) int64 or str, the .geo order (the data's column / node order);
    coordinates: (N, 2) [lon, lat] with NaN rows where unknown, or None;
    readings: (T, N, F) in ``data_col`` order, 0 kept as 0 (missing), NaN written empty;
    start: time of step 0 (UTC); interval: seconds between steps;
    origin, dest: (E,) sensor ids of the .rel edges; weights: (E,) their ``weight_col`` values;
    adjacency: the config.json info keys telling the loader how weights become the adjacency matrix;
    graph: one line saying where the edges came from (for the summary).
    """

    sensor_ids: np.ndarray
    coordinates: np.ndarray | None
    readings: np.ndarray
    data_col: list[str]
    start: np.datetime64
    interval: int
    origin: np.ndarray
    dest: np.ndarray
    weights: np.ndarray
    weight_col: str
    adjacency: dict[str, Any]
    graph: str


def target_folder(dataset: str, out: str | None) -> Path:
    """--out DIR, else ./raw_data/<dataset>."""
    return Path(out).resolve() if out else paths.raw_data_dir(dataset)


def check_target(folder: Path, force: bool) -> None:
    """Refuse an existing non-empty folder unless ``force`` (checked before any reading)."""
    if folder.exists() and not folder.is_dir():
        raise LibTrafficError(f"The output {folder} is a file, not a folder; choose another --dataset or --out.")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        held = ", ".join(sorted(p.name for p in folder.iterdir())[:4])
        raise LibTrafficError(
            f"{folder} already exists (it holds {held}); refusing to overwrite it. Choose another --dataset "
            "or --out, or pass --force to replace its dataset files.")


class Progress:
    """'Writing X.dyna: 45% (93/207 sensors)' on one updated line in a terminal, every 10% otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.tty = stream.isatty()
        self.shown = 0

    def __call__(self, done: int) -> None:
        percent = 100 * done // self.total
        if percent // 10 == self.shown // 10 and not (self.tty and percent != self.shown):
            return
        self.shown = percent
        end = "\r" if self.tty and done < self.total else "\n"
        print(f"Writing {self.label}: {percent:3d}% ({done}/{self.total} sensors)", end=end, file=self.stream, flush=True)


def _write_files(data: Converted, name: str, folder: Path) -> None:
    ids = data.sensor_ids
    config = dataset_config(name, data.data_col, data.weight_col, data.interval, data.adjacency)
    write_atomically(folder / f"{name}.geo", [geo_text(ids, data.coordinates).encode()])
    write_atomically(folder / f"{name}.rel", [rel_text(data.origin, data.dest, data.weights, data.weight_col).encode()])
    write_atomically(folder / "config.json", [(json.dumps(config, indent=2) + "\n").encode()])
    codes, table = number_texts(data.readings)
    times = time_texts(data.start, data.readings.shape[0], data.interval)
    chunks = dyna_chunks(ids, times, codes, table, data.data_col, Progress(f"{name}.dyna", len(ids)))
    write_atomically(folder / f"{name}.dyna", chunks)


def write_dataset(data: Converted, name: str, folder: Path, force: bool) -> None:
    """Write the four files into ``folder`` (created, or with ``force`` its four files replaced)."""
    check_target(folder, force)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.mkdir(parents=True)
        _write_files(data, name, tmp)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if not folder.exists():
            tmp.rename(folder)
        else:  # --force: replace our four files, leave anything else the user keeps there
            for path in tmp.iterdir():
                os.replace(path, folder / path.name)
    except OSError as err:
        raise LibTrafficError(f"Cannot write the dataset into {folder}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(data: Converted, name: str, folder: Path, seconds: float) -> str:
    """What was written and how to use it."""
    steps, nodes, _ = data.readings.shape
    start = np.datetime_as_string(np.datetime64(data.start, "s"), unit="s")
    lines = [
        f"Wrote {folder} in {seconds:.1f} s: {nodes} sensors x {steps} steps of {data.interval} s from {start}Z "
        f"({steps * nodes} .dyna rows: {', '.join(data.data_col)}), {len(data.origin)} .rel edges ({data.graph}).",
    ]
    if folder.parent == paths.root() / "raw_data":
        lines.append(f"Use it with: python run_model.py --task traffic_state_pred --model GRU --dataset {folder.name}")
    else:
        lines.append(f"To use it, put the folder in ./raw_data/ and pass --dataset with its folder name ({folder.name}).")
    return "\n".join(lines)
