"""Built-in synthetic traffic-speed datasets, written as LibCity atomic files in METR_LA's schema.

The generator lets every test, benchmark and first run work without downloading METR_LA. Speeds
(mph, one reading per sensor every 5 minutes from 2012-03-01T00:00:00Z) combine:

* a daily rhythm with morning and evening rush-hour dips whose depth and timing differ by sensor,
* a weekly rhythm (weekends lighter, with a mild midday slowdown),
* spatially correlated congestion: smooth latent AR(1) processes and sparse incidents, diffused
  over the sensor graph so that neighbours move together,
* per-sensor AR(1) noise plus small white noise, clipped to 5..75 mph,
* zero readings as missing values (isolated ones and outage runs of 30 minutes to 3 hours).

Run ``python -m libtraffic.data.synthetic --dataset NAME`` to write ``raw_data/NAME``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libtraffic.data.builtin import BUILTIN_DATASETS
from libtraffic.utils.safe_write import write_atomically
from libtraffic.data.atomic_writer import (
    DISTANCE_KERNEL, check_dataset_name, dyna_chunks, geo_text, rel_text, time_texts,
)
from libtraffic.data.atomic_writer import dataset_config as atomic_config
from libtraffic.utils.errors import LibTrafficError

logger = logging.getLogger(__name__)

START_TIME = np.datetime64("2012-03-01T00:00:00", "s")
STEP_SECONDS = 300
STEPS_PER_DAY = 86400 // STEP_SECONDS
START_WEEKDAY = 3  # 2012-03-01 was a Thursday (Monday = 0).

LA_CENTER = (-118.33, 34.10)  # lon, lat
NUM_NEIGHBOURS = 6
MAX_NODES = 10_000  # the network is built from dense (N, N) distance matrices
MIN_SPEED, MAX_SPEED = 5.0, 75.0
EARTH_RADIUS_M = 6_371_000.0



@dataclass(frozen=True)
class SyntheticData:
    """A generated sensor network and its speeds.

    sensor_ids: (N,) int64 distinct 6-digit ids, in .geo order.
    coordinates: (N, 2) float64 [lon, lat] in degrees.
    edge_index: (E, 2) int64 (origin, destination) indices into sensor_ids; self-loops first per origin.
    edge_cost: (E,) float64 road distance in metres (0.0 for self-loops).
    speeds: (T, N) float32 mph, rounded to 3 decimals; 0.0 marks a missing reading.
    """

    sensor_ids: np.ndarray
    coordinates: np.ndarray
    edge_index: np.ndarray
    edge_cost: np.ndarray
    speeds: np.ndarray


def _check_sizes(num_nodes: int, num_days: int, seed: int, missing_rate: float) -> None:
    if not 2 <= num_nodes <= MAX_NODES:
        raise LibTrafficError(f"num_nodes must be between 2 and {MAX_NODES}, got {num_nodes}.")
    if num_days < 1:
        raise LibTrafficError(f"num_days must be at least 1, got {num_days}.")
    if seed < 0:
        raise LibTrafficError(f"seed must be a non-negative integer, got {seed}.")
    if not 0.0 <= missing_rate < 0.5:
        raise LibTrafficError(f"missing_rate must be in [0, 0.5), got {missing_rate}.")


# ---------------------------------------------------------------------------------------------
# Network: sensors along a few freeways around Los Angeles, k-nearest-neighbour road links.


def _haversine_m(coords: np.ndarray) -> np.ndarray:
    """Pairwise great-circle distances (N, N) in metres for [lon, lat] degrees."""
    lon, lat = np.radians(coords[:, 0]), np.radians(coords[:, 1])
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    a = np.sin(dlat / 2) ** 2 + np.cos(lat[:, None]) * np.cos(lat[None, :]) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _sensor_layout(rng: np.random.Generator, num_nodes: int) -> np.ndarray:
    """(N, 2) [lon, lat]: sensors scattered along straight freeway segments that cross LA."""
    num_roads = min(6, 1 + num_nodes // 30)
    centres = np.array(LA_CENTER) + rng.uniform(-1, 1, (num_roads, 2)) * [0.08, 0.05]
    angles = rng.uniform(0, np.pi, num_roads)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    road = rng.integers(0, num_roads, num_nodes)
    along = rng.uniform(-0.15, 0.15, num_nodes)  # degrees from the segment centre
    jitter = rng.normal(0.0, 0.002, (num_nodes, 2))
    coords = centres[road] + along[:, None] * directions[road] + jitter
    return np.round(coords, 5)


def _road_links(rng: np.random.Generator, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Self-loops plus directed links to the nearest sensors; cost = haversine x road factor."""
    n = len(coords)
    dist = _haversine_m(coords)
    k = min(NUM_NEIGHBOURS, n - 1)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]  # (N, k)
    targets = np.concatenate([np.arange(n)[:, None], nearest], axis=1)  # self-loop first
    origins = np.repeat(np.arange(n), k + 1)
    dests = targets.reshape(-1)
    road_factor = rng.uniform(1.05, 1.4, origins.shape)  # roads are longer than the crow flies
    cost = np.where(origins == dests, 0.0, dist[origins, dests] * road_factor)
    return np.stack([origins, dests], axis=1), np.round(cost, 1)


