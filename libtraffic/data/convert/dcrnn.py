"""DCRNN's METR_LA / PEMS_BAY files -> a converted dataset.

metr-la.h5 / pems-bay.h5: a pandas DataFrame (key 'df'): a 5-minute DatetimeIndex, one column of
speeds per sensor id, 0 where the reading is missing. The sensor graph (DCRNN's data/sensor_graph
folder holds both datasets' files): graph_sensor_locations[_bay].csv, distances_la_2012.csv /
distances_bay_2017.csv (from,to,cost in metres) and adj_mx[_bay].pkl.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tables

from libtraffic.data.atomic_writer import DISTANCE_KERNEL
from libtraffic.data.convert.adj_pickle import read_adj_pickle
from libtraffic.data.convert.output import Converted
from libtraffic.data.convert.readers import (
    edges_among, first_duplicate, missing_ids, normalize_ids, read_edges, read_locations, require_file, shown_ids,
)
from libtraffic.utils.errors import LibTrafficError

# DCRNN's adj_mx.pkl weights used as they are: absent pairs 0, no kernel.
PICKLE_WEIGHTS: dict[str, Any] = {
    "init_weight_inf_or_zero": "zero", "set_weight_link_or_dist": "dist",
    "calculate_weight_adj": False, "weight_adj_epsilon": 0.1,
}

# flag -> (file name pattern in --sensor_graph, reader, sensor ids of what the reader returned)
GRAPH_FILES: dict[str, tuple[str, Callable[[Path], Any], Callable[[Any], np.ndarray]]] = {
    "locations": ("graph_sensor_locations*.csv", read_locations, lambda loaded: loaded[0]),
    "distances": ("distances*.csv", read_edges, lambda edges: edges.ids()),
    "adj_mx": ("adj_mx*.pkl", read_adj_pickle, lambda adj: adj.ids),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--h5", required=True, help="DCRNN's data file (metr-la.h5 or pems-bay.h5)")
    parser.add_argument("--sensor_graph", metavar="DIR",
                        help="DCRNN's data/sensor_graph folder; the files matching the h5's sensors are used")
    parser.add_argument("--locations", metavar="FILE", help="graph_sensor_locations[_bay].csv (coordinates)")
    parser.add_argument("--distances", metavar="FILE",
                        help="distances_la_2012.csv / distances_bay_2017.csv: edges from road distances (Gaussian kernel)")
    parser.add_argument("--adj_mx", metavar="FILE", help="adj_mx[_bay].pkl: edges with DCRNN's weights as they are")


# Python names a pandas HDF5 file may be unpickled into: a DatetimeIndex's frequency (Minute, ...).
_SAFE_PICKLE_MODULES = ("pandas._libs.tslibs.offsets", "pandas.tseries.offsets")


class _OffsetsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, refused: list[str], **kwargs: Any) -> None:
        super().__init__(io.BytesIO(data), **kwargs)
        self.refused = refused

    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401 - pickle's signature
        if module.startswith(_SAFE_PICKLE_MODULES):
            return super().find_class(module, name)
        self.refused.append(f"{module}.{name}")
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


class _RestrictedPickle:
    """Stands in for the pickle module inside PyTables while an h5 file is read: PyTables unpickles
    every attribute of a node it opens and every value of an object column, and a pandas HDF5
    file can name any Python callable there. Only pandas' time offsets are admitted; every other
    name is recorded in ``refused`` and never imported."""

    UnpicklingError = pickle.UnpicklingError

    def __init__(self) -> None:
        self.refused: list[str] = []

    def loads(self, data: bytes, **kwargs: Any) -> Any:  # noqa: ANN401
        return _OffsetsOnlyUnpickler(bytes(data), self.refused, **kwargs).load()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - the rest of the pickle module
        return getattr(pickle, name)


@contextlib.contextmanager
def _no_code_from_pickles(path: Path) -> Iterator[None]:
    """Read ``path`` with PyTables' unpickling restricted; refuse the file if it named anything else."""
    guard = _RestrictedPickle()
    modules = (tables.attributeset, tables.atom)
    saved = [module.pickle for module in modules]
    for module in modules:
        module.pickle = guard
    failure: BaseException | None = None
    try:
        with warnings.catch_warnings():  # PyTables warns for each attribute it could not unpickle
            warnings.simplefilter("ignore")
            yield
    except Exception as err:  # what pandas makes of an attribute left as raw bytes
        if not guard.refused:
            raise
        failure = err
    finally:
        for module, original in zip(modules, saved):
            module.pickle = original
    if guard.refused:
        raise LibTrafficError(
            f"{path} holds pickled Python objects (an object column, or an attribute) that would import "
            f"{guard.refused[0]}: unpickling them could run code, so the file is refused. DCRNN's metr-la.h5 holds numbers only; write the table again with "
            "pandas from numeric columns (df.astype('float64').to_hdf(...)).") from failure


