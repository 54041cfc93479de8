"""Readers of LibCity atomic files (.geo, .rel, .dyna, .ext) returning NumPy arrays.

Each reader validates what it reads and raises LibTrafficError naming the file, the problem and
the fix. No per-row Python loops: a METR_LA-sized .dyna (7.1 M rows) reads in a few seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.values import plain

logger = logging.getLogger(__name__)


@dataclass
class DynaArrays:
    """Readings of a .dyna file. data: (T, N, F) float32; times: (T,) datetime64[s]."""

    data: np.ndarray
    times: np.ndarray
    columns: list[str]


def _shown(value) -> str:
    """A value from a file for a message: strings quoted, NumPy scalars as plain numbers (not np.int64(7))."""
    return repr(plain(value))


def _read_csv(path: Path, usecols: list[str] | None = None) -> pd.DataFrame:
    if not path.is_file():
        raise LibTrafficError(f"Missing atomic file {path}.")
    try:
        return pd.read_csv(path, usecols=usecols, engine="pyarrow")
    except (ValueError, pd.errors.ParserError) as err:
        # The pyarrow engine reports column problems tersely; the C engine names them.
        try:
            return pd.read_csv(path, usecols=usecols)
        except (ValueError, pd.errors.ParserError) as err2:
            raise LibTrafficError(f"Cannot read {path}: {err2}") from err2
        except Exception:  # noqa: BLE001 - report the original pyarrow error below
            raise LibTrafficError(f"Cannot read {path}: {err}") from err


def _require_columns(df: pd.DataFrame, path: Path, columns: list[str], hint: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LibTrafficError(
            f"{path} has no column {', '.join(repr(c) for c in missing)}; its columns are "
            f"{', '.join(df.columns)}. {hint}"
        )


def read_geo(path: Path) -> np.ndarray:
    """Entity ids in file order, shape (N,). The order defines node indices everywhere."""
    df = _read_csv(path)
    _require_columns(df, path, ["geo_id"], "A .geo file starts with geo_id,type,coordinates.")
    ids = df["geo_id"].to_numpy()
    if len(ids) == 0:
        raise LibTrafficError(f"{path} lists no entities.")
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise LibTrafficError(f"{path} lists geo_id {_shown(ids[dup][0])} more than once; ids must be unique.")
    return ids


def read_rel(path: Path, geo_ids: np.ndarray, weight_col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Edges as (origin index, destination index, weight or None) arrays over .geo order.

    ``weight_col`` '' picks the only column after destination_id, if there is exactly one.
    Rows naming ids absent from .geo are skipped with a warning, as LibCity does.
    """
    df = _read_csv(path)
    _require_columns(df, path, ["origin_id", "destination_id"], "A .rel file has rel_id,type,origin_id,destination_id[,weight].")
    if not weight_col:
        extra = list(df.columns[df.columns.get_loc("destination_id") + 1 :])
        weight_col = extra[0] if len(extra) == 1 else ""
    index = pd.Index(geo_ids)
    origin = index.get_indexer(df["origin_id"].to_numpy())
    dest = index.get_indexer(df["destination_id"].to_numpy())
    known = (origin >= 0) & (dest >= 0)
    if not known.all():
        logger.warning("%s: %d rows name ids absent from .geo; they are ignored.", path, int((~known).sum()))
    weights = None
    if weight_col:
        _require_columns(df, path, [weight_col], "Set weight_col in config.json to one of its columns.")
        weights = pd.to_numeric(df[weight_col], errors="coerce").to_numpy(dtype=np.float64)[known]
        if np.isnan(weights).any():
            raise LibTrafficError(f"{path}: column '{weight_col}' has non-numeric or empty values.")
    return origin[known], dest[known], weights


