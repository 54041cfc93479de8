"""The settings of a tuning experiment, stored when it starts and checked when it is resumed.

``libtraffic/cache/<exp_id>/hyper_tune_experiment.json`` holds the command line and everything
that decides what the experiment runs. Ray's ``Tuner.restore`` keeps the stored search
algorithm, scheduler, search space, number of samples, concurrency limit and time budget, while
the trials it starts after a resume get this run's fixed values and resources; so a resume whose
settings differ would silently mix two experiments. It is refused, naming each difference.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libtraffic.config import ConfigParser
from libtraffic.results import SETTINGS_FILE, read_settings
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.safe_write import write_json
# Settings a resume must repeat (the search space is compared by content, not by file path).
COMPARED = ("task", "model", "dataset", "space", "search_alg", "scheduler", "num_samples", "max_concurrent",
            "cpu_per_trial", "gpu_per_trial", "seed", "time_budget_s", "metric", "fixed")
# Fixed config keys that change neither the trials nor their results.
RESUME_MAY_CHANGE = frozenset({"log_level"})
# Config keys recorded on their own (or not at all) rather than in "fixed".
_NOT_FIXED = {"task", "model", "dataset", "exp_id", "seed", "hyper_tune"}


def settings_file(exp_id: str | int) -> Path:
    return paths.experiment_dir(exp_id) / SETTINGS_FILE


def fixed_values(config: ConfigParser, cli_keys: set[str]) -> dict[str, Any]:
    """Config keys the user set on the command line or in --config_file, with their typed values."""
    return {k: config[k] for k in sorted(config)
            if k not in _NOT_FIXED and (k in cli_keys or config.sources[k].startswith("config file"))}


def experiment_settings(config: ConfigParser, space_path: Path, space: Mapping[str, Any], options: Mapping[str, Any],
                        cli_keys: set[str]) -> dict[str, Any]:
    """The record written at the start of a tuning run (see the module docstring).

    ``options``: search_alg, scheduler, num_samples, max_concurrent, cpu_per_trial, gpu_per_trial
    (resolved), time_budget_s, metric.
    """
    argv = list(sys.argv)
    settings = {
        "command": shlex.join(["python", *argv]), "argv": argv,
        "task": config["task"], "model": config["model"], "dataset": config["dataset"], "exp_id": config["exp_id"],
        "space_file": str(space_path), "space": dict(space), **dict(options), "seed": config["seed"],
        "fixed": fixed_values(config, cli_keys),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return json.loads(json.dumps(settings))  # the form it has once stored (lists, not tuples)


def write_settings(settings: Mapping[str, Any]) -> Path:
    path = settings_file(settings["exp_id"])
    write_json(path, dict(settings))
    return path


def resume_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per setting that differs between the stored experiment and this command."""
    lines = []
    for key in COMPARED:
        if key == "fixed":
            old_fixed, new_fixed = stored.get("fixed", {}), new["fixed"]
            for name in sorted((set(old_fixed) | set(new_fixed)) - RESUME_MAY_CHANGE):
                if old_fixed.get(name, "(not set)") != new_fixed.get(name, "(not set)"):
                    lines.append(f"--{name}: stored {_shown(old_fixed, name)}, now {_shown(new_fixed, name)}")
        elif key == "space":
            if stored.get("space") != new["space"]:
                lines.append(f"search space: stored {json.dumps(stored.get('space'))} (from {stored.get('space_file')}), "
                             f"now {json.dumps(new['space'])} (from {new['space_file']})")
        elif stored.get(key) != new[key]:
            lines.append(f"--{key}: stored {json.dumps(stored.get(key))}, now {json.dumps(new[key])}")
    return lines


def _shown(values: Mapping[str, Any], name: str) -> str:
    return json.dumps(values[name]) if name in values else "(not set)"


def check_resume(new: Mapping[str, Any]) -> bool:
    """Refuse a resume whose settings differ from the stored ones; False if this machine has no settings
    file of the experiment (it started on another machine, with a shared --storage_path)."""
    path = settings_file(new["exp_id"])
    stored = read_settings(path.parent)
    if stored is None:
        return False
    differences = resume_differences(stored, new)
    if differences:
        raise LibTrafficError(
            f"--resume of experiment {new['exp_id']} with other settings than it started with ({path}):\n  "
            + "\n  ".join(differences)
            + "\nRay continues the experiment with its stored search and schedule, so changed settings would mix "
            "two experiments. Resume with the original command plus --resume:\n    "
            + _resume_command(stored)
            + "\nor start a new experiment with a new --exp_id."
        )
    return True


def _resume_command(stored: Mapping[str, Any]) -> str:
    argv = [a for a in stored.get("argv", []) if a not in ("--resume", "--dry_run")]
    extra = ["--resume"] + ([] if any(a.startswith("--exp_id") for a in argv) else ["--exp_id", str(stored["exp_id"])])
    return shlex.join(["python", *argv, *extra])
