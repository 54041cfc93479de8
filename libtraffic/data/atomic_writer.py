"""Writers of LibCity atomic files (.geo, .rel, .dyna, config.json), shared by the synthetic data
generator and the converters of the original benchmark files.

The .dyna text is assembled as bytes with NumPy, one entity at a time: a METR_LA-sized file
(7.1 M rows) is written in a few seconds and never held whole in memory. Readings are written as
the shortest text that reads back to the same number (``64.375``, ``0.0``, ``1e-05``); NaN is
written as an empty field (a missing reading).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from libtraffic.utils.errors import LibTrafficError

GEO_HEADER = "geo_id,type,coordinates\n"
REL_HEADER_START = "rel_id,type,origin_id,destination_id"

# LibCity's METR_LA / PEMS_BAY adjacency: Gaussian kernel of road distances (sigma = their std),
# absent pairs at infinite distance, weights below 0.1 dropped.
DISTANCE_KERNEL: dict[str, Any] = {
    "init_weight_inf_or_zero": "inf", "set_weight_link_or_dist": "dist",
    "calculate_weight_adj": True, "weight_adj_epsilon": 0.1,
}

Field = tuple[np.ndarray, np.ndarray]  # (M, width) uint8 NUL-padded text, (M,) lengths


def check_dataset_name(name: str) -> None:
    """A dataset name is a plain folder name (it becomes raw_data/<name>/ and the file names)."""
    if not name or Path(name).name != name or name in {".", ".."} or "\\" in name:
        raise LibTrafficError(f"Dataset name {name!r} must be a plain folder name, like METR_LA (no '/' or '..').")


def digits(values: np.ndarray) -> Field:
    """Decimal text of non-negative ints: (M, width) uint8 left-aligned, and (M,) lengths."""
    width = len(str(int(values.max()))) if len(values) else 1
    lengths = np.ones(len(values), dtype=np.int64)
    for power in range(1, width):
        lengths += values >= 10**power
    exponent = lengths[:, None] - 1 - np.arange(width)
    number = values[:, None] // 10 ** np.maximum(exponent, 0) % 10
    return np.where(exponent >= 0, number + ord("0"), 0).astype(np.uint8), lengths


def fixed(text: np.ndarray | bytes, rows: int) -> Field:
    """A bytes constant or an (M,) fixed-width 'S' array as (M, width) uint8 and (M,) lengths."""
    if isinstance(text, bytes):
        matrix = np.broadcast_to(np.frombuffer(text, dtype=np.uint8), (rows, len(text)))
        return matrix, np.full(rows, len(text))
    matrix = text.view(np.uint8).reshape(rows, text.itemsize)
    return matrix, (matrix != 0).sum(axis=1)


def join_rows(fields: list[Field]) -> np.ndarray:
    """Concatenate per-row fields (matrix (M, w) uint8 NUL-padded, lengths (M,)) into one buffer."""
    row_length = sum(lengths for _, lengths in fields)
    cursor = np.cumsum(row_length) - row_length
    out = np.empty(int(row_length.sum()), dtype=np.uint8)
    for matrix, lengths in fields:
        used = np.arange(matrix.shape[1]) < lengths[:, None]
        out[(cursor[:, None] + np.arange(matrix.shape[1]))[used]] = matrix[used]
        cursor = cursor + lengths
    return out


def number_texts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (same shape as ``values``, int32) into a table of texts ('S' array) of the distinct values.

    Each distinct value is formatted once, as the shortest text that reads back to it in its own
    precision (float32 0.1 -> '0.1', float64 62.666666666666664 as such); NaN -> '' (missing).
    The distinct values are found by hashing (pandas.factorize): 7 M readings in well under a second.
    """
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise LibTrafficError(f"Readings must be real numbers, got values of type {values.dtype}.")
    codes, distinct = pd.factorize(values.reshape(-1), use_na_sentinel=True)  # NaN -> -1
    if values.dtype.kind == "f" and values.dtype.itemsize < 8:
        texts = [str(v) for v in distinct]  # NumPy's shortest repr in the value's own precision
    else:
        texts = [repr(v) for v in distinct.tolist()]
    table = np.array([*texts, ""], dtype="S")  # code -1 (NaN) picks the last entry: empty
    return codes.astype(np.int32).reshape(values.shape), table