def _numeric_block(df: pd.DataFrame, path: Path, columns: list[str]) -> np.ndarray:
    """(rows, len(columns)) float32; a non-numeric value is reported with its row."""
    out = np.empty((len(df), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        series = df[col]
        if not pd.api.types.is_numeric_dtype(series):
            coerced = pd.to_numeric(series, errors="coerce")
            bad = coerced.isna() & series.notna() & (series.astype(str).str.strip() != "")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise LibTrafficError(
                    f"{path}: column '{col}' has a non-numeric value {_shown(series.iloc[row])} at data row {row + 1} "
                    f"(line {row + 2}). Readings must be numbers; leave missing ones empty or 0."
                )
            series = coerced
        out[:, j] = series.to_numpy(dtype=np.float32, na_value=np.nan)
    return out


def _read_dyna_arrow(path: Path, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(entity ids, times as int64 seconds, readings float32 [rows, F]) read straight into typed
    columns, or None when the file needs the slower, more forgiving pandas path.

    Typed Arrow columns avoid pandas' intermediate copies: a METR_LA-sized file peaks at a few
    hundred MB instead of over a GB. Anything unusual (other time formats, non-numeric readings)
    returns None so that the pandas path can report it with its row.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.ConvertOptions(
        include_columns=["time", "entity_id", *columns],
        column_types={"time": pa.timestamp("s"), **{c: pa.float32() for c in columns}},
        timestamp_parsers=["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", pacsv.ISO8601],
    )
    # Streamed in blocks and converted as it goes: the raw text is never held whole.
    parts: dict[str, list[np.ndarray]] = {"time": [], "entity_id": [], **{c: [] for c in columns}}
    try:
        reader = pacsv.open_csv(path, convert_options=options, read_options=pacsv.ReadOptions(block_size=8 << 20))
        for batch in reader:
            if batch.column("time").null_count or not pa.types.is_integer(batch.schema.field("entity_id").type):
                return None
            parts["time"].append(batch.column("time").cast(pa.int64()).to_numpy())
            for col in ("entity_id", *columns):
                parts[col].append(batch.column(col).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if not parts["time"]:
        return None
    times = np.concatenate(parts.pop("time"))
    entities = np.concatenate(parts.pop("entity_id"))
    values = np.empty((len(times), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        values[:, j] = np.concatenate(parts.pop(col))
    return entities, times, values


def _parse_times(series: pd.Series, path: Path) -> np.ndarray:
    """Times of a column read in file order (so row i is on line i + 2), as datetime64[s]."""
    parsed = series
    if not pd.api.types.is_datetime64_any_dtype(series):
        parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = series.iloc[row]
        empty = pd.isna(value) or not str(value).strip()
        what = "an empty time" if empty else f"the time {_shown(value)}, which is not an ISO 8601 time"
        fix = ("Fill in the time of that row (a missing reading is an empty reading, not an empty time)." if empty else
               "Convert the column, e.g. with pandas.to_datetime(column, format='%m/%d/%Y %H:%M')"
               ".dt.strftime('%Y-%m-%dT%H:%M:%SZ').")
        raise LibTrafficError(
            f"{path}: line {row + 2} has {what}. The time column needs an ISO 8601 time on every row, as LibCity "
            f"writes them: 2012-03-01T00:00:00Z (or 2012-03-01 00:00:00). {fix}"
        )
    series = parsed
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.to_numpy().astype("datetime64[s]")


def read_dyna(path: Path, geo_ids: np.ndarray, data_col: list[str], time_intervals: int) -> DynaArrays:
    """Readings as a (T, N, F) array in .geo node order.

    Rows may come in any order (LibCity's converters group them by entity, then time); every
    entity must have the same regular timeline, ``time_intervals`` seconds apart.
    """
    if not path.is_file():
        raise LibTrafficError(f"Missing atomic file {path}.")
    if isinstance(time_intervals, bool) or not time_intervals > 0:
        raise LibTrafficError(f"time_intervals is {time_intervals!r} (config.json of {path.parent.name}); it must be the "
                              "positive number of seconds between time steps, e.g. 300 for 5-minute data.")
    try:
        head = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError as err:
        raise LibTrafficError(f"{path} is empty; a .dyna file has dyna_id,type,time,entity_id,<readings>.") from err
    for col in ("time", "entity_id"):
        if col not in head:
            raise LibTrafficError(f"{path} has no '{col}' column; a .dyna file has dyna_id,type,time,entity_id,<readings>.")
    if data_col:
        missing = [c for c in data_col if c not in head]
        if missing:
            raise LibTrafficError(
                f"{path} has no data column {', '.join(repr(c) for c in missing)} (data_col in config.json). "
                f"Its columns are {', '.join(head)}; fix data_col or the file."
            )
        columns = list(data_col)
    else:
        columns = [c for c in head if c not in ("dyna_id", "type", "time", "entity_id")]
        if not columns:
            raise LibTrafficError(f"{path} has no reading columns after entity_id.")
    fast = _read_dyna_arrow(path, columns)
    if fast is None:
        df = _read_csv(path, usecols=["time", "entity_id", *columns])
        entities = df["entity_id"].to_numpy()
    else:
        entities, times, values = fast
    num_nodes, rows = len(geo_ids), len(entities)
    if rows == 0:
        raise LibTrafficError(f"{path} has a header but no data rows; it needs one row per entity and time step.")
    node = pd.Index(geo_ids).get_indexer(entities)
    if (node < 0).any():
        row = int(np.flatnonzero(node < 0)[0])
        raise LibTrafficError(
            f"{path}: entity_id {_shown(entities[row])} (line {row + 2}) is not in the .geo file; "
            "every entity of .dyna must be listed in .geo."
        )
    del entities
    counts = np.bincount(node, minlength=num_nodes)
    if (counts == 0).any():
        absent = geo_ids[counts == 0]
        raise LibTrafficError(
            f"{path}: {len(absent)} entit{'y' if len(absent) == 1 else 'ies'} of the .geo file "
            f"({', '.join(_shown(g) for g in absent[:5])}{', ...' if len(absent) > 5 else ''}) "
            f"{'has' if len(absent) == 1 else 'have'} no rows in .dyna. Every .geo entity needs one row per time step: "
            "add the readings (empty for missing) or remove the entity from the .geo file."
        )
    if rows % num_nodes:
        raise LibTrafficError(
            f"{path} has {rows} rows, not a multiple of the {num_nodes} entities in .geo: every entity "
            "needs one row per time step (entities x timesteps)."
        )
    steps = rows // num_nodes
    if (counts != steps).any():
        bad = int(np.flatnonzero(counts != steps)[0])
        raise LibTrafficError(
            f"{path}: entity {_shown(geo_ids[bad])} has {counts[bad]} rows but {steps} were expected "
            f"({rows} rows / {num_nodes} entities); every entity needs one row per time step."
        )
    if fast is None:
        times = _parse_times(df["time"], path).astype(np.int64)
        values = _numeric_block(df, path, columns)
        del df
    order = None
    grouped = np.array_equal(node, np.repeat(np.arange(num_nodes), steps))
    if not grouped or (np.diff(times.reshape(num_nodes, steps), axis=1) <= 0).any():
        order = np.lexsort((times, node))
    if order is not None:
        times, values = times[order], values[order]
    grid = times.reshape(num_nodes, steps)
    mismatch = (grid != grid[:1]).any(axis=0)
    if mismatch.any():
        t = int(np.flatnonzero(mismatch)[0])
        raise LibTrafficError(
            f"{path}: entities do not share one timeline (step {t}: {np.datetime64(int(grid[0, t]), 's')} vs "
            f"{np.datetime64(int(grid[(grid[:, t] != grid[0, t]).argmax(), t]), 's')}); every entity needs the same times."
        )
    timeline = grid[0]
    gaps = np.diff(timeline)
    if len(gaps) and (gaps != time_intervals).any():
        t = int(np.flatnonzero(gaps != time_intervals)[0])
        raise LibTrafficError(
            f"{path}: irregular time steps: {np.datetime64(int(timeline[t]), 's')} is followed by "
            f"{np.datetime64(int(timeline[t + 1]), 's')} ({int(gaps[t])} s), but time_intervals is "
            f"{time_intervals} s. Fill gaps with empty readings or fix time_intervals in config.json."
        )
    data = values.reshape(num_nodes, steps, len(columns)).transpose(1, 0, 2)
    return DynaArrays(np.ascontiguousarray(data), timeline.astype("datetime64[s]"), columns)


def read_ext(path: Path, times: np.ndarray, ext_col: list[str]) -> np.ndarray:
    """External features aligned to the .dyna timeline: (T, E) float32."""
    df = _read_csv(path)
    _require_columns(df, path, ["time"], "An .ext file has ext_id,time,<features>.")
    columns = list(ext_col) or [c for c in df.columns if c not in ("ext_id", "time")]
    _require_columns(df, path, columns, "Fix ext_col in config.json.")
    ext_times = _parse_times(df["time"], path)
    index = pd.Index(ext_times)
    if index.has_duplicates:
        row = int(np.flatnonzero(index.duplicated())[0])
        raise LibTrafficError(f"{path}: time {ext_times[row]} has two rows (the second at line {row + 2}); an .ext file "
                              "needs one row per time step. Remove the duplicate.")
    position = index.get_indexer(times)
    if (position < 0).any():
        t = int(np.flatnonzero(position < 0)[0])
        raise LibTrafficError(f"{path} has no row for time {times[t]}; it must cover every .dyna time step.")
    values = _numeric_block(df, path, columns)[position]
    # Empty cells are allowed (the reading-format message says so): missing, i.e. 0, as in the .dyna file,
    # instead of NaN features that would make training diverge.
    missing = ~np.isfinite(values)
    if missing.any():
        logger.warning("%s: %d empty or non-finite external value(s) treated as missing (set to 0).",
                       path.name, int(missing.sum()))
        values[missing] = 0.0
    return values
