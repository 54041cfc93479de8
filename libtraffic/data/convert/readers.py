"""Readers of the small text files that come with the benchmark data: sensor-id lists, sensor
locations and edge lists (from,to,cost), with or without a header row, as the papers' repositories
ship them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from libtraffic.utils.errors import LibTrafficError


@dataclass
class Edges:
    """Directed edges of a graph file: origin and destination sensor ids (E,), cost (E,) float64."""

    origin: np.ndarray
    dest: np.ndarray
    cost: np.ndarray

    def ids(self) -> np.ndarray:
        return np.concatenate([self.origin, self.dest])


def require_file(path: str | Path, flag: str) -> Path:
    """``path`` as a Path; a missing file stops with a message naming the flag that gave it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise LibTrafficError(f"{flag} {path} {what}.")
    return path


def normalize_ids(values, where: str) -> np.ndarray:
    """Sensor ids as int64 when all are whole numbers (as LibCity writes METR_LA's), else as str.

    ``where`` names the file for messages. An id that cannot be a csv field is refused.
    """
    texts = pd.Series(list(values), dtype=object).map(lambda v: v.decode() if isinstance(v, bytes) else str(v)).str.strip()
    if len(texts) and texts.str.fullmatch(r"[0-9]{1,18}").all():
        return texts.astype(np.int64).to_numpy()
    bad = texts[(texts == "") | texts.str.contains(r'[,"\s]')]
    if len(bad):
        raise LibTrafficError(f"{where}: sensor id {bad.iloc[0]!r} is empty or holds a comma, quote or space.")
    return texts.to_numpy(dtype=object)


def first_duplicate(ids: np.ndarray) -> object | None:
    """The first id that occurs twice, or None."""
    dup = pd.Index(ids).duplicated()
    return ids[dup][0] if dup.any() else None


def missing_ids(wanted: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The ids of ``wanted`` (in order) that are not in ``present``."""
    return wanted[~pd.Index(wanted).isin(present)]


def shown_ids(ids: np.ndarray, limit: int = 5) -> str:
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return ", ".join(str(i) for i in ids[:limit]) + more


def _read_table(path: Path, what: str) -> tuple[pd.DataFrame, list[str] | None]:
    """All cells as text, and the header names (lower case) when the first row is a header."""
    try:
        df = pd.read_csv(path, header=None, dtype=str, skipinitialspace=True, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise LibTrafficError(f"{path} is empty; expected {what}.") from err
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise LibTrafficError(f"Cannot read {path} as a csv file of {what}: {err}") from err
    first = df.iloc[0].str.strip()
    if pd.to_numeric(first, errors="coerce").isna().any():  # a word in the first row: a header
        return df.iloc[1:].reset_index(drop=True), [c.lower() for c in first]
    return df, None


def _numbers(column: pd.Series, path: Path, name: str, header: bool) -> np.ndarray:
    values = pd.to_numeric(column.str.strip(), errors="coerce")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise LibTrafficError(
            f"{path}: the {name} {column.iloc[row]!r} on line {row + 1 + header} is not a number.")
    return values.to_numpy(dtype=np.float64)


def read_edges(path: Path) -> Edges:
    """An edge list ``from,to,cost`` (DCRNN's distances_la_2012.csv, ASTGCN's PEMS04.csv), header optional."""
    df, header = _read_table(path, "edges from,to,cost")
    if not len(df):
        raise LibTrafficError(f"{path} has no edge rows{' below its header' if header is not None else ''}: it should "
                              "list from,to,cost (sensor, sensor, distance), one edge per line.")
    if df.shape[1] < 3:
        raise LibTrafficError(f"{path} should have rows from,to,cost (sensor, sensor, distance); found {df.shape[1]} column(s).")
    return Edges(normalize_ids(df[0], str(path)), normalize_ids(df[1], str(path)),
                 _numbers(df[2], path, "cost", header is not None))


def read_locations(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(sensor ids (M,), [lon, lat] (M, 2)) from DCRNN's graph_sensor_locations*.csv.

    With a header: columns sensor_id, latitude, longitude (METR_LA's file has an index column too);
    without one: sensor_id,latitude,longitude (PEMS_BAY's file) or index,sensor_id,latitude,longitude.
    """
    df, header = _read_table(path, "sensor locations")
    if header is not None:
        find = lambda *names: next((i for i, c in enumerate(header) if c in names), None)  # noqa: E731
        columns = [find("sensor_id", "id", "sensor"), find("latitude", "lat"), find("longitude", "lon", "lng")]
        if None in columns:
            raise LibTrafficError(f"{path} has columns {', '.join(header)}; expected sensor_id, latitude and longitude.")
    elif df.shape[1] in (3, 4):
        columns = [df.shape[1] - 3, df.shape[1] - 2, df.shape[1] - 1]
    else:
        raise LibTrafficError(f"{path} has {df.shape[1]} columns; expected [index,]sensor_id,latitude,longitude.")
    ids = normalize_ids(df[columns[0]], str(path))
    lat = _numbers(df[columns[1]], path, "latitude", header is not None)
    lon = _numbers(df[columns[2]], path, "longitude", header is not None)
    return ids, np.stack([lon, lat], axis=1)


def read_id_list(path: Path) -> np.ndarray:
    """Sensor ids separated by commas or white space (DCRNN's graph_sensor_ids.txt, PEMS03.txt)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LibTrafficError(f"Cannot read the sensor-id file {path}: {err}") from err
    ids = [t for t in re.split(r"[,\s]+", text) if t]
    if not ids:
        raise LibTrafficError(f"{path} lists no sensor ids.")
    return normalize_ids(ids, str(path))


def edges_among(edges: Edges, known: np.ndarray, source: Path) -> Edges:
    """The edges whose both ends are ``known`` sensors, each (from, to) pair once (its first row).

    ``source`` names the file in the error raised when no edge is left.
    """
    index = pd.Index(known)
    keep = (index.get_indexer(edges.origin) >= 0) & (index.get_indexer(edges.dest) >= 0)
    if not keep.any():
        raise LibTrafficError(f"{source}: no row joins two sensors of the data; it belongs to another dataset.")
    pairs = pd.DataFrame({"o": edges.origin[keep], "d": edges.dest[keep]})
    first = ~pairs.duplicated().to_numpy()
    return Edges(edges.origin[keep][first], edges.dest[keep][first], edges.cost[keep][first])
