"""README.md and docs/ stay true (issue 17): every link resolves, and every command a reader can
run here runs as written on tiny data (a 20-sensor, 2-day METR_LA stands in for the real one;
LibCity's checkpoint files come from tests/libcity_reference/). hyper_tune.py commands run with
--dry_run true appended (the full searches are tested in test_tuning.py / test_tune_models.py);
trainings that are not resumes or evaluations get --max_epoch 1 appended. Commands of other tools
(pip, ray, bench/, pytest) and those needing files a user brings are listed in SKIPPED by their
start, so a new kind of command is noticed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import libcity_ref
from conftest import REPO_ROOT
from libtraffic.data.synthetic import write_synthetic_dataset

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Commands not run here, by their start: other tools, and files a user brings (original METR_LA /
# PEMS files, a LibCity installation, a cluster, experiments with placeholder ids).
SKIPPED = ("pip ", "ray start", "export ", "python bench/", "python -m pytest", "python -c ", "mkdir ",
           "cp /path/to/libcity", "cp STID_METR_LA.m", "python -m libtraffic.data.convert",
           "python -m libtraffic.report --exp_id", "python -m libtraffic.data.synthetic --dataset METR_LA")
NEEDS_TUNED = "libtraffic/cache/13439/"  # a tuned experiment's best config: hyper_tune writes it (test_tuning.py)


def _code_lines(text: str) -> list[str]:
    """Lines of indented (4 spaces) and fenced code blocks, with continuations joined."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            lines.append(line.strip())
    joined, buffer = [], ""
    for line in lines:
        buffer += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(buffer)
            buffer = ""
    return joined


def commands() -> list[tuple[str, str]]:
    """(page name, command) for every shell command in the pages (a && b gives a and b)."""
    found = []
    for page in PAGES:
        for line in _code_lines(page.read_text()):
            line = re.sub(r"\s+#.*$", "", line)
            for part in line.split("&&"):
                part = part.strip()
                if re.match(r"(python|pip|ray|mkdir|cp|export) ", part):
                    found.append((page.name, part))
    return found


def test_every_link_resolves() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"https?://", target):
                continue
            assert (page.parent / target).exists(), f"{page.name}: link to {target}"


def test_readme_is_short_and_starts_with_the_commands() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_screen = "\n".join(text.splitlines()[:30])
    assert "pip install -r requirements.txt && python hyper_tune.py" in first_screen
    assert "python -m pytest -q" in first_screen


def test_the_commands_found_are_the_expected_kinds() -> None:
    found = commands()
    assert len(found) >= 20
    runnable = [c for _, c in found if not c.startswith(SKIPPED)]
    assert all(c.startswith(("python run_model.py", "python hyper_tune.py", "cp ")) for c in runnable), runnable


@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: a tiny METR_LA, the space files, and the experiments the docs' resume and
    evaluation commands name (41237: STID trained 8 epochs on SYNTH_LA; from_libcity: LibCity's STID)."""
    root = tmp_path_factory.mktemp("docs")
    write_synthetic_dataset(root / "raw_data", "METR_LA", num_nodes=20, num_days=2, seed=1)
    for name in ("sample_space_file.json", "hyper_example.json"):
        (root / name).write_text((REPO_ROOT / name).read_text())
    (root / "spaces").mkdir()
    for space in (REPO_ROOT / "spaces").glob("*.json"):
        (root / "spaces" / space.name).write_text(space.read_text())
    trained = _run(root, "python run_model.py --model STID --dataset SYNTH_LA --exp_id 41237 --max_epoch 8")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model_cache = root / "libtraffic/cache/from_libcity/model_cache"
    libcity_ref.write_checkpoint("STID", model_cache / "STID_METR_LA.m")
    weights, optimizer = torch.load(model_cache / "STID_METR_LA.m", weights_only=True)
    torch.save({"model_state_dict": weights, "optimizer_state_dict": optimizer, "epoch": 29},
               model_cache / "STID_METR_LA_epoch29.tar")
    return root


def _run(cwd: Path, command: str) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "python"
    script = argv[1]
    argv = [sys.executable, *([str(REPO_ROOT / script)] if script.endswith(".py") else [script]), *argv[2:]]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)


RUNNABLE = sorted({c for _, c in commands() if c.startswith(("python run_model.py", "python hyper_tune.py"))})


@pytest.mark.parametrize("command", RUNNABLE)
def test_command_runs_as_written(docs_workdir: Path, command: str) -> None:
    if "--gpu_per_trial 0.25" in command and not torch.cuda.is_available():
        pytest.skip("packs trials on a GPU; this machine has none")
    if NEEDS_TUNED in command:
        pytest.skip("needs a tuned experiment; hyper_tune's best config is rerun in test_tuning.py")
    run = command
    if command.startswith("python hyper_tune.py"):
        run += " --dry_run true"
    elif "--epoch " in command and "--max_epoch" not in command:
        resumed = int(re.search(r"--epoch (\d+)", command).group(1))
        run += f" --max_epoch {resumed + 2}"  # not the model's default 100 epochs
    elif "--train false" not in command and "--epoch " not in command:
        run += " --max_epoch 1"
    result = _run(docs_workdir, run)
    assert result.returncode == 0, f"{run}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