def time_texts(start: np.datetime64, steps: int, seconds: int) -> np.ndarray:
    """(steps,) 'S' array of ISO UTC times as LibCity writes them: 2012-03-01T00:00:00Z."""
    times = np.datetime64(start, "s") + np.arange(steps) * np.timedelta64(seconds, "s")
    return np.char.add(np.datetime_as_string(times, unit="s"), "Z").astype("S")


def dyna_chunks(
    entity_ids: Sequence, times: np.ndarray, codes: np.ndarray, table: np.ndarray, columns: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> Iterator[bytes | np.ndarray]:
    """The .dyna file as byte buffers: the header, then one buffer per entity (all its times).

    times: (T,) 'S' texts; codes: (T, N, F) indices into ``table`` ('S' texts of the readings);
    rows grouped by entity, then time, with dyna_id counting from 0 as LibCity's converters do.
    ``progress(done)`` is called after each entity.
    """
    yield ("dyna_id,type,time,entity_id," + ",".join(columns) + "\n").encode()
    num_steps = len(times)
    time_field = fixed(times, num_steps)
    comma, newline = fixed(b",", num_steps), fixed(b"\n", num_steps)
    for node, entity in enumerate(entity_ids):
        readings: list[Field] = []
        for feature in range(codes.shape[2]):
            readings += [comma] if feature else []
            readings.append(fixed(table[codes[:, node, feature]], num_steps))
        yield join_rows([
            digits(np.arange(node * num_steps, (node + 1) * num_steps)),
            fixed(b",state,", num_steps),
            time_field,
            fixed(f",{entity},".encode(), num_steps),
            *readings,
            newline,
        ])
        if progress is not None:
            progress(node + 1)


def geo_text(entity_ids: Sequence, coordinates: np.ndarray | None) -> str:
    """.geo text: one Point per entity, '[lon, lat]' where known, '[]' where not (as LibCity's PEMSD4)."""
    rows = []
    for i, entity in enumerate(entity_ids):
        point = None if coordinates is None or np.isnan(coordinates[i]).any() else coordinates[i]
        where = '"' + json.dumps([float(point[0]), float(point[1])]) + '"' if point is not None else "[]"
        rows.append(f"{entity},Point,{where}\n")
    return GEO_HEADER + "".join(rows)


def rel_text(origin_ids: Sequence, dest_ids: Sequence, weights: np.ndarray, weight_col: str) -> str:
    """.rel text: rel_id,type,origin_id,destination_id,<weight_col>, type 'geo'."""
    codes, table = number_texts(np.asarray(weights))
    texts = [t.decode() for t in table[codes]]
    rows = (f"{k},geo,{o},{d},{w}\n" for k, (o, d, w) in enumerate(zip(origin_ids, dest_ids, texts)))
    return f"{REL_HEADER_START},{weight_col}\n" + "".join(rows)


def dataset_config(name: str, data_col: Sequence[str], weight_col: str, time_intervals: int,
                   adjacency: Mapping[str, Any]) -> dict:
    """config.json as LibCity's converted datasets have it: the geo/rel/dyna schemas and ``info``.

    ``adjacency``: init_weight_inf_or_zero, set_weight_link_or_dist, calculate_weight_adj,
    weight_adj_epsilon (how the loader turns the .rel weights into the adjacency matrix).
    """
    return {
        "geo": {"including_types": ["Point"], "Point": {}},
        "rel": {"including_types": ["geo"], "geo": {weight_col: "num"}},
        "dyna": {"including_types": ["state"], "state": {"entity_id": "geo_id", **{c: "num" for c in data_col}}},
        "info": {
            "data_col": list(data_col),
            "weight_col": weight_col,
            "data_files": [name],
            "geo_file": name,
            "rel_file": name,
            "output_dim": len(data_col),
            "time_intervals": int(time_intervals),
            **adjacency,
        },
    }


