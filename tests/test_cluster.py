"""hyper_tune.py on a real multi-node Ray cluster on this machine, with local and S3 storage.

One cluster for the module, started as the README says (`ray start --head`, `ray start --address`):
a head with 1 CPU and a worker node with 1 CPU and 1 (logical) GPU, so two trials of 1 CPU at once
must run on two nodes. The S3 storage is moto's server on a loopback port; the cluster's nodes
are started without any AWS setting, so trials reach it only through what the driver forwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from libtraffic.data.synthetic import write_synthetic_dataset
from tests import warm
from tests.ray_nodes import RAY_ENV, end_nodes, free_port, start_node, wait_until

REPO = Path(__file__).resolve().parent.parent
DATASET = "CL_TINY"
TIMEOUT = 400
BUCKET = "experiments"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, [head, worker]) of a two-node cluster; ended by process group, never the ray CLI's stop command."""
    temp = tmp_path_factory.mktemp("cluster")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    nodes = [start_node(temp / "head", head_port=port, num_cpus=1, env=env)]
    try:
        nodes.append(start_node(temp / "worker", address=f"127.0.0.1:{port}", num_cpus=1, num_gpus=1, env=env))
        yield f"127.0.0.1:{port}", nodes
    finally:
        end_nodes(nodes)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("work")
    write_synthetic_dataset(root / "raw_data", DATASET, num_nodes=5, num_days=3, seed=5)
    (root / "grid1.json").write_text(json.dumps({"hidden_size": {"type": "grid_search", "list": [4]}}))
    (root / "grid4.json").write_text(json.dumps({"hidden_size": {"type": "grid_search", "list": [4, 6, 8, 10]}}))
    (root / "data_grid.json").write_text(json.dumps({"hidden_size": {"type": "grid_search", "list": [8, 16]},
                                                     "input_window": {"type": "grid_search", "list": [6, 12]}}))
    return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """Environment of a moto S3 server on 127.0.0.1 with one bucket."""
    import boto3

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    try:
        wait_until(lambda: _bucket_created(client), 60, "the moto server")
        yield env, client
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _bucket_created(client) -> bool:
    try:
        client.create_bucket(Bucket=BUCKET)
        return True
    except Exception:  # the server is not listening yet
        return False


