"""The package's shape (issue 14): Ray only in libtraffic/tune, no import cycles, one place that builds a run,
help that loads neither torch nor Ray."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, SUBPROCESS_ENV

PACKAGE = REPO_ROOT / "libtraffic"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (absolute names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_only_the_tune_package_imports_ray() -> None:
    outside = sorted(name for name, imports in MODULES.items()
                     if not name.startswith("libtraffic.tune") and any(i == "ray" or i.startswith("ray.") for i in imports))
    assert outside == []
    assert any(i.startswith("ray") for i in MODULES["libtraffic.tune.driver"])  # the check sees imports at all


def test_the_import_graph_has_no_cycles() -> None:
    graph = {name: {i for i in imports if i in MODULES and i != name} for name, imports in MODULES.items()}
    # A package's __init__ importing its own submodules is how a package exposes them, not a cycle.
    graph = {name: {i for i in deps if not i.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_components_are_built_in_one_place() -> None:
    """get_model / get_executor are called by build_run only (and defined in their registries)."""
    callers = sorted(name for name, path in ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
                     if any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None))
                            in ("get_model", "get_executor") for n in ast.walk(ast.parse(path.read_text()))))
    assert callers == ["libtraffic.pipeline.build"]


def test_help_loads_neither_torch_nor_ray() -> None:
    probe = ("import runpy, sys\n"
             "sys.argv = [sys.argv[1], '--help']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules))")
    for script, flag in (("hyper_tune.py", "--search_alg"), ("run_model.py", "--epoch")):
        out = subprocess.run([sys.executable, "-c", probe, str(REPO_ROOT / script)], capture_output=True, text=True,
                             env=SUBPROCESS_ENV, cwd=REPO_ROOT, timeout=60)
        assert flag in out.stdout and "SYNTH_LA" in out.stdout
        assert "LOADED []" in out.stdout, out.stdout[-300:]


def test_help_shows_every_flags_default() -> None:
    """Issue 17: each option of both CLIs says its default (argparse's help lists options as '  --flag ...')."""
    for script in ("hyper_tune.py", "run_model.py"):
        out = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], capture_output=True, text=True,
                             env=SUBPROCESS_ENV, cwd=REPO_ROOT, timeout=60).stdout
        blocks = re.split(r"\n(?=  --?\w)", out.split("options:", 1)[1])
        missing = [b.split()[0] for b in blocks if b.strip().startswith("--") and "default" not in b
                   and not b.strip().startswith("--help")]
        assert missing == [], f"{script}: {missing}"
