"""Prepared data: atomic files -> scaled (T, N, F) array + adjacency, cached on disk by a hash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from libtraffic.data import atomic_reader
from libtraffic.data.adjacency import build_adjacency, check_options as check_adjacency_options
from libtraffic.data.scalers import NoneScaler, get_scaler, scaler_from_state, scaler_state
from libtraffic.data.windows import day_in_week, num_samples, split_sizes, time_in_day, window_counts
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

logger = logging.getLogger(__name__)

# 2: LibCity's scaler fit ranges and time-feature rules; files checked by size and CRC on load.
# 3: the standard scaler weights each step by the training windows holding it; scaled in float64.
# 4: the scalers and sizes in meta.json (was a pickle).
# 5: .rel rows applied in file order (a pair listed both ways is symmetric with bidir_adj_mx).
# 6: keyed on the source files' content, not their mtime.
CACHE_FORMAT = 6
# Every config key that changes the prepared arrays; the cache key hashes their values.
DATA_KEYS = (
    "dataset", "data_path", "data_col", "data_files", "geo_file", "rel_file", "ext_file", "ext_col", "weight_col",
    "output_dim", "time_intervals", "init_weight_inf_or_zero", "set_weight_link_or_dist", "bidir_adj_mx",
    "calculate_weight_adj", "weight_adj_epsilon", "input_window", "output_window", "train_rate",
    "eval_rate", "scaler", "ext_scaler", "normal_external", "load_external", "add_time_in_day",
    "add_day_in_week",
)
# The DATA_KEYS that choose which files and columns are read (RawData); the others only change
# how the raw arrays are cut, scaled and joined, which each tuning trial can do on its own.
RAW_KEYS = ("dataset", "data_col", "data_files", "geo_file", "rel_file", "ext_file", "ext_col", "weight_col",
            "time_intervals", "load_external")


@dataclass
class PreparedData:
    """Everything trials need, independent of batch size.

    data: (T, N, F) float32, the first output_dim features scaled by ``scaler`` (the others by
    ``ext_scaler`` when normal_external is true);
    adj_mx: (N, N) float32; split: (train, valid, test) sample counts.
    """

    data: np.ndarray
    adj_mx: np.ndarray
    scaler: NoneScaler
    ext_scaler: NoneScaler
    split: tuple[int, int, int]
    input_window: int
    output_window: int
    output_dim: int
    ext_dim: int
    cache_key: str
    # Why the .rel file gives no usable graph ('' when it does): only a model that uses the graph fails.
    adj_problem: str = ""

    @property
    def num_nodes(self) -> int:
        return self.data.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.data.shape[2]


def _files(config: Mapping[str, Any]) -> dict[str, Path]:
    dataset = config["dataset"]
    folder = paths.raw_data_dir(dataset, config["data_path"])
    data_files = config["data_files"] or [dataset]
    if isinstance(data_files, str):
        data_files = [data_files]
    if len(data_files) != 1:
        raise LibTrafficError(f"data_files lists {len(data_files)} files; TrafficStatePointDataset reads exactly one .dyna file.")
    files = {
        "geo": folder / f"{config['geo_file'] or dataset}.geo",
        "rel": folder / f"{config['rel_file'] or dataset}.rel",
        "dyna": folder / f"{data_files[0]}.dyna",
    }
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise LibTrafficError(
            f"Dataset '{dataset}' in {folder} is missing {', '.join(missing)}. A dataset needs "
            f"<NAME>.geo, <NAME>.rel, <NAME>.dyna and config.json (file names from geo_file, rel_file, "
            "data_files in config.json's info block)."
        )
    ext = folder / f"{config['ext_file'] or dataset}.ext"  # LibCity's default: the dataset's name
    # As LibCity: load_external without an .ext file is normal (METR_LA has none); only the
    # time features are added then.
    if config["load_external"] and ext.is_file():
        files["ext"] = ext
    return files


def _content_hash(path: Path) -> str:
    """BLAKE2b of the file's bytes, read in chunks (about 1 s per GB)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _stats(files: Mapping[str, Path]) -> dict[str, list]:
    """Size and content hash of each source file: an edit that keeps size and mtime (cp -p, rsync)
    still changes the cache key."""
    return {k: [p.stat().st_size, _content_hash(p)] for k, p in sorted(files.items())}