def start(workdir: Path, address: str | None, exp_id: str, space: str, *args: str, env: dict | None = None,
          stderr=subprocess.PIPE):
    cmd = [sys.executable, str(REPO / "hyper_tune.py"), "--dataset", DATASET, "--space_file", space,
           "--exp_id", exp_id, "--batch_size", "32", "--num_samples", "1", *args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUNE_DISABLE_SIGINT_HANDLER")}
    full_env |= {**RAY_ENV, "OMP_NUM_THREADS": "1"}
    for key, value in (env or {}).items():  # None: unset
        full_env[key] = value
        if value is None:
            del full_env[key]
    if address:
        full_env["RAY_ADDRESS"] = address
    return warm.Popen(cmd, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def finish(proc: subprocess.Popen, code: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == code, out[-3000:] + (err or "")[-3000:]
    return out, err


def results(workdir: Path, exp_id: str) -> list[dict]:
    return json.loads((workdir / "libtraffic" / "cache" / exp_id / "hyper_tune_results.json").read_text())


def lines(path: Path) -> int:
    return len(path.read_text().strip().splitlines()) if path.is_file() else 0


def assert_clean_terminal(out: str, err: str) -> None:
    for noise in ("Token authentication", "Tuner.restore", "Exception ignored", "Traceback", "\x1b["):
        assert noise not in out + err, noise


def assert_best_model(workdir: Path, exp_id: str, rows: list[dict], out: str) -> None:
    best = min((r for r in rows if r["status"] != "ERROR"), key=lambda r: r["best_loss"])
    cache = workdir / "libtraffic" / "cache" / exp_id
    state = torch.load(cache / "model_cache" / f"GRU_{DATASET}.m", weights_only=True)
    assert state["epoch"] == best["best_epoch"] and state["best_val_loss"] == pytest.approx(best["best_loss"])
    assert {k: state["config"][k] for k in best["config"]} == best["config"]
    saved = json.loads((cache / f"GRU_{DATASET}_best_config.json").read_text())
    assert saved["seed"] == best["seed"] and all(saved[k] == v for k, v in best["config"].items())
    assert list((cache / "evaluate_cache").glob("*.csv")) and "masked_MAE" in out


def test_trials_spread_over_nodes_and_open_no_driver_file(workdir, cluster):
    """Data settings tuned: the raw arrays go through the object store; the driver's raw_data/ is
    moved away as soon as it has read it. A complete run exits 0 with TUNE_DISABLE_SIGINT_HANDLER=1."""
    address, _ = cluster
    storage = workdir / "shared"
    proc = start(workdir, address, "spread", "data_grid", "--max_concurrent", "2", "--max_epoch", "2",
                 "--gpu_per_trial", "0", "--storage_path", str(storage), env={"TUNE_DISABLE_SIGINT_HANDLER": "1"})
    away = workdir / "raw_data.away"
    try:
        wait_until(lambda: (storage / "spread").is_dir() or proc.poll() is not None, TIMEOUT, "the experiment folder")
        (workdir / "raw_data").rename(away)
        out, err = finish(proc)
    finally:
        if away.exists():
            away.rename(workdir / "raw_data")
    rows = results(workdir, "spread")
    assert sorted((r["config"]["hidden_size"], r["config"]["input_window"]) for r in rows) == [
        (8, 6), (8, 12), (16, 6), (16, 12)]
    assert all(r["status"] == "DONE" and r["epochs_run"] == 2 for r in rows), rows
    assert len({r["node"] for r in rows}) == 2, [r["node"] for r in rows]
    assert sorted(p.name for p in (storage / "spread").glob("trial_*")) == [f"trial_{i:05d}" for i in range(4)]
    assert_best_model(workdir, "spread", rows, out)
    assert_clean_terminal(out, err)


def test_s3_storage_interrupt_and_resume(workdir, cluster, s3):
    """--storage_path s3://...: Ctrl-C (Ray's SIGINT handler disabled) keeps the finished trials in
    the bucket; --resume finishes the rest; the best model is read back from the bucket."""
    address, _ = cluster
    env, client = s3
    uri = f"s3://{BUCKET}/tune"
    flags = ("--max_concurrent", "2", "--max_epoch", "3", "--gpu_per_trial", "0", "--storage_path", uri)
    run_env = {**env, "TUNE_DISABLE_SIGINT_HANDLER": "1"}
    proc = start(workdir, address, "s3run", "grid4", *flags, env=run_env)

    def keys() -> list[str]:
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix="tune/s3run/")
        return [item["Key"] for item in listing.get("Contents", [])]

    wait_until(lambda: any("trial_00001/checkpoint_" in k for k in keys()) or proc.poll() is not None, TIMEOUT,
               "a checkpoint of the second trial in the bucket")
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, 130)
    assert "--resume --exp_id s3run" in err and "Ctrl-C again to quit at once" in err
    assert_clean_terminal(out, err)

    out, err = finish(start(workdir, address, "s3run", "grid4", *flags, "--resume", env=run_env))
    rows = results(workdir, "s3run")
    assert sorted(r["config"]["hidden_size"] for r in rows) == [4, 6, 8, 10]
    assert all(r["status"] == "DONE" and r["epochs_run"] == 3 for r in rows), rows
    assert {f"tune/s3run/trial_{i:05d}/progress.csv" for i in range(4)} <= set(keys())
    assert f"Best checkpoint: {BUCKET}/tune/s3run/trial_" in out
    assert_best_model(workdir, "s3run", rows, out)
    assert_clean_terminal(out, err)


def test_second_ctrl_c_stops_at_once_with_our_hint(workdir, cluster, tmp_path):
    """Issue 7, item 12: the second Ctrl-C ends the run with our resume hint (not only Ray's)."""
    address, _ = cluster
    storage = workdir / "shared"
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err_out:
        proc = start(workdir, address, "twice", "grid4", "--max_epoch", "200", "--gpu_per_trial", "0",
                     "--storage_path", str(storage), stderr=err_out)
        wait_until(lambda: lines(storage / "twice" / "trial_00000" / "progress.csv") >= 2 or proc.poll() is not None,
                   TIMEOUT, "the first epoch")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "Ctrl-C again" in err_file.read_text() or proc.poll() is not None, 60, "the first Ctrl-C")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=TIMEOUT)
    err = err_file.read_text()
    # When the first Ctrl-C's stop was already done, the second can land in the interpreter's last
    # exit steps, where Python has put SIGINT back to its default: the process then ends by SIGINT,
    # which a shell reports as exit status 130 too (128 + 2), after our hint.
    assert proc.returncode in (130, -signal.SIGINT), out[-2000:] + err[-3000:]
    assert err.strip().endswith("Continue with the same command plus --resume --exp_id twice."), err[-2000:]
    assert_clean_terminal(out, err)


def test_resources_come_from_the_cluster(workdir, cluster):
    """A fractional GPU request runs (on the node with a GPU); an impossible request stops at once."""
    address, _ = cluster
    out, _ = finish(start(workdir, address, "gpu", "grid1", "--max_epoch", "1", "--gpu_per_trial", "0.5",
                          "--storage_path", str(workdir / "shared"), "--verbose"))  # Ray's table names the resources
    assert results(workdir, "gpu")[0]["status"] == "DONE" and "0.5/1 GPUs" in out

    _, err = finish(start(workdir, address, "cpu2", "grid4", "--cpu_per_trial", "2"), 2)
    assert "--cpu_per_trial 2 --gpu_per_trial 1 cannot be satisfied: no node of the Ray cluster at" in err
    assert "(2 node(s): 1 CPU(s), 0 GPU(s); 1 CPU(s), 1 GPU(s))" in err and "Traceback" not in err


