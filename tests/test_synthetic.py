"""The built-in synthetic dataset generator: file schema, determinism, realism, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import warm
from libtraffic.data.synthetic import (
    BUILTIN_DATASETS,
    ensure_builtin_dataset,
    generate_speeds,
    main,
    write_synthetic_dataset,
)
from libtraffic.utils.errors import LibTrafficError

REPO_ROOT = Path(__file__).resolve().parent.parent
N, DAYS = 5, 2
T = DAYS * 288


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("raw"), "TINY", num_nodes=N, num_days=DAYS, seed=3)


def first_line(path: Path) -> str:
    with open(path) as handle:
        return handle.readline().rstrip("\n")


def test_writes_the_four_files_with_metr_la_headers(tiny: Path) -> None:
    assert sorted(p.name for p in tiny.iterdir()) == ["TINY.dyna", "TINY.geo", "TINY.rel", "config.json"]
    assert first_line(tiny / "TINY.geo") == "geo_id,type,coordinates"
    assert first_line(tiny / "TINY.rel") == "rel_id,type,origin_id,destination_id,cost"
    assert first_line(tiny / "TINY.dyna") == "dyna_id,type,time,entity_id,traffic_speed"


def test_geo_rows(tiny: Path) -> None:
    geo = pd.read_csv(tiny / "TINY.geo")
    assert len(geo) == N and geo["geo_id"].is_unique
    assert geo["geo_id"].between(100_000, 999_999).all()
    assert (geo["type"] == "Point").all()
    lon, lat = np.array([json.loads(c) for c in geo["coordinates"]]).T
    assert np.all((-119.0 < lon) & (lon < -117.5) & (33.5 < lat) & (lat < 34.6))
    second = (tiny / "TINY.geo").read_text().splitlines()[1]
    assert second.startswith(f'{geo["geo_id"][0]},Point,"[-118.') and second.endswith(']"')


def test_rel_has_self_loops_and_distances(tiny: Path) -> None:
    rel = pd.read_csv(tiny / "TINY.rel")
    ids = pd.read_csv(tiny / "TINY.geo")["geo_id"]
    assert rel["rel_id"].tolist() == list(range(len(rel)))
    assert (rel["type"] == "geo").all()
    assert set(rel["origin_id"]) <= set(ids) and set(rel["destination_id"]) <= set(ids)
    loops = rel[rel["origin_id"] == rel["destination_id"]]
    assert sorted(loops["origin_id"]) == sorted(ids) and (loops["cost"] == 0.0).all()
    links = rel[rel["origin_id"] != rel["destination_id"]]
    assert len(links) >= N and (links["cost"] > 0).all()
    assert not links.duplicated(["origin_id", "destination_id"]).any()


def test_dyna_rows_are_grouped_by_entity_then_time(tiny: Path) -> None:
    dyna = pd.read_csv(tiny / "TINY.dyna")
    ids = pd.read_csv(tiny / "TINY.geo")["geo_id"].to_numpy()
    assert len(dyna) == N * T
    assert dyna["dyna_id"].tolist() == list(range(N * T))
    assert (dyna["type"] == "state").all()
    np.testing.assert_array_equal(dyna["entity_id"].to_numpy(), np.repeat(ids, T))
    expected = pd.date_range("2012-03-01T00:00:00", periods=T, freq="5min").strftime("%Y-%m-%dT%H:%M:%SZ")
    np.testing.assert_array_equal(dyna["time"].to_numpy(), np.tile(expected.to_numpy(), N))
    assert dyna["traffic_speed"].dtype == np.float64


def test_config_json(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config == {
        "geo": {"including_types": ["Point"], "Point": {}},
        "rel": {"including_types": ["geo"], "geo": {"cost": "num"}},
        "dyna": {"including_types": ["state"], "state": {"entity_id": "geo_id", "traffic_speed": "num"}},
        "info": {
            "data_col": ["traffic_speed"], "weight_col": "cost", "data_files": ["TINY"],
            "geo_file": "TINY", "rel_file": "TINY", "output_dim": 1, "time_intervals": 300,
            "init_weight_inf_or_zero": "inf", "set_weight_link_or_dist": "dist",
            "calculate_weight_adj": True, "weight_adj_epsilon": 0.1,
        },
    }
    assert (tiny / "config.json").read_text().startswith('{\n  "geo": {\n')


def test_written_speeds_match_the_generator(tiny: Path) -> None:
    dyna = pd.read_csv(tiny / "TINY.dyna")
    speeds = dyna["traffic_speed"].to_numpy().reshape(N, T).T
    np.testing.assert_array_equal(speeds.astype(np.float32), generate_speeds(N, DAYS, seed=3).speeds)
    text = (tiny / "TINY.dyna").read_text()
    assert ",0.0\n" in text and ",0.000" not in text  # METR_LA style: shortest decimals


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", "D", num_nodes=N, num_days=DAYS, seed=7)
    b = write_synthetic_dataset(tmp_path / "b", "D", num_nodes=N, num_days=DAYS, seed=7)
    for name in ["D.geo", "D.rel", "D.dyna", "config.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    other = generate_speeds(N, DAYS, seed=8).speeds
    assert not np.array_equal(other, generate_speeds(N, DAYS, seed=7).speeds)


def test_missing_rate_and_value_range() -> None:
    data = generate_speeds(8, 3, seed=1, missing_rate=0.03)
    assert data.speeds.shape == (3 * 288, 8) and data.speeds.dtype == np.float32
    zero = data.speeds == 0
    assert zero.mean() == pytest.approx(0.03, abs=0.002)
    valid = data.speeds[~zero]
    assert valid.min() >= 5.0 and valid.max() <= 75.0
    # Some zeros come in outage runs: a sensor reading zero for at least 30 minutes.
    runs = np.lib.stride_tricks.sliding_window_view(zero, 6, axis=0).all(axis=-1)
    assert runs.any()
    assert not (generate_speeds(8, 3, seed=1, missing_rate=0.0).speeds == 0).any()


def test_morning_rush_hour_is_slower_than_the_night() -> None:
    speeds = generate_speeds(N, DAYS, seed=0, missing_rate=0.0).speeds.reshape(DAYS, 288, N)
    night = speeds[:, 2 * 12 + 6 : 3 * 12 + 6].mean()  # 02:30-03:30
    rush = speeds[:, 7 * 12 + 6 : 8 * 12 + 6].mean()  # 07:30-08:30 (Thursday and Friday)
    assert rush < night - 5.0


def test_weekends_are_lighter_at_rush_hour() -> None:
    speeds = generate_speeds(N, 7, seed=0, missing_rate=0.0).speeds.reshape(7, 288, N)
    weekday = (np.arange(7) + 3) % 7 < 5  # 2012-03-01 was a Thursday
    evening = slice(17 * 12, 19 * 12)
    assert speeds[~weekday, evening].mean() > speeds[weekday, evening].mean() + 3.0


def test_neighbours_move_together_more_than_distant_sensors() -> None:
    n, days = 30, 7
    data = generate_speeds(n, days, seed=0, missing_rate=0.0)
    speeds = data.speeds.astype(np.float64)
    step = np.arange(days * 288)
    key = ((3 + step // 288) % 7 >= 5) * 288 + step % 288  # (weekend?, time of day)
    sums = np.zeros((2 * 288, n))
    np.add.at(sums, key, speeds)
    residual = speeds - (sums / np.bincount(key, minlength=2 * 288)[:, None])[key]
    corr = np.corrcoef(residual.T)
    links = data.edge_index[data.edge_index[:, 0] != data.edge_index[:, 1]]
    near = corr[links[:, 0], links[:, 1]].mean()
    lon, lat = data.coordinates.T
    dist = np.hypot(lon[:, None] - lon, lat[:, None] - lat)
    upper = np.triu_indices(n, 1)
    far = dist[upper] >= np.quantile(dist[upper], 0.75)
    assert near > corr[upper][far].mean() + 0.3


def test_refuses_to_overwrite_unless_asked(tiny: Path, tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path, "D", num_nodes=N, num_days=1, seed=0)
    before = (folder / "D.dyna").read_bytes()
    with pytest.raises(LibTrafficError, match="overwrite"):
        write_synthetic_dataset(tmp_path, "D", num_nodes=N, num_days=1, seed=1)
    assert (folder / "D.dyna").read_bytes() == before
    write_synthetic_dataset(tmp_path, "D", num_nodes=N, num_days=1, seed=1, overwrite=True)
    assert (folder / "D.dyna").read_bytes() != before
    assert sorted(p.name for p in folder.iterdir()) == ["D.dyna", "D.geo", "D.rel", "config.json"]


@pytest.mark.parametrize(
    "kwargs", [{"num_nodes": 1}, {"num_days": 0}, {"missing_rate": 0.5}, {"missing_rate": -0.1}]
)
def test_bad_sizes_are_user_errors(kwargs: dict) -> None:
    args = {"num_nodes": N, "num_days": 1, "seed": 0} | kwargs
    with pytest.raises(LibTrafficError):
        generate_speeds(**args)


def test_ensure_builtin_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert BUILTIN_DATASETS == {"SYNTH_LA": {"num_nodes": 20, "num_days": 14, "seed": 0}}
    monkeypatch.setitem(BUILTIN_DATASETS, "SYNTH_LA", {"num_nodes": 4, "num_days": 1, "seed": 0})
    assert ensure_builtin_dataset("METR_LA", tmp_path) is False
    assert not (tmp_path / "METR_LA").exists()
    assert ensure_builtin_dataset("SYNTH_LA", tmp_path) is True
    assert (tmp_path / "SYNTH_LA" / "SYNTH_LA.dyna").is_file()
    assert ensure_builtin_dataset("SYNTH_LA", tmp_path) is False


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return warm.run(
        [sys.executable, "-m", "libtraffic.data.synthetic", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_cli_writes_the_dataset(tmp_path: Path) -> None:
    result = run_cli("--dataset", "CLI", "--num_nodes", "4", "--num_days", "1", "--seed", "2",
                     "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "CLI"
    assert str(folder) in result.stdout and "4 sensors" in result.stdout and "1152 dyna rows" in result.stdout
    assert len(pd.read_csv(folder / "CLI.dyna")) == 4 * 288
    assert (folder / "CLI.dyna").read_bytes() == (
        write_synthetic_dataset(tmp_path / "api", "CLI", num_nodes=4, num_days=1, seed=2) / "CLI.dyna"
    ).read_bytes()

    again = run_cli("--dataset", "CLI", "--num_nodes", "4", "--num_days", "1", "--output_dir", str(tmp_path))
    assert again.returncode == 2 and "overwrite" in again.stderr and "Traceback" not in again.stderr


def test_cli_bad_value_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("--dataset", "BAD", "--output_dir", str(tmp_path), "--num_nodes", "1")
    assert result.returncode == 2
    assert "num_nodes" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "BAD").exists()


@pytest.mark.parametrize(
    "bad", [["--num_days", "0"], ["--missing_rate", "0.7"], ["--seed", "-1"], ["--dataset", "a/b"]]
)
def test_main_bad_values_exit_2(tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["--dataset", "BAD", "--output_dir", str(tmp_path), *bad]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not any(tmp_path.iterdir())


def test_main_non_numeric_flag_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--dataset", "BAD", "--output_dir", str(tmp_path), "--num_nodes", "x"])
    assert raised.value.code == 2 and "--num_nodes" in capsys.readouterr().err