def _key(config: Mapping[str, Any], stats: Mapping[str, list[int]]) -> str:
    payload = {"format": CACHE_FORMAT, "files": dict(stats), **{k: config[k] for k in DATA_KEYS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _clean_readings(data: np.ndarray, name: str) -> None:
    """NaN and infinite readings (also values beyond float32's range) become 0, i.e. missing."""
    bad = ~np.isfinite(data)
    if bad.any():
        nan = int(np.isnan(data).sum())
        logger.warning("%s: %d NaN and %d infinite (or beyond float32's range) readings treated as missing "
                       "(set to 0, ignored by masked metrics and the default loss).", name, nan, int(bad.sum()) - nan)
        data[bad] = 0.0


def time_features(config: Mapping[str, Any]) -> tuple[bool, bool]:
    """(time of day, day of week) features as LibCity adds them: only when load_external is true."""
    external = config["load_external"]
    return external and config["add_time_in_day"], external and config["add_day_in_week"]


def warn_ineffective(config: Mapping[str, Any], log: logging.Logger) -> None:
    """Say which data settings have no effect, so nobody is surprised (LibCity is silent)."""
    if config["load_external"]:
        return
    for key in ("add_time_in_day", "add_day_in_week"):
        if config[key]:
            log.warning("%s is true but has no effect because load_external is false (as in LibCity); set "
                        "--load_external true to add the feature.", key)


def cache_key(config: Mapping[str, Any], files: Mapping[str, Path]) -> str:
    """Hash of every data-affecting setting and of the source files' size and content."""
    return _key(config, _stats(files))


@dataclass
class RawData:
    """The atomic files as arrays: what the RAW_KEYS settings select, before windows and scaling.

    data: (T, N, F) float32 readings (NaN set to 0); times: (T,) datetime64[s]; ext: (T, E) external
    readings or None; origin / dest: (R,) node indices of the .rel rows, weights: (R,) or None;
    stats: size and content hash of each source file (part of the cache key). Tuning ships one RawData
    to every trial through Ray's object store, so no trial reads a file.
    """

    num_nodes: int
    data: np.ndarray
    times: np.ndarray
    ext: np.ndarray | None
    origin: np.ndarray
    dest: np.ndarray
    weights: np.ndarray | None
    stats: dict[str, list]
    dyna_name: str = ""


def _read(config: Mapping[str, Any], files: Mapping[str, Path]) -> RawData:
    geo_ids = atomic_reader.read_geo(files["geo"])
    dyna = atomic_reader.read_dyna(files["dyna"], geo_ids, list(config["data_col"] or []), int(config["time_intervals"]))
    data = dyna.data
    _clean_readings(data, files["dyna"].name)
    ext = atomic_reader.read_ext(files["ext"], dyna.times, list(config["ext_col"] or [])) if "ext" in files else None
    origin, dest, weights = atomic_reader.read_rel(files["rel"], geo_ids, config["weight_col"])
    return RawData(len(geo_ids), data, dyna.times, ext, origin, dest, weights, _stats(files), files["dyna"].name)


def read_raw(config: Mapping[str, Any]) -> RawData:
    """Read the dataset's atomic files named by ``config`` (only the RAW_KEYS settings matter)."""
    return _read(config, _files(config))


def from_raw(raw: RawData, config: Mapping[str, Any]) -> PreparedData:
    """Features, split, scaling and adjacency of ``raw`` for the settings in ``config``.

    ``raw`` is left untouched (its arrays may be read-only views into Ray's object store).
    """
    data = raw.data
    output_dim = 1 if config["output_dim"] is None else config["output_dim"]  # LibCity's default: 1
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or not 1 <= output_dim <= data.shape[2]:
        raise LibTrafficError(f"output_dim is {output_dim!r} but the .dyna file has {data.shape[2]} data column(s).")
    if not np.any(data[..., :output_dim]):
        raise LibTrafficError(
            f"{raw.dyna_name} has no valid reading: every value of the predicted column(s) is 0, NaN or infinite "
            "(0 means missing). Check data_col in config.json and the file's contents."
        )
    extra = []
    add_time, add_day = time_features(config)
    if add_time:
        extra.append(np.broadcast_to(time_in_day(raw.times)[:, None, None], (len(raw.times), data.shape[1], 1)))
    if add_day:
        extra.append(np.broadcast_to(day_in_week(raw.times)[:, None, :], (len(raw.times), data.shape[1], 7)))
    if raw.ext is not None:
        extra.append(np.broadcast_to(raw.ext[:, None, :], (len(raw.times), data.shape[1], raw.ext.shape[1])))
    data = np.concatenate([data, *extra], axis=2) if extra else data.copy()
    samples = num_samples(len(data), config["input_window"], config["output_window"])
    if samples < 3:
        raise LibTrafficError(
            f"The dataset has {len(data)} time steps, too few for input_window {config['input_window']} + "
            f"output_window {config['output_window']}."
        )
    split = split_sizes(samples, config["train_rate"], config["eval_rate"])
    if min(split) <= 0:
        raise LibTrafficError(f"train_rate {config['train_rate']} and eval_rate {config['eval_rate']} leave an empty split {split} of {samples} samples.")
    # Scaled in float64 and rounded once, as LibCity (float64 arrays, float32 tensors).
    _check_splits_have_readings(data[..., :output_dim], raw, split, config)
    scaler = _fit(get_scaler(config["scaler"]), data[..., :output_dim], split[0], config)
    with np.errstate(invalid="ignore", divide="ignore"):  # reported by _check_scaled, with the readings
        scaled = scaler.transform(data[..., :output_dim].astype(np.float64))
    _check_scaled(scaled, data[..., :output_dim], config["scaler"], raw.dyna_name)
    data[..., :output_dim] = scaled
    ext_scaler = NoneScaler()
    if config["normal_external"] and data.shape[2] > output_dim:
        ext_scaler = _fit(get_scaler(config["ext_scaler"], "ext_scaler"), data[..., output_dim:], split[0], config)
        data[..., output_dim:] = ext_scaler.transform(data[..., output_dim:].astype(np.float64))
    adj_problem = ""
    check_adjacency_options(config["set_weight_link_or_dist"], config["init_weight_inf_or_zero"])
    try:
        adj = build_adjacency(
            raw.num_nodes, raw.origin, raw.dest, raw.weights, config["init_weight_inf_or_zero"],
            config["set_weight_link_or_dist"], config["bidir_adj_mx"], config["calculate_weight_adj"],
            config["weight_adj_epsilon"],
        )
    except LibTrafficError as err:  # a GRU needs no graph: only a model that reads adj_mx meets this
        adj, adj_problem = np.zeros((raw.num_nodes, raw.num_nodes), dtype=np.float32), str(err)
    return PreparedData(
        np.ascontiguousarray(data, dtype=np.float32), adj, scaler, ext_scaler, split,
        config["input_window"], config["output_window"], output_dim, data.shape[2] - output_dim,
        _key(config, raw.stats), adj_problem,
    )


def _check_splits_have_readings(values: np.ndarray, raw: RawData, split: tuple[int, int, int],
                                config: Mapping[str, Any]) -> None:
    """Refuse a validation or test split whose targets hold no valid reading: its loss would be a
    clean-looking 0 (masked loss) and its metrics meaningless. values: (T, N, output_dim)."""
    inp, out = config["input_window"], config["output_window"]
    first = split[0]
    for name, size in (("validation", split[1]), ("test", split[2])):
        if size == 0:
            continue
        lo, hi = first + inp, first + size - 1 + inp + out  # the steps the split's targets cover
        if not np.any(values[lo:hi]):
            raise LibTrafficError(
                f"The {name} split has no valid reading: every target reading from {raw.times[lo]} to "
                f"{raw.times[hi - 1]} (steps {lo}..{hi - 1} of {raw.dyna_name}) is 0, NaN or infinite (0 means "
                f"missing), so its loss and metrics would be meaningless. Change train_rate / eval_rate (now "
                f"{config['train_rate']} / {config['eval_rate']}) so that it covers recorded readings, or fill the gap."
            )
        first += size


def _check_scaled(scaled: np.ndarray, values: np.ndarray, name: str, dyna_name: str) -> None:
    """Refuse readings the scaler cannot map (log of a reading below -eps): they would become NaN
    labels, which the masked loss skips, so training would report a clean-looking loss of 0."""
    bad = ~np.isfinite(scaled)
    if bad.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(values[bad])[:3])
        raise LibTrafficError(
            f"The scaler '{name}' turns {int(bad.sum())} reading(s) of {dyna_name} into NaN or infinity (e.g. "
            f"{examples}); the model would learn from no label at all. Choose another --scaler (standard, "
            "minmax01, minmax11, normal, none), or check those readings (scaler 'log' needs readings above -0.999)."
        )


def _fit(scaler: NoneScaler, values: np.ndarray, num_train: int, config: Mapping[str, Any]) -> NoneScaler:
    """Fit as LibCity fits on its stacked training windows x_train (and y_train for max/min-based
    scalers): on the steps they cover, each weighted by the number of input windows holding it.

    values: (T, N, F). The windows themselves are never built.
    """
    if scaler.fit_on_targets:  # a max or min: how often a step repeats does not matter
        return scaler.fit(values[: num_train + config["input_window"] + config["output_window"] - 1])
    counts = window_counts(num_train, config["input_window"])
    return scaler.fit(values[: len(counts)], counts)


_ARRAYS = ("data.npy", "adj_mx.npy")
META = "meta.json"  # the other PreparedData fields and the arrays' checksums


def _checksum(path: Path) -> tuple[int, int]:
    """(size, CRC-32) of a file, read in chunks."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return path.stat().st_size, crc


def _build(config: Mapping[str, Any], files: Mapping[str, Path]) -> PreparedData:
    return from_raw(_read(config, files), config)


def prepared_for(shared: PreparedData | RawData, config: Mapping[str, Any]) -> PreparedData:
    """What a tuning trial trains on: the driver's prepared data, or its own from the shared raw arrays."""
    return shared if isinstance(shared, PreparedData) else from_raw(shared, config)


def _save(prepared: PreparedData, folder: Path) -> None:
    # A private temporary folder renamed into place: runs preparing the same data at the same
    # time (several run_model.py processes) never delete or mix each other's files.
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)
    np.save(tmp / "data.npy", prepared.data)
    np.save(tmp / "adj_mx.npy", prepared.adj_mx)
    meta = {k: v for k, v in vars(prepared).items() if k not in ("data", "adj_mx")}
    meta.update(scaler=scaler_state(prepared.scaler), ext_scaler=scaler_state(prepared.ext_scaler))
    checks = {name: _checksum(tmp / name) for name in _ARRAYS}
    (tmp / META).write_text(json.dumps({"prepared": meta, "checks": checks}))
    try:
        tmp.rename(folder)  # atomic; a complete cache folder is never deleted while others read it
    except OSError:  # another run saved the same key first; its content is the same
        shutil.rmtree(tmp, ignore_errors=True)


