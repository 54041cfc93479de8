"""Every file location a run uses, in one place (relative to the working directory, as LibCity).

All functions return absolute paths resolved against the current directory at call time, so
they can be computed once in the driver and handed to Ray trials, whose working directory differs.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set in Ray trial processes so that they resolve paths against the driver's directory.
ROOT_ENV = "LIBTRAFFIC_ROOT"

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = PACKAGE_DIR / "config"


def root() -> Path:
    """The working directory a run is anchored to (the driver's, inside tuning trials)."""
    return Path(os.environ.get(ROOT_ENV) or Path.cwd()).resolve()


def raw_data_dir(dataset: str) -> Path:
    """Folder with the dataset's atomic files: ./raw_data/<dataset>."""
    return root() / "raw_data" / dataset


def log_dir() -> Path:
    return root() / "libtraffic" / "log"


def cache_dir() -> Path:
    return root() / "libtraffic" / "cache"


def experiment_dir(exp_id: str | int) -> Path:
    """./libtraffic/cache/<exp_id>: model_cache, evaluate_cache and TensorBoard files."""
    return cache_dir() / str(exp_id)


def model_cache_file(exp_id: str | int, model: str, dataset: str) -> Path:
    return experiment_dir(exp_id) / "model_cache" / f"{model}_{dataset}.m"


def evaluate_cache_dir(exp_id: str | int) -> Path:
    return experiment_dir(exp_id) / "evaluate_cache"


def dataset_cache_dir() -> Path:
    return cache_dir() / "dataset_cache"


def hyper_tune_dir() -> Path:
    """Parent of Ray Tune experiment folders: ./libtraffic/cache/hyper_tune."""
    return cache_dir() / "hyper_tune"
