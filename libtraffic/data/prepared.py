"""Prepared data: atomic files -> scaled (T, N, F) array + adjacency, cached on disk by a hash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import secrets
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from libtraffic.data import atomic
from libtraffic.data.adjacency import build_adjacency
from libtraffic.data.scalers import NoneScaler, get_scaler
from libtraffic.data.windows import day_in_week, num_samples, split_sizes, time_in_day
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

logger = logging.getLogger(__name__)

# 2: LibCity's scaler fit ranges and time-feature rules; files checked by size and CRC on load.
CACHE_FORMAT = 2
# Every config key that changes the prepared arrays; the cache key hashes their values.
DATA_KEYS = (
    "dataset", "data_path", "data_col", "data_files", "geo_file", "rel_file", "ext_file", "ext_col", "weight_col",
    "output_dim", "time_intervals", "init_weight_inf_or_zero", "set_weight_link_or_dist", "bidir_adj_mx",
    "calculate_weight_adj", "weight_adj_epsilon", "input_window", "output_window", "train_rate",
    "eval_rate", "scaler", "ext_scaler", "normal_external", "load_external", "add_time_in_day",
    "add_day_in_week",
)


@dataclass
class PreparedData:
    """Everything trials need, independent of batch size.

    data: (T, N, F) float32, the first output_dim features scaled by ``scaler``;
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
    ext = folder / f"{config['ext_file'] or data_files[0]}.ext"
    # As LibCity: load_external without an .ext file is normal (METR_LA has none); only the
    # time features are added then.
    if config["load_external"] and ext.is_file():
        files["ext"] = ext
    return files


