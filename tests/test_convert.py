"""python -m libtraffic.data.convert: DCRNN's h5 + sensor graph and the PEMS npz + csv become atomic
files that load with --dataset NAME, give the papers' adjacency, and train.

The source files are made here in their real formats: the h5 with pandas (PyTables), the npz with
NumPy, and DCRNN's adj_mx.pkl byte by byte as Python 2's pickle wrote it (strings and the array's
raw bytes as Python 2 str), so that it loads only with encoding='latin1'.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from libtraffic.config import ConfigParser
from libtraffic.data.convert.cli import main as convert_main
from libtraffic.data.convert.readers import Edges, edges_among
from libtraffic.data.prepared import prepare_data
from libtraffic.utils.errors import LibTrafficError

from tests import warm
from conftest import REPO_ROOT, SUBPROCESS_ENV, run_cli

LA_IDS = ["773869", "767541", "767542", "717447", "717446", "717445", "773062", "767620"]
LA_EXTRA = ["737529", "717816"]  # in the graph files, not in the h5 (as in DCRNN's files)
BAY_IDS = [400001, 400017, 400030, 400040, 400045]
START = pd.Timestamp("2012-03-01")
STEPS = 2 * 288


# ----- source files in their real formats -----


def py2_pickle(sensor_ids: list[str], matrix: np.ndarray) -> bytes:
    """[sensor_ids, sensor_id_to_ind, adj_mx] as DCRNN's Python 2 pickle.dump(..., protocol=2) wrote it."""
    def text(raw: bytes) -> bytes:  # a Python 2 str: SHORT_BINSTRING or BINSTRING
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw

    def integer(n: int) -> bytes:
        return b"K" + bytes([n]) if n < 256 else b"J" + struct.pack("<i", n)

    array = np.ascontiguousarray(matrix, dtype="<f4")
    ids = b"](" + b"".join(text(s.encode()) for s in sensor_ids) + b"e"
    to_ind = b"}(" + b"".join(text(s.encode()) + integer(i) for i, s in enumerate(sensor_ids)) + b"u"
    dtype = b"cnumpy\ndtype\n" + text(b"f4") + b"K\x00K\x01\x87R(K\x03" + text(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    state = b"(K\x01" + integer(array.shape[0]) + integer(array.shape[1]) + b"\x86" + dtype + b"\x89" + text(array.tobytes()) + b"tb"
    ndarray = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text(b"b") + b"\x87R" + state
    return b"\x80\x02](" + ids + to_ind + ndarray + b"e."


def dcrnn_adjacency(sensors: list, rows: list[tuple], normalized_k: float = 0.1) -> np.ndarray:
    """DCRNN's gen_adj_mx rule, written out here independently of libtraffic."""
    index = {s: i for i, s in enumerate(sensors)}
    dist = np.full((len(sensors), len(sensors)), np.inf, dtype=np.float32)
    for origin, dest, cost in rows:
        if origin in index and dest in index:
            dist[index[origin], index[dest]] = cost
    std = dist[~np.isinf(dist)].std()
    adj = np.exp(-np.square(dist / std))
    adj[adj < normalized_k] = 0
    return adj


def speeds(rng: np.random.Generator, num_nodes: int) -> np.ndarray:
    """(STEPS, N) float64 speeds with DCRNN's zeros for missing readings and long decimals."""
    values = np.round(rng.uniform(20, 70, (STEPS, num_nodes)), 3)
    values[rng.random(values.shape) < 0.03] = 0.0
    values[5, 0] = 62.666666666666664
    return values


def distance_rows(rng: np.random.Generator, ids: list) -> list[tuple]:
    rows = []
    for a in ids:
        for b in ids:
            if a == b or rng.random() < 0.5:
                rows.append((a, b, 0.0 if a == b else float(np.round(rng.uniform(300, 9000), 1))))
    return rows


def write_sensor_graph(folder: Path, rng: np.random.Generator) -> dict:
    """DCRNN's data/sensor_graph with both datasets' files; returns what the tests compare with."""
    folder.mkdir(parents=True)
    la_all = LA_IDS + LA_EXTRA
    coords = {s: (round(34.0 + rng.uniform(0, 0.3), 5), round(-118.5 + rng.uniform(0, 0.4), 5)) for s in la_all}
    order = rng.permutation(len(la_all))  # the locations file lists sensors in its own order
    (folder / "graph_sensor_ids.txt").write_text(",".join(LA_IDS))
    (folder / "graph_sensor_locations.csv").write_text("index,sensor_id,latitude,longitude\n" + "".join(
        f"{k},{la_all[i]},{coords[la_all[i]][0]},{coords[la_all[i]][1]}\n" for k, i in enumerate(order)))
    la_rows = distance_rows(rng, la_all)
    (folder / "distances_la_2012.csv").write_text("from,to,cost\n" + "".join(f"{a},{b},{c}\n" for a, b, c in la_rows))
    la_adj = dcrnn_adjacency(LA_IDS, la_rows)
    (folder / "adj_mx.pkl").write_bytes(py2_pickle(LA_IDS, la_adj))
    bay_rows = distance_rows(rng, BAY_IDS)  # PEMS_BAY's files have no header row
    (folder / "graph_sensor_locations_bay.csv").write_text("".join(f"{s},37.{s % 1000},-121.9{s % 100}\n" for s in BAY_IDS))
    (folder / "distances_bay_2017.csv").write_text("".join(f"{a},{b},{c}\n" for a, b, c in bay_rows))
    (folder / "adj_mx_bay.pkl").write_bytes(py2_pickle([str(s) for s in BAY_IDS], dcrnn_adjacency(BAY_IDS, bay_rows)))
    return {"coords": coords, "la_rows": la_rows, "la_adj": la_adj, "bay_rows": bay_rows}


def write_h5(path: Path, columns: list, values: np.ndarray) -> None:
    index = pd.date_range(START, periods=len(values), freq="5min")
    pd.DataFrame(values, index=index, columns=columns).to_hdf(path, key="df")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Original files under <tmp>/orig and a working directory <tmp>/work with METR_LA converted by the CLI."""
    root = tmp_path_factory.mktemp("convert")
    rng = np.random.default_rng(7)
    orig = root / "orig"
    graph = write_sensor_graph(orig / "sensor_graph", rng)
    la, bay = speeds(rng, len(LA_IDS)), speeds(rng, len(BAY_IDS))
    write_h5(orig / "metr-la.h5", LA_IDS, la)
    write_h5(orig / "pems-bay.h5", BAY_IDS, bay)
    work = root / "work"
    work.mkdir()
    done = convert(work, "dcrnn", "--h5", orig / "metr-la.h5", "--sensor_graph", orig / "sensor_graph", "--dataset", "METR_LA")
    assert done.returncode == 0, done.stderr
    return {"orig": orig, "work": work, "la": la, "bay": bay, "cli": done, **graph}


def convert(cwd: Path, *args) -> subprocess.CompletedProcess:
    return warm.run([sys.executable, "-m", "libtraffic.data.convert", *map(str, args)], cwd=cwd,
                          env={**SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120)


def loaded(dataset: str, **flags):
    """The prepared data our loader builds for --dataset (cwd is the working directory)."""
    flags = {"cache_dataset": False, "scaler": "none", "add_time_in_day": False, **flags}  # readings only
    return prepare_data(ConfigParser("traffic_state_pred", "GRU", dataset, other_args=flags))


def in_geo_order(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32)[:, :, None]


# ----- DCRNN -----


def test_dcrnn_files_look_like_libcity_metr_la(sources: dict) -> None:
    folder = sources["work"] / "raw_data" / "METR_LA"
    assert sorted(p.name for p in folder.iterdir()) == ["METR_LA.dyna", "METR_LA.geo", "METR_LA.rel", "config.json"]
    geo = (folder / "METR_LA.geo").read_text().splitlines()
    lat, lon = sources["coords"]["773869"]
    assert geo[0] == "geo_id,type,coordinates"
    assert geo[1] == f'773869,Point,"[{lon}, {lat}]"'
    assert [line.split(",")[0] for line in geo[1:]] == LA_IDS  # the h5's column order
    rel = (folder / "METR_LA.rel").read_text().splitlines()
    assert rel[0] == "rel_id,type,origin_id,destination_id,cost"
    assert rel[1].startswith("0,geo,")
    known = [r for r in sources["la_rows"] if r[0] in LA_IDS and r[1] in LA_IDS]
    assert rel[1:] == [f"{k},geo,{a},{b},{c!r}" for k, (a, b, c) in enumerate(known)]
    dyna = (folder / "METR_LA.dyna").read_text().splitlines()
    assert dyna[0] == "dyna_id,type,time,entity_id,traffic_speed"
    assert dyna[1] == f"0,state,2012-03-01T00:00:00Z,773869,{float(sources['la'][0, 0])!r}"
    assert dyna[6] == "5,state,2012-03-01T00:25:00Z,773869,62.666666666666664"
    assert dyna[STEPS + 1].startswith(f"{STEPS},state,2012-03-01T00:00:00Z,767541,")  # grouped by entity, then time
    assert len(dyna) == 1 + STEPS * len(LA_IDS)
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "geo": {"including_types": ["Point"], "Point": {}},
        "rel": {"including_types": ["geo"], "geo": {"cost": "num"}},
        "dyna": {"including_types": ["state"], "state": {"entity_id": "geo_id", "traffic_speed": "num"}},
        "info": {"data_col": ["traffic_speed"], "weight_col": "cost", "data_files": ["METR_LA"], "geo_file": "METR_LA",
                 "rel_file": "METR_LA", "output_dim": 1, "time_intervals": 300, "init_weight_inf_or_zero": "inf",
                 "set_weight_link_or_dist": "dist", "calculate_weight_adj": True, "weight_adj_epsilon": 0.1},
    }
    assert "Writing METR_LA.dyna: 100% (8/8 sensors)" in sources["cli"].stderr
    assert "--dataset METR_LA" in sources["cli"].stdout


def test_dcrnn_loads_with_the_papers_adjacency(sources: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sources["work"])
    prepared = loaded("METR_LA")
    assert np.abs(prepared.adj_mx - dcrnn_adjacency(LA_IDS, sources["la_rows"])).max() <= 1e-6
    assert 0 < (prepared.adj_mx > 0).sum() < len(LA_IDS) ** 2
    np.testing.assert_array_equal(prepared.data, in_geo_order(sources["la"]))  # scaler none; zeros stay zeros


def test_dcrnn_adj_mx_pickle_needs_latin1_and_gives_its_matrix(sources: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (sources["orig"] / "sensor_graph" / "adj_mx.pkl").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)  # Python 3's default: the Python 2 str holding the array's bytes is not ASCII
    np.testing.assert_array_equal(pickle.loads(raw, encoding="latin1")[2], sources["la_adj"])
    monkeypatch.chdir(sources["work"])
    convert_main(["dcrnn", "--h5", str(sources["orig"] / "metr-la.h5"), "--adj_mx",
                  str(sources["orig"] / "sensor_graph" / "adj_mx.pkl"), "--dataset", "LA_PKL"])
    info = json.loads(Path("raw_data/LA_PKL/config.json").read_text())["info"]
    assert (info["weight_col"], info["init_weight_inf_or_zero"], info["set_weight_link_or_dist"],
            info["calculate_weight_adj"]) == ("weight", "zero", "dist", False)
    assert Path("raw_data/LA_PKL/LA_PKL.geo").read_text().splitlines()[1] == "773869,Point,[]"  # no locations given
    adj = loaded("LA_PKL").adj_mx
    assert np.abs(adj - sources["la_adj"]).max() <= 1e-6
    assert ((adj != 0) == (sources["la_adj"] != 0)).all()


def test_dcrnn_sensor_graph_folder_gives_each_dataset_its_files(sources: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """DCRNN's folder holds METR_LA's and PEMS_BAY's files: those sharing the h5's sensors are used."""
    monkeypatch.chdir(sources["work"])
    convert_main(["dcrnn", "--h5", str(sources["orig"] / "pems-bay.h5"), "--sensor_graph",
                  str(sources["orig"] / "sensor_graph"), "--dataset", "PEMS_BAY"])
    geo = Path("raw_data/PEMS_BAY/PEMS_BAY.geo").read_text().splitlines()
    assert geo[1] == '400001,Point,"[-121.91, 37.1]"'
    prepared = loaded("PEMS_BAY")
    assert np.abs(prepared.adj_mx - dcrnn_adjacency(BAY_IDS, sources["bay_rows"])).max() <= 1e-6
    np.testing.assert_array_equal(prepared.data, in_geo_order(sources["bay"]))


def test_converted_dataset_trains_one_epoch(sources: dict) -> None:
    result = run_cli(REPO_ROOT, sources["work"], "--task", "traffic_state_pred", "--model", "GRU", "--dataset", "METR_LA",
                     "--max_epoch", "1", "--batch_size", "16", "--hidden_size", "8", "--exp_id", "conv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "masked_MAE" in result.stdout + result.stderr


def test_force_replaces_only_the_dataset_files(sources: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sources["work"])
    args = ["dcrnn", "--h5", str(sources["orig"] / "pems-bay.h5"), "--sensor_graph", str(sources["orig"] / "sensor_graph"),
            "--dataset", "BAY2", "--out", "elsewhere/BAY2"]
    convert_main(args)
    Path("elsewhere/BAY2/notes.txt").write_text("mine")
    dyna = Path("elsewhere/BAY2/BAY2.dyna")
    dyna.write_text("stale")
    with pytest.raises(LibTrafficError, match="already exists"):
        convert_main(args)
    assert dyna.read_text() == "stale"
    convert_main([*args, "--force"])
    assert dyna.read_text().startswith("dyna_id,type,time,entity_id,traffic_speed\n")
    assert Path("elsewhere/BAY2/notes.txt").read_text() == "mine"
    assert not list(Path("elsewhere").glob(".*tmp"))


# ----- PEMS -----


def pems_files(folder: Path, num_steps: int, num_nodes: int, features: int, ids: list | None = None) -> tuple[np.ndarray, list]:
    """PEMS0X.npz (flow as integers, occupancy and speed as floats) and its from,to,cost csv."""
    rng = np.random.default_rng(3)
    data = np.round(rng.uniform(0, 1, (num_steps, num_nodes, features)) * [300, 0.2, 70][:features], 4)
    data[..., 0] = np.round(data[..., 0])
    names = ids or list(range(num_nodes))
    rows = [(names[i], names[(i + 1) % num_nodes], float(100 + i)) for i in range(num_nodes)]
    rows += [(names[-1], names[1], 33.5), (names[0], names[1], 999.0)]  # the repeated pair keeps its first cost
    np.savez(folder / "PEMS.npz", data=data)
    (folder / "PEMS.csv").write_text("from,to,cost\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return data, rows


def test_pems04_three_features_and_links(workdir: Path) -> None:
    data, rows = pems_files(workdir, 400, 7, 3)
    convert_main(["pems", "--npz", "PEMS.npz", "--distances", "PEMS.csv", "--dataset", "PEMSD4"])
    folder = workdir / "raw_data" / "PEMSD4"
    dyna = (folder / "PEMSD4.dyna").read_text().splitlines()
    assert dyna[0] == "dyna_id,type,time,entity_id,traffic_flow,traffic_occupancy,traffic_speed"
    assert dyna[1] == "0,state,2018-01-01T00:00:00Z,0," + ",".join(repr(float(v)) for v in data[0, 0])
    assert (folder / "PEMSD4.geo").read_text().splitlines()[1:3] == ["0,Point,[]", "1,Point,[]"]
    rel = (folder / "PEMSD4.rel").read_text().splitlines()
    assert len(rel) == 1 + len(rows) - 1 and "0,1,100.0" in rel[1]
    info = json.loads((folder / "config.json").read_text())["info"]
    assert (info["data_col"], info["output_dim"], info["set_weight_link_or_dist"]) == (
        ["traffic_flow", "traffic_occupancy", "traffic_speed"], 3, "link")
    prepared = loaded("PEMSD4")
    expected = np.zeros((7, 7), dtype=np.float32)
    for a, b, _ in rows:
        expected[a, b] = 1
    np.testing.assert_array_equal(prepared.adj_mx, expected)
    np.testing.assert_array_equal(prepared.data, data.astype(np.float32))
    assert (prepared.output_dim, loaded("PEMSD4", output_dim=1).output_dim) == (3, 1)  # --output_dim 1: flow only


def test_pems03_ids_file_and_start(workdir: Path) -> None:
    ids = [317842, 318121, 313344, 315124, 317001, 312000]
    data, _ = pems_files(workdir, 300, 6, 1, ids)
    (workdir / "PEMS03.txt").write_text("".join(f"{s}\n" for s in ids))
    convert_main(["pems", "--npz", "PEMS.npz", "--distances", "PEMS.csv", "--ids", "PEMS03.txt", "--dataset", "PEMS03"])
    dyna = (workdir / "raw_data/PEMS03/PEMS03.dyna").read_text().splitlines()
    assert dyna[0] == "dyna_id,type,time,entity_id,traffic_flow"
    assert dyna[1] == f"0,state,2018-09-01T00:00:00Z,317842,{float(data[0, 0, 0])!r}"
    convert_main(["pems", "--npz", "PEMS.npz", "--distances", "PEMS.csv", "--ids", "PEMS03.txt", "--dataset", "MINE",
                  "--start", "2020-02-03T04:05:00"])
    assert (workdir / "raw_data/MINE/MINE.dyna").read_text().splitlines()[2].startswith("1,state,2020-02-03T04:10:00Z,317842,")
    assert loaded("MINE").adj_mx.sum() == len(ids) + 1


def test_pems_published_start_from_the_file_name(workdir: Path) -> None:
    pems_files(workdir, 50, 4, 3)
    Path("PEMS.npz").rename("pems08.npz")
    convert_main(["pems", "--npz", "pems08.npz", "--distances", "PEMS.csv", "--dataset", "EIGHT"])
    assert (workdir / "raw_data/EIGHT/EIGHT.dyna").read_text().splitlines()[1].split(",")[2] == "2016-07-01T00:00:00Z"


def test_edges_among_keeps_first_of_a_pair_and_known_sensors() -> None:
    edges = Edges(np.array([1, 2, 1, 9, 2]), np.array([2, 3, 2, 1, 3]), np.array([5.0, 6.0, 7.0, 8.0, 9.0]))
    kept = edges_among(edges, np.array([1, 2, 3]), Path("e.csv"))
    assert (kept.origin.tolist(), kept.dest.tolist(), kept.cost.tolist()) == ([1, 2], [2, 3], [5.0, 6.0])


# ----- bad input, as the user sees it: exit 2, one message, nothing overwritten -----


@pytest.fixture(scope="module")
def bad_results(sources: dict) -> dict:
    """Every bad command at once (each process spends a second or two importing)."""
    orig, work = sources["orig"], sources["work"]
    bad = work / "bad"
    bad.mkdir()
    np.savez(bad / "flat.npz", data=np.zeros((20, 4)))
    (bad / "edges.csv").write_text("from,to,cost\n0,1,1.0\n")
    np.savez(bad / "ok.npz", data=np.ones((20, 4, 3)))
    (bad / "far.csv").write_text("from,to,cost\n0,1,1.0\n2,17,3.0\n")
    (bad / "adj_mx.pkl").write_bytes(b"\x80\x02this is not a pickle")
    # A pickle that would call os.system when loaded (written by hand: pickling a live function
    # records wherever it currently lives, e.g. Ray patches builtins.print in a shared process).
    (bad / "evil.pkl").write_bytes(b"\x80\x02]q\x00(X\x01\x00\x00\x00a}q\x01cos\nsystem\nq\x02e.")
    (bad / "not.h5").write_text("hello")
    write_h5(bad / "other.h5", ["111111", "222222"], np.ones((30, 2)))
    h5, graph = orig / "metr-la.h5", orig / "sensor_graph"
    cases = {
        "missing_h5": (["dcrnn", "--h5", bad / "nope.h5", "--sensor_graph", graph, "--dataset", "X1"],
                       [r"--h5 \S*nope\.h5 does not exist"]),
        "ids_not_in_graph": (["dcrnn", "--h5", bad / "other.h5", "--sensor_graph", graph, "--dataset", "X3"],
                             [r"2 of the 2 sensors of other\.h5 are not in \S*distances_\w+\.csv: 111111, 222222",
                              r"different datasets"]),
        "unreadable_pickle": (["dcrnn", "--h5", h5, "--adj_mx", bad / "adj_mx.pkl", "--dataset", "X4"],
                              [r"Cannot read \S*adj_mx\.pkl as DCRNN's adj_mx\.pkl \(a pickle of \[sensor_ids, sensor_id_to_ind, adj_mx\]\)"]),
        "wrong_npz_shape": (["pems", "--npz", bad / "flat.npz", "--distances", bad / "edges.csv", "--dataset", "PEMSD4"],
                            [r"flat\.npz: 'data' has shape \(20, 4\); expected \(time, nodes, 3\)"]),
        "existing_output": (["dcrnn", "--h5", h5, "--sensor_graph", graph, "--dataset", "METR_LA"],
                            [r"raw_data/METR_LA already exists \(it holds METR_LA\.dyna.*refusing to overwrite.*--force"]),
        "bad_dataset_name": (["dcrnn", "--h5", h5, "--sensor_graph", graph, "--dataset", "../up"],
                             [r"Dataset name '\.\./up' must be a plain folder name"]),
        "unknown_converter": (["dcrn", "--h5", h5], [r"Unknown converter 'dcrn'.*Did you mean 'dcrnn'\?"]),
    }
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (work / "raw_data" / "METR_LA").iterdir()}
    procs = {name: warm.Popen([sys.executable, "-m", "libtraffic.data.convert", *map(str, args)], cwd=work,
                                    env={**SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, (args, _) in cases.items()}
    results = {name: (proc, *proc.communicate(timeout=120)) for name, proc in procs.items()}
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (work / "raw_data" / "METR_LA").iterdir()}
    return {"cases": cases, "results": results, "untouched": before == after, "work": work}


@pytest.mark.parametrize("case", ["missing_h5", "ids_not_in_graph", "unreadable_pickle", "wrong_npz_shape",
                                  "existing_output", "bad_dataset_name", "unknown_converter"])
def test_bad_input_exits_2_with_a_clear_message(bad_results: dict, case: str) -> None:
    proc, out, err = bad_results["results"][case]
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err and err.startswith("Error: ")
    for pattern in bad_results["cases"][case][1]:
        assert re.search(pattern, err, re.S), (pattern, err)


def test_existing_dataset_left_untouched(bad_results: dict) -> None:
    assert bad_results["untouched"]
    assert not list((bad_results["work"] / "raw_data").glob(".*tmp"))
    assert not list((bad_results["work"] / "raw_data").glob("X*")) and not (bad_results["work"] / "up").exists()


IN_PROCESS_CASES = {
    "not_hdf5": (["dcrnn", "--h5", "{bad}/not.h5", "--sensor_graph", "{graph}", "--dataset", "Y1"],
                 r"Cannot read \S*not\.h5 as a pandas HDF5 file like DCRNN's metr-la\.h5: it is not an HDF5 file"),
    "pickle_with_code": (["dcrnn", "--h5", "{h5}", "--adj_mx", "{bad}/evil.pkl", "--dataset", "Y2"],
                         r"evil\.pkl.*refers to os\.system, which an adj_mx\.pkl never holds"),
    "both_graphs": (["dcrnn", "--h5", "{h5}", "--adj_mx", "{graph}/adj_mx.pkl", "--distances", "{graph}/distances_la_2012.csv",
                     "--dataset", "Y3"], r"Give either --distances .* or --adj_mx"),
    "no_graph": (["dcrnn", "--h5", "{h5}", "--dataset", "Y4"], r"No sensor graph: pass --sensor_graph DIR"),
    "csv_names_unknown_nodes": (["pems", "--npz", "{bad}/ok.npz", "--distances", "{bad}/far.csv", "--dataset", "PEMSD4"],
                                r"far\.csv names 1 sensor\(s\) that ok\.npz does not have \(node indices 0\.\.3\): 17\..*--ids"),
    "start_unknown": (["pems", "--npz", "{bad}/ok.npz", "--distances", "{bad}/edges.csv", "--dataset", "MYDATA"],
                      r"Give --start DATE .*the start of ok\.npz \(--dataset MYDATA\) is not known.*PEMS04 2018-01-01"),
    "start_conflict": (["pems", "--npz", "{bad}/ok.npz", "--distances", "{bad}/edges.csv", "--dataset", "PEMSD8",
                        "--start", "2018-13-01"], r"--start '2018-13-01' is not a date"),
    "ids_count": (["pems", "--npz", "{bad}/ok.npz", "--distances", "{bad}/edges.csv", "--ids", "{bad}/edges.csv",
                   "--dataset", "PEMS03"], r"lists 6 sensor ids but ok\.npz has 4 nodes"),
}


@pytest.mark.parametrize("case", list(IN_PROCESS_CASES))
def test_more_bad_input(bad_results: dict, sources: dict, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bad_results["work"])
    args, pattern = IN_PROCESS_CASES[case]
    names = {"bad": bad_results["work"] / "bad", "graph": sources["orig"] / "sensor_graph", "h5": sources["orig"] / "metr-la.h5"}
    with pytest.raises(LibTrafficError, match=pattern):
        convert_main([a.format(**names) for a in args])
    assert not list((bad_results["work"] / "raw_data").glob("Y*"))