def _diffusion(edge_index: np.ndarray, n: int, steps: int) -> np.ndarray:
    """(N, N) row-stochastic lazy random walk over the symmetrised graph, taken ``steps`` times."""
    adj = np.zeros((n, n))
    adj[edge_index[:, 0], edge_index[:, 1]] = 1.0
    adj = np.maximum(adj, adj.T)
    np.fill_diagonal(adj, 1.0)
    walk = 0.5 * np.eye(n) + 0.5 * adj / adj.sum(axis=1, keepdims=True)
    return np.linalg.matrix_power(walk, steps)


# ---------------------------------------------------------------------------------------------
# Speeds.


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) series along axis 0, shape (T, N)."""
    innovations = rng.standard_normal(shape) * np.sqrt(1.0 - phi**2)
    before_start = rng.standard_normal((1, shape[1]))
    from scipy.signal import lfilter  # imported here: ~3 s that config parsing should not pay

    series, _ = lfilter([1.0], [1.0, -phi], innovations, axis=0, zi=phi * before_start)
    return series


def _diffused_ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float, kernel: np.ndarray) -> np.ndarray:
    """AR(1) processes mixed over the graph by ``kernel`` (N, N), rescaled to unit variance."""
    mixed = _ar1(rng, shape, phi) @ kernel.T
    return mixed / np.linalg.norm(kernel, axis=1)


def _rush_hour_profiles(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Congestion fraction by time of day, (STEPS_PER_DAY, N) for weekdays and for weekends."""
    hours = np.arange(STEPS_PER_DAY)[:, None] * STEP_SECONDS / 3600.0

    def bump(centre: np.ndarray, width: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((hours - centre) / width) ** 2)

    severity = rng.uniform(0.25, 0.6, n)
    inbound = rng.uniform(0.0, 1.0, n)  # share of the morning peak against the evening one
    morning = bump(rng.normal(7.9, 0.4, n), rng.uniform(0.7, 1.3, n))
    evening = bump(rng.normal(17.4, 0.5, n), rng.uniform(0.9, 1.7, n))
    midday = bump(rng.normal(13.5, 0.8, n), rng.uniform(2.0, 3.5, n))
    peaks = severity * ((0.4 + 0.6 * inbound) * morning + (1.0 - 0.6 * inbound) * evening)
    weekday = peaks + 0.05 * midday
    weekend = 0.25 * peaks + rng.uniform(0.05, 0.2, n) * midday
    return weekday, weekend


def _incidents(rng: np.random.Generator, shape: tuple[int, int], kernel: np.ndarray) -> np.ndarray:
    """Sparse sudden slowdowns (about one per sensor every three days) that clear over ~1.5 h."""
    starts = rng.random(shape) < 1.0 / (3 * STEPS_PER_DAY)
    impulses = np.where(starts, rng.uniform(0.15, 0.5, shape), 0.0)
    from scipy.signal import lfilter

    decayed = lfilter([1.0], [1.0, -0.94], impulses, axis=0)
    return decayed @ kernel.T