def read_h5(path: Path) -> pd.DataFrame:
    """The DataFrame of a pandas HDF5 file (key 'df', or its only key), refused if reading it
    would unpickle anything but a time-index frequency."""
    try:
        with _no_code_from_pickles(path), pd.HDFStore(path, mode="r") as store:
            keys = store.keys()
            key = "/df" if "/df" in keys else keys[0] if len(keys) == 1 else None
            frame = store[key] if key else None
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if isinstance(err, RuntimeError):  # PyTables' HDF5ExtError: the HDF5 library refused the file
            reason = f"it is not an HDF5 file, or a damaged one ({reason})"
        raise LibTrafficError(f"Cannot read {path} as a pandas HDF5 file like DCRNN's metr-la.h5: {reason}") from err
    if key is None:
        raise LibTrafficError(f"{path} holds {len(keys)} tables ({', '.join(keys) or 'none'}); expected DCRNN's 'df'.")
    if not isinstance(frame, pd.DataFrame) or not isinstance(frame.index, pd.DatetimeIndex):
        raise LibTrafficError(f"{path}: '{key}' is not a DataFrame with a time index (one column per sensor) as DCRNN's.")
    return frame


def _timeline(index: pd.DatetimeIndex, path: Path) -> tuple[np.datetime64, int]:
    """(start in UTC, step in seconds) of a regular time index."""
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    seconds = index.to_numpy().astype("datetime64[s]").astype(np.int64)
    if len(seconds) < 2:
        raise LibTrafficError(f"{path} has {len(seconds)} time step(s); a dataset needs many.")
    gaps = np.diff(seconds)
    if gaps[0] <= 0 or (gaps != gaps[0]).any():
        t = int(np.flatnonzero(gaps != gaps[0])[0]) if (gaps != gaps[0]).any() else 0
        raise LibTrafficError(
            f"{path}: irregular time index: {index[t]} is followed by {index[t + 1]} ({int(gaps[t])} s) "
            f"while the first step is {int(gaps[0])} s; LibCity datasets need one regular timeline.")
    return np.datetime64(int(seconds[0]), "s"), int(gaps[0])


def read_speeds(path: Path) -> tuple[np.ndarray, np.ndarray, np.datetime64, int]:
    """(sensor ids (N,), readings (T, N, 1), start, step seconds) from DCRNN's h5."""
    frame = read_h5(path)
    ids = normalize_ids(frame.columns, str(path))
    if first_duplicate(ids) is not None:
        raise LibTrafficError(f"{path}: sensor {first_duplicate(ids)} has two columns.")
    not_numeric = [c for c, kind in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(kind)]
    if not_numeric:
        raise LibTrafficError(f"{path}: column {not_numeric[0]!r} holds {frame.dtypes[not_numeric[0]]}, not numbers.")
    start, step = _timeline(frame.index, path)
    return ids, frame.to_numpy()[:, :, None], start, step