class CorruptCache(Exception):
    """A dataset cache folder that cannot be trusted (truncated, edited, or of an older format)."""


def _load(folder: Path) -> PreparedData:
    try:
        saved = json.loads((folder / META).read_text())
        checks = saved["checks"]
        for name in _ARRAYS:
            if _checksum(folder / name) != tuple(checks[name]):
                raise CorruptCache(f"{name} differs from what was saved")
        meta = saved["prepared"]
        meta.update(scaler=scaler_from_state(meta["scaler"]), ext_scaler=scaler_from_state(meta["ext_scaler"]),
                    split=tuple(meta["split"]))
        return PreparedData(data=np.load(folder / "data.npy", allow_pickle=False),
                            adj_mx=np.load(folder / "adj_mx.npy", allow_pickle=False), **meta)
    except CorruptCache:
        raise
    except Exception as err:  # any unreadable piece means the same: rebuild
        raise CorruptCache(f"{type(err).__name__}: {err}") from err


def _discard(folder: Path) -> None:
    """Move a bad cache folder aside (atomic), then delete it; a concurrent reader keeps its files."""
    trash = folder.with_name(f"{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.bad")
    try:
        folder.rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def prepare_data(config: Mapping[str, Any]) -> PreparedData:
    """Read, check, scale and cache the dataset named by ``config``; reuse a matching cache."""
    files = _files(config)
    key = cache_key(config, files)
    folder = paths.dataset_cache_dir() / f"{config['dataset']}_{key}"
    prepared = _cached(folder) if config["cache_dataset"] and folder.is_dir() else None
    if prepared is None:
        logger.info("Preparing dataset %s from %s", config["dataset"], files["dyna"].parent)
        prepared = _build(config, files)
        if config["cache_dataset"]:
            _save(prepared, folder)
            logger.info("Saved prepared data to %s", folder)
    # At full precision, to compare with the StandardScaler / NormalScaler ... line of LibCity's log.
    logger.info("scaler %r, ext_scaler %r", prepared.scaler, prepared.ext_scaler)
    return prepared


def _cached(folder: Path) -> PreparedData | None:
    """The prepared data saved in ``folder``, or None (a damaged folder is discarded)."""
    try:
        prepared = _load(folder)
    except CorruptCache as err:
        logger.warning("The dataset cache %s is damaged (%s); rebuilding it.", folder, err)
        _discard(folder)
        return None
    logger.info("Loaded prepared data from cache %s", folder)
    return prepared