def cache_key(config: Mapping[str, Any], files: Mapping[str, Path]) -> str:
    """Hash of every data-affecting setting and of the source files' size and mtime."""
    stats = {k: [p.stat().st_size, p.stat().st_mtime_ns] for k, p in sorted(files.items())}
    payload = {"format": CACHE_FORMAT, "files": stats, **{k: config[k] for k in DATA_KEYS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _clean_readings(data: np.ndarray, output_dim: int, name: str) -> None:
    """NaN and infinite readings (also values beyond float32's range) become 0, i.e. missing."""
    bad = ~np.isfinite(data)
    if bad.any():
        nan = int(np.isnan(data).sum())
        logger.warning("%s: %d NaN and %d infinite (or beyond float32's range) readings treated as missing "
                       "(set to 0, ignored by masked metrics and the default loss).", name, nan, int(bad.sum()) - nan)
        data[bad] = 0.0
    if not np.any(data[..., :output_dim]):
        raise LibTrafficError(
            f"{name} has no valid reading: every value of the predicted column(s) is 0, NaN or infinite (0 means "
            "missing). Check data_col in config.json and the file's contents."
        )


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


def _build(config: Mapping[str, Any], files: Mapping[str, Path], key: str) -> PreparedData:
    geo_ids = atomic.read_geo(files["geo"])
    dyna = atomic.read_dyna(files["dyna"], geo_ids, list(config["data_col"] or []), int(config["time_intervals"]))
    data = dyna.data
    output_dim = config["output_dim"] or data.shape[2]
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or not 1 <= output_dim <= data.shape[2]:
        raise LibTrafficError(f"output_dim is {output_dim!r} but the .dyna file has {data.shape[2]} data column(s).")
    _clean_readings(data, output_dim, files["dyna"].name)
    extra = []
    add_time, add_day = time_features(config)
    if add_time:
        extra.append(np.broadcast_to(time_in_day(dyna.times)[:, None, None], (len(dyna.times), data.shape[1], 1)))
    if add_day:
        extra.append(np.broadcast_to(day_in_week(dyna.times)[:, None, :], (len(dyna.times), data.shape[1], 7)))
    if "ext" in files:
        ext = atomic.read_ext(files["ext"], dyna.times, list(config["ext_col"] or []))
        extra.append(np.broadcast_to(ext[:, None, :], (len(dyna.times), data.shape[1], ext.shape[1])))
    if extra:
        data = np.concatenate([data, *extra], axis=2)
    samples = num_samples(len(data), config["input_window"], config["output_window"])
    if samples < 3:
        raise LibTrafficError(
            f"The dataset has {len(data)} time steps, too few for input_window {config['input_window']} + "
            f"output_window {config['output_window']}."
        )
    split = split_sizes(samples, config["train_rate"], config["eval_rate"])
    if min(split) <= 0:
        raise LibTrafficError(f"train_rate {config['train_rate']} and eval_rate {config['eval_rate']} leave an empty split {split} of {samples} samples.")
    scaler = _fit(get_scaler(config["scaler"]), data[..., :output_dim], split[0], config)
    data[..., :output_dim] = scaler.transform(data[..., :output_dim])
    ext_scaler = NoneScaler()
    if config["normal_external"] and data.shape[2] > output_dim:
        ext_scaler = _fit(get_scaler(config["ext_scaler"], "ext_scaler"), data[..., output_dim:], split[0], config)
        data[..., output_dim:] = ext_scaler.transform(data[..., output_dim:])
    origin, dest, weights = atomic.read_rel(files["rel"], geo_ids, config["weight_col"])
    adj = build_adjacency(
        len(geo_ids), origin, dest, weights, config["init_weight_inf_or_zero"], config["set_weight_link_or_dist"],
        config["bidir_adj_mx"], config["calculate_weight_adj"], config["weight_adj_epsilon"],
    )
    return PreparedData(
        np.ascontiguousarray(data, dtype=np.float32), adj, scaler, ext_scaler, split,
        config["input_window"], config["output_window"], output_dim, data.shape[2] - output_dim, key,
    )


def _fit(scaler: NoneScaler, values: np.ndarray, num_train: int, config: Mapping[str, Any]) -> NoneScaler:
    """Fit on the time steps LibCity's scaler sees: those of the training inputs, plus the training
    targets for max/min-based scalers (each step once; LibCity stacks overlapping windows)."""
    steps = num_train + config["input_window"] - 1
    if scaler.fit_on_targets:
        steps += config["output_window"]
    return scaler.fit(values[:steps])


_ARRAYS = ("data.npy", "adj_mx.npy")


def _checksum(path: Path) -> tuple[int, int]:
    """(size, CRC-32) of a file, read in chunks."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return path.stat().st_size, crc


def _save(prepared: PreparedData, folder: Path) -> None:
    # A private temporary folder renamed into place: runs preparing the same data at the same
    # time (several run_model.py processes) never delete or mix each other's files.
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)
    np.save(tmp / "data.npy", prepared.data)
    np.save(tmp / "adj_mx.npy", prepared.adj_mx)
    meta = {k: v for k, v in vars(prepared).items() if k not in ("data", "adj_mx")}
    checks = {name: _checksum(tmp / name) for name in _ARRAYS}
    (tmp / "meta.pkl").write_bytes(pickle.dumps({"prepared": meta, "checks": checks}))
    try:
        tmp.rename(folder)  # atomic; a complete cache folder is never deleted while others read it
    except OSError:  # another run saved the same key first; its content is the same
        shutil.rmtree(tmp, ignore_errors=True)


class CorruptCache(Exception):
    """A dataset cache folder that cannot be trusted (truncated, edited, or of an older format)."""


def _load(folder: Path) -> PreparedData:
    try:
        saved = pickle.loads((folder / "meta.pkl").read_bytes())
        checks = saved["checks"]
        for name in _ARRAYS:
            if _checksum(folder / name) != tuple(checks[name]):
                raise CorruptCache(f"{name} differs from what was saved")
        return PreparedData(data=np.load(folder / "data.npy"), adj_mx=np.load(folder / "adj_mx.npy"),
                            **saved["prepared"])
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
    if config["cache_dataset"] and folder.is_dir():
        try:
            prepared = _load(folder)
            logger.info("Loaded prepared data from cache %s", folder)
            return prepared
        except CorruptCache as err:
            logger.warning("The dataset cache %s is damaged (%s); rebuilding it.", folder, err)
            _discard(folder)
    logger.info("Preparing dataset %s from %s", config["dataset"], files["dyna"].parent)
    prepared = _build(config, files, key)
    if config["cache_dataset"]:
        _save(prepared, folder)
        logger.info("Saved prepared data to %s", folder)
    return prepared