def test_unreachable_cluster_fails_at_once(workdir) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        _, err = finish(start(workdir, None, "dead", "grid1", "--ray_address", address), 2)
    assert f"Nothing answers at the Ray cluster address {address}" in err and "Traceback" not in err


def test_gpu_per_trial_whole_or_fraction(workdir, monkeypatch) -> None:
    from libtraffic.pipeline import hyper_parameter
    from libtraffic.utils.errors import LibTrafficError

    monkeypatch.chdir(workdir)
    with pytest.raises(LibTrafficError, match=r"--gpu_per_trial 1\.5 cannot be satisfied: give a whole number"):
        hyper_parameter(dataset_name=DATASET, space_file="grid4", gpu_per_trial=1.5, ray_address="127.0.0.1:1")


def test_caller_ray_session_is_left_running(workdir, cluster, monkeypatch):
    """hyper_parameter() inside a Ray session the caller started does not shut it down."""
    import ray

    from libtraffic.pipeline import hyper_parameter
    from libtraffic.tune.session import runtime_env

    address, _ = cluster
    monkeypatch.chdir(workdir)
    saved_env = dict(os.environ)
    os.environ.update(RAY_ENV)
    env = runtime_env(1, "")
    code = env["working_dir"]
    ray.init(address=address, runtime_env=env, log_to_driver=False)
    shutil.rmtree(code)
    try:
        # Our code reaches the workers through the runtime environment, not the driver's paths.
        code = ray.get(ray.remote(lambda: __import__("libtraffic").__file__).remote())
        assert "runtime_resources" in code and not code.startswith(str(REPO)), code
        best = hyper_parameter(model_name="GRU", dataset_name=DATASET, space_file="grid1", num_samples=1,
                               gpu_per_trial=0, storage_path=str(workdir / "shared"),
                               other_args={"exp_id": "inproc", "max_epoch": 1, "batch_size": 32})
        assert ray.is_initialized() and len(best["trials"]) == 1
        assert ray.get(ray.remote(lambda: 7).remote()) == 7
    finally:
        ray.shutdown()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(saved_env)


def test_killed_driver_takes_its_private_ray_with_it(workdir, cluster, tmp_path):
    """kill -9 of a driver that started its own Ray instance: every process it started ends,
    and the cluster beside it (another user's Ray) is untouched. The private instance keeps Ray's
    default token authentication without Ray's warning about it (its token goes to a private HOME)."""
    _, nodes = cluster
    proc = start(workdir, None, "killed", "grid4", "--max_epoch", "200", "--gpu_per_trial", "0",
                 env={"RAY_AUTH_MODE": None, "HOME": str(tmp_path)})
    progress = workdir / "libtraffic" / "cache" / "hyper_tune" / "killed" / "trial_00000" / "progress.csv"
    wait_until(lambda: lines(progress) >= 2 or proc.poll() is not None, TIMEOUT, "the first epoch")
    driver = psutil.Process(proc.pid)
    started = [p for p in driver.children(recursive=True)]
    assert any("raylet" in " ".join(p.cmdline()) for p in started)
    proc.kill()
    out, err = proc.communicate(timeout=60)
    assert (tmp_path / ".ray" / "auth_token").is_file()
    assert "Token authentication" not in out + err and "Started a local Ray instance" not in out + err

    def gone() -> bool:
        return not any(_running(p) for p in started)

    wait_until(gone, 90, "the private Ray processes to end")
    assert all(node.alive() for node in nodes)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _can_hide_folders() -> bool:
    """Whether a process may get its own mount namespace here (root or CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


def test_storage_folder_a_node_cannot_see_is_refused(workdir, cluster, tmp_path):
    """A node whose processes see an empty tmpfs over the storage folder is a machine without that
    NFS mount: the run stops before any trial, names the folder, and leaves no experiment."""
    if not _can_hide_folders():
        pytest.skip("needs `unshare -m` (root or CAP_SYS_ADMIN) to give a node its own view of the files")
    address, _ = cluster
    local_only = workdir / "local_only"
    local_only.mkdir()
    (local_only / "notes.txt").write_text("the user's file")
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
            str(local_only)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    blind = start_node(tmp_path / "blind", address=address, num_cpus=1, env=env, prefix=hide)
    try:
        _, err = finish(start(workdir, address, "blind", "grid1", "--max_epoch", "1",
                              "--storage_path", str(local_only)), 2)
    finally:
        blind.end()
    # one node is blind (the cluster's worker node mounts the folder); Ray names nodes by the machine's address
    assert re.search(rf"--storage_path {re.escape(str(local_only))} is a folder only this machine can see: "
                     rf"node\(s\) [0-9.]+ of the Ray cluster at {re.escape(address)} cannot reach it", err), err
    assert "Pass a folder every node mounts (NFS) or a URI such as s3://" in err and "Traceback" not in err
    assert sorted(p.name for p in local_only.iterdir()) == ["notes.txt"]  # nothing written, nothing lost
    assert (local_only / "notes.txt").read_text() == "the user's file"
    assert not (workdir / "libtraffic" / "cache" / "blind").exists()  # the --exp_id stays free