def _missing_mask(rng: np.random.Generator, shape: tuple[int, int], missing_rate: float) -> np.ndarray:
    """(T, N) bool, exactly round(rate*T*N) cells: ~40% in outage runs (6-36 steps), rest isolated."""
    num_steps, n = shape
    target = int(round(missing_rate * num_steps * n))
    mask = np.zeros(num_steps * n, dtype=bool)  # sensor-major: cell = sensor * T + step
    if target == 0:
        return mask.reshape(n, num_steps).T
    lengths = rng.integers(6, 37, int(np.ceil(0.4 * target / 6)) + 1)
    lengths = np.minimum(lengths, num_steps)
    lengths = lengths[np.cumsum(lengths) <= 0.4 * target]
    run_sensor = rng.integers(0, n, len(lengths))
    run_start = rng.integers(0, num_steps - lengths + 1)
    first = run_sensor * num_steps + run_start
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    mask[np.repeat(first, lengths) + offsets] = True
    free = np.flatnonzero(~mask)
    mask[free[rng.choice(len(free), target - int(mask.sum()), replace=False)]] = True
    return mask.reshape(n, num_steps).T


def generate_speeds(num_nodes: int, num_days: int, seed: int = 0, missing_rate: float = 0.02) -> SyntheticData:
    """Generate a sensor network and (num_days * 288, num_nodes) speeds in mph, deterministic for ``seed``.

    The network is drawn first, so the same seed gives the same sensors whatever ``num_days`` is.
    """
    _check_sizes(num_nodes, num_days, seed, missing_rate)
    rng = np.random.default_rng(seed)
    sensor_ids = 100_000 + rng.choice(900_000, num_nodes, replace=False)
    coords = _sensor_layout(rng, num_nodes)
    edge_index, edge_cost = _road_links(rng, coords)

    shape = (num_days * STEPS_PER_DAY, num_nodes)
    step = np.arange(shape[0])
    weekend = ((START_WEEKDAY + step // STEPS_PER_DAY) % 7 >= 5)[:, None]
    weekday_profile, weekend_profile = _rush_hour_profiles(rng, num_nodes)
    time_of_day = step % STEPS_PER_DAY
    profile = np.where(weekend, weekend_profile[time_of_day], weekday_profile[time_of_day])

    wide, narrow = _diffusion(edge_index, num_nodes, 4), _diffusion(edge_index, num_nodes, 1)
    day_severity = np.exp(0.3 * _diffused_ar1(rng, shape, np.exp(-1.0 / STEPS_PER_DAY), wide))
    congestion = profile * day_severity + 0.06 * _diffused_ar1(rng, shape, 0.95, wide)
    congestion += _incidents(rng, shape, narrow)
    free_flow = rng.uniform(58.0, 70.0, num_nodes)
    speeds = free_flow * (1.0 - np.clip(congestion, 0.0, 0.9))
    speeds += 1.2 * _ar1(rng, shape, 0.8) + 0.5 * rng.standard_normal(shape)
    speeds = np.round(np.clip(speeds, MIN_SPEED, MAX_SPEED), 3)
    speeds[_missing_mask(rng, shape, missing_rate)] = 0.0
    return SyntheticData(sensor_ids, coords, edge_index, edge_cost, speeds.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Atomic files (written with libtraffic.data.atomic_writer: 7.1 M .dyna rows in a few seconds).


def _speed_table(max_millis: int) -> np.ndarray:
    """Shortest decimal text of k/1000 for k = 0..max_millis, like METR_LA's '64.375' and '0.0'."""
    return np.array([repr(k / 1000) for k in range(max_millis + 1)], dtype="S")


def _dyna_chunks(data: SyntheticData) -> Iterator[bytes | np.ndarray]:
    """The .dyna file as byte buffers: the header, then one buffer per sensor (all its times)."""
    millis = np.rint(data.speeds.astype(np.float64) * 1000).astype(np.int64)
    times = time_texts(START_TIME, data.speeds.shape[0], STEP_SECONDS)
    return dyna_chunks(data.sensor_ids, times, millis[:, :, None], _speed_table(int(millis.max())), ["traffic_speed"])


def _rel_text(data: SyntheticData) -> str:
    ids = data.sensor_ids
    return rel_text(ids[data.edge_index[:, 0]], ids[data.edge_index[:, 1]], data.edge_cost, "cost")


def dataset_config(name: str) -> dict:
    """The dataset's config.json content, as METR_LA's."""
    return atomic_config(name, ["traffic_speed"], "cost", STEP_SECONDS, DISTANCE_KERNEL)


def write_synthetic_dataset(
    output_dir: str | Path,
    name: str,
    num_nodes: int = 207,
    num_days: int = 119,
    seed: int = 0,
    missing_rate: float = 0.02,
    overwrite: bool = False,
) -> Path:
    """Write ``output_dir/name/{name.geo, name.rel, name.dyna, config.json}`` and return the folder.

    Refuses to replace a folder that already holds a .dyna file unless ``overwrite``. The .dyna is
    written last, so its presence means the dataset is complete.
    """
    check_dataset_name(name)
    folder = Path(output_dir) / name
    existing = sorted(folder.glob("*.dyna")) if folder.is_dir() else []
    if existing and not overwrite:
        raise LibTrafficError(
            f"{folder} already holds {existing[0].name}; refusing to overwrite it. "
            "Choose another --dataset or --output_dir, or pass --overwrite."
        )
    data = generate_speeds(num_nodes, num_days, seed, missing_rate)
    config_text = json.dumps(dataset_config(name), indent=2) + "\n"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / f"{name}.geo", [geo_text(data.sensor_ids, data.coordinates).encode()])
        write_atomically(folder / f"{name}.rel", [_rel_text(data).encode()])
        write_atomically(folder / "config.json", [config_text.encode()])
        write_atomically(folder / f"{name}.dyna", _dyna_chunks(data))
    except OSError as err:
        raise LibTrafficError(f"Cannot write the dataset into {folder}: {err}") from err
    return folder


def ensure_builtin_dataset(name: str, raw_data_dir: Path) -> bool:
    """Generate built-in dataset ``name`` into ``raw_data_dir/name`` unless its .dyna exists.

    ``raw_data_dir`` is the parent folder (./raw_data). Returns True if it generated the dataset,
    False if ``name`` is not built in or is already there.
    """
    if name not in BUILTIN_DATASETS or (Path(raw_data_dir) / name / f"{name}.dyna").is_file():
        return False
    logger.info("Generating built-in synthetic dataset %s in %s", name, Path(raw_data_dir) / name)
    write_synthetic_dataset(raw_data_dir, name, **BUILTIN_DATASETS[name])
    return True


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m libtraffic.data.synthetic",
        description="Write a synthetic traffic-speed dataset as LibCity atomic files (METR_LA schema).",
    )
    parser.add_argument("--dataset", required=True, help="dataset name; files go to OUTPUT_DIR/DATASET/")
    parser.add_argument("--num_nodes", type=int, default=207, help="number of sensors (default 207)")
    parser.add_argument("--num_days", type=int, default=119, help="days of 5-minute readings (default 119)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--output_dir", default="raw_data", help="parent folder (default raw_data)")
    parser.add_argument("--missing_rate", type=float, default=0.02, help="share of zero readings (default 0.02)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, write the dataset and print a summary; user mistakes exit with code 2."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        folder = write_synthetic_dataset(
            args.output_dir, args.dataset, args.num_nodes, args.num_days, args.seed,
            args.missing_rate, overwrite=args.overwrite,
        )
    except LibTrafficError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    steps = args.num_days * STEPS_PER_DAY
    print(
        f"Wrote {folder.resolve()}: {args.num_nodes} sensors, {steps} steps of {STEP_SECONDS} s "
        f"({args.num_days} days), {args.num_nodes * steps} dyna rows in {time.perf_counter() - started:.1f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
