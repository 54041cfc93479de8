"""The PEMS03/04/07/08 files of the ASTGCN / STSGCN line -> a converted dataset.

PEMS04.npz holds ``data`` of shape (time, nodes, 3) = flow, occupancy, speed every 5 minutes
(PEMS03 and PEMS07: (time, nodes, 1), flow only); PEMS04.csv lists the graph as from,to,cost with
node indices 0..N-1. PEMS03's csv uses sensor ids instead, listed in PEMS03.txt in node order
(--ids). The files carry no times: step 0 is --start, by default the dataset's published start.
The graph is used as LibCity's PEMSD4 uses it: a directed 0/1 link per listed pair.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from libtraffic.data.convert.output import Converted
from libtraffic.data.convert.readers import (
    edges_among, first_duplicate, missing_ids, read_edges, read_id_list, require_file, shown_ids,
)
from libtraffic.utils.errors import LibTrafficError

PUBLISHED_START = {"PEMS03": "2018-09-01", "PEMS04": "2018-01-01", "PEMS07": "2017-05-01", "PEMS08": "2016-07-01"}
FEATURES = {1: ["traffic_flow"], 3: ["traffic_flow", "traffic_occupancy", "traffic_speed"]}
STEP_SECONDS = 300
LINKS: dict[str, Any] = {
    "init_weight_inf_or_zero": "zero", "set_weight_link_or_dist": "link",
    "calculate_weight_adj": False, "weight_adj_epsilon": 0.1,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--npz", required=True, help="PEMS0X.npz holding 'data' (time, nodes, 3 or 1)")
    parser.add_argument("--distances", required=True, metavar="FILE", help="PEMS0X.csv: the graph as from,to,cost")
    parser.add_argument("--ids", metavar="FILE",
                        help="sensor ids in node order (PEMS03.txt), when the csv names sensor ids, not node indices")
    known = ", ".join(f"{name} {day}" for name, day in PUBLISHED_START.items())
    parser.add_argument("--start", help=f"time of the first step, e.g. 2018-01-01 (default: the published start: {known})")


def published_name(text: str) -> str | None:
    """'PEMSD4', 'PEMS04', 'pems04' -> 'PEMS04'; None for other names."""
    match = re.fullmatch(r"PEMSD?0?([3478])", re.sub(r"[^A-Z0-9]", "", text.upper()))
    return f"PEMS0{match.group(1)}" if match else None


def start_time(args: argparse.Namespace, npz: Path) -> np.datetime64:
    """--start, else the published start of the dataset that --dataset or the npz file name names."""
    if args.start:
        try:
            stamp = pd.Timestamp(args.start)
        except ValueError as err:
            raise LibTrafficError(f"--start {args.start!r} is not a date or time like 2018-01-01 or 2018-01-01T00:00:00.") from err
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        return np.datetime64(stamp.to_datetime64(), "s")
    named = {published_name(args.dataset), published_name(npz.stem)} - {None}
    known = ", ".join(f"{name} {day}" for name, day in PUBLISHED_START.items())
    if len(named) != 1:
        clash = f"--dataset {args.dataset} and {npz.name} name different datasets" if named else \
            f"the start of {npz.name} (--dataset {args.dataset}) is not known"
        raise LibTrafficError(f"Give --start DATE (the time of the first reading): {clash}. Known starts: {known}.")
    return np.datetime64(PUBLISHED_START[named.pop()], "s")


def read_npz(path: Path) -> np.ndarray:
    """``data`` (T, N, F) with F = 1 (flow) or 3 (flow, occupancy, speed)."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise LibTrafficError(f"{path} is a single .npy array; expected an .npz archive holding 'data'.")
        with archive:
            if "data" not in archive.files:
                raise LibTrafficError(f"{path} holds {', '.join(archive.files) or 'nothing'}; expected an array named 'data'.")
            data = archive["data"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise LibTrafficError(f"Cannot read {path} as a NumPy .npz file: {err}") from err
    if data.ndim != 3 or data.shape[2] not in FEATURES or min(data.shape) == 0:
        raise LibTrafficError(
            f"{path}: 'data' has shape {data.shape}; expected (time, nodes, 3) = flow, occupancy, speed "
            "(PEMS04, PEMS08) or (time, nodes, 1) = flow (PEMS03, PEMS07).")
    if not np.issubdtype(data.dtype, np.number):
        raise LibTrafficError(f"{path}: 'data' holds {data.dtype}, not numbers.")
    return data


def _sensor_ids(args: argparse.Namespace, num_nodes: int, npz: Path) -> np.ndarray:
    if not args.ids:
        return np.arange(num_nodes, dtype=np.int64)
    ids = read_id_list(require_file(args.ids, "--ids"))
    if len(ids) != num_nodes:
        raise LibTrafficError(f"--ids {args.ids} lists {len(ids)} sensor ids but {npz.name} has {num_nodes} nodes.")
    if first_duplicate(ids) is not None:
        raise LibTrafficError(f"--ids {args.ids} lists sensor {first_duplicate(ids)} twice.")
    return ids


def read(args: argparse.Namespace) -> Converted:
    npz = require_file(args.npz, "--npz")
    csv = require_file(args.distances, "--distances")
    start = start_time(args, npz)
    data = read_npz(npz)
    sensors = _sensor_ids(args, data.shape[1], npz)
    edges = read_edges(csv)
    unknown = missing_ids(np.unique(edges.ids()), sensors)
    if len(unknown):
        hint = "" if args.ids else " If the csv names sensor ids (as PEMS03.csv), pass the id list with --ids (PEMS03.txt)."
        raise LibTrafficError(
            f"{csv} names {len(unknown)} sensor(s) that {npz.name} does not have "
            f"({'node indices 0..' + str(data.shape[1] - 1) if not args.ids else 'ids of ' + str(args.ids)}): "
            f"{shown_ids(unknown)}.{hint}")
    kept = edges_among(edges, sensors, csv)
    return Converted(sensors, None, data, FEATURES[data.shape[2]], start, STEP_SECONDS, kept.origin, kept.dest,
                     kept.cost, "cost", dict(LINKS), f"directed links of {csv.name}, as LibCity's PEMSD4")