def _pick(kind: str, args: argparse.Namespace, sensors: np.ndarray) -> tuple[Path, Any] | None:
    """(file, its content) for ``kind``: the --kind file, else the --sensor_graph file sharing most sensors."""
    pattern, reader, ids_of = GRAPH_FILES[kind]
    if getattr(args, kind):
        path = require_file(getattr(args, kind), f"--{kind}")
        return path, reader(path)
    if not args.sensor_graph:
        return None
    loaded = [(path, reader(path)) for path in sorted(Path(args.sensor_graph).glob(pattern))]
    if len(loaded) <= 1:
        return loaded[0] if loaded else None
    shared = [int(np.isin(sensors, ids_of(content)).sum()) for _, content in loaded]
    best = [item for item, count in zip(loaded, shared) if count == max(shared)]
    if len(best) > 1 and max(shared) > 0:
        names = ", ".join(path.name for path, _ in best)
        raise LibTrafficError(f"{args.sensor_graph} has several {pattern} files for these sensors ({names}); pass --{kind} FILE.")
    return best[0]


def _require_sensors(sensors: np.ndarray, present: np.ndarray, path: Path, h5: Path, flag: str) -> None:
    absent = missing_ids(sensors, present)
    if len(absent):
        raise LibTrafficError(
            f"{len(absent)} of the {len(sensors)} sensors of {h5.name} are not in {path}: {shown_ids(absent)}. "
            f"The data and the graph files come from different datasets; pass the matching {flag} file.")


def _coordinates(args: argparse.Namespace, sensors: np.ndarray, h5: Path) -> np.ndarray | None:
    picked = _pick("locations", args, sensors)
    if picked is None:
        return None
    path, (ids, lonlat) = picked
    _require_sensors(sensors, ids, path, h5, "--locations")
    first = ~pd.Index(ids).duplicated()  # a sensor listed twice: its first row, as LibCity's converter
    return lonlat[first][pd.Index(ids[first]).get_indexer(sensors)]


def _graph(args: argparse.Namespace, sensors: np.ndarray, h5: Path) -> dict[str, Any]:
    """Edge fields of Converted: from the distances (Gaussian kernel) or from adj_mx.pkl (weights as they are)."""
    if args.distances and args.adj_mx:
        raise LibTrafficError("Give either --distances (the road-distance graph) or --adj_mx (DCRNN's pickle), not both.")
    picked = None if args.adj_mx else _pick("distances", args, sensors)
    if picked is not None:
        path, edges = picked
        _require_sensors(sensors, edges.ids(), path, h5, "--distances")
        kept = edges_among(edges, sensors, path)
        return {"origin": kept.origin, "dest": kept.dest, "weights": kept.cost, "weight_col": "cost",
                "adjacency": dict(DISTANCE_KERNEL), "graph": f"road distances of {path.name}, Gaussian kernel as DCRNN"}
    picked = _pick("adj_mx", args, sensors)
    if picked is None:
        raise LibTrafficError(
            "No sensor graph: pass --sensor_graph DIR (DCRNN's data/sensor_graph folder with distances_*.csv or "
            "adj_mx*.pkl), or --distances FILE, or --adj_mx FILE.")
    path, adj = picked
    _require_sensors(sensors, adj.ids, path, h5, "--adj_mx")
    position = pd.Index(adj.ids).get_indexer(sensors)
    sub = adj.matrix[np.ix_(position, position)]
    rows, cols = np.nonzero(sub)
    return {"origin": sensors[rows], "dest": sensors[cols], "weights": sub[rows, cols], "weight_col": "weight",
            "adjacency": dict(PICKLE_WEIGHTS), "graph": f"DCRNN's weights from {path.name}"}


def read(args: argparse.Namespace) -> Converted:
    h5 = require_file(args.h5, "--h5")
    if args.sensor_graph and not Path(args.sensor_graph).is_dir():
        raise LibTrafficError(f"--sensor_graph {args.sensor_graph} is not a folder (DCRNN's data/sensor_graph).")
    sensors, readings, start, step = read_speeds(h5)
    graph = _graph(args, sensors, h5)
    coordinates = _coordinates(args, sensors, h5)
    return Converted(sensors, coordinates, readings, ["traffic_speed"], start, step, **graph)
