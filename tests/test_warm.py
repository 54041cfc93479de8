"""tests/warm.py: a forked run behaves as a new ``python`` process would (streams, exit codes, signals,
working directory, environment, sys.path, ``-m``), and is in fact forked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SUBPROCESS_ENV
from tests import warm

pytestmark = pytest.mark.skipif(os.environ.get("LIBTRAFFIC_COLD_CLI") == "1",
                                reason="LIBTRAFFIC_COLD_CLI=1: every run starts a new interpreter, none is forked")

PROBE = """import json, os, sys
line = sys.stdin.readline()
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "var": os.environ.get("WARM_PROBE"), "stdin": line,
                  "path0": sys.path[0], "main": __name__, "preloaded": "torch" in sys.modules}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""

SLEEPER = """import sys, time
print("ready", flush=True)
time.sleep(60)
"""


def both(args: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    return (warm.run(args, capture_output=True, text=True, timeout=120, **kwargs),
            subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs))


def test_a_forked_run_sees_what_a_new_process_sees(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**SUBPROCESS_ENV, "WARM_PROBE": "é value"}
    forked, fresh = both([sys.executable, str(script), "3", "--flag"], cwd=tmp_path, env=env, input="given\n")
    assert forked.returncode == fresh.returncode == 3
    assert forked.stderr == fresh.stderr == "to stderr\n"
    forked_seen, fresh_seen = (__import__("json").loads(run.stdout) for run in (forked, fresh))
    assert forked_seen.pop("preloaded") is True and fresh_seen.pop("preloaded") is False  # forked indeed
    assert forked_seen == fresh_seen == {"argv": ["3", "--flag"], "cwd": str(tmp_path), "var": "é value",
                                         "stdin": "given\n", "path0": str(tmp_path), "main": "__main__"}


def test_a_cli_error_and_a_module_run_are_the_same(tmp_path: Path) -> None:
    forked, fresh = both([sys.executable, str(REPO_ROOT / "run_model.py"), "--model", "GRU", "--nope", "1"],
                         cwd=tmp_path, env=SUBPROCESS_ENV)
    assert forked.returncode == fresh.returncode == 2
    assert (forked.stdout, forked.stderr) == (fresh.stdout, fresh.stderr) and "Error: " in forked.stderr
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(REPO_ROOT)}
    forked, fresh = both([sys.executable, "-m", "libtraffic.report", "--exp_id", "nope"], cwd=tmp_path, env=env)
    assert forked.returncode == fresh.returncode == 2
    assert (forked.stdout, forked.stderr) == (fresh.stdout, fresh.stderr) and "nope" in forked.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_a_forked_run_as_a_new_process(tmp_path: Path, sig: int) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    codes, errors = [], []
    for start in (warm.Popen, subprocess.Popen):
        proc = start([sys.executable, str(script)], cwd=tmp_path, env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout.readline() == "ready\n"
        assert os.getpgid(proc.pid) == proc.pid  # its own session and group
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        codes.append(proc.returncode)
        errors.append(err.strip().splitlines()[-1:] if err.strip() else [])
    assert codes[0] == codes[1] == -sig
    assert errors[0] == errors[1] == (["KeyboardInterrupt"] if sig == signal.SIGINT else [])


def test_a_timeout_kills_the_forked_run(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, str(script)], cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, timeout=2)
