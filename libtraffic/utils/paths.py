"""Every file location a run uses, in one place (relative to the working directory, as LibCity).

All functions return absolute paths resolved against the current directory at call time, so
they can be computed once in the driver and handed to Ray trials, whose working directory differs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from libtraffic.utils.errors import LibTrafficError

# Set in Ray trial processes so that they resolve paths against the driver's directory.
ROOT_ENV = "LIBTRAFFIC_ROOT"

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = PACKAGE_DIR / "config"


def root() -> Path:
    """The working directory a run is anchored to (the driver's, inside tuning trials)."""
    return Path(os.environ.get(ROOT_ENV) or Path.cwd()).resolve()


# A name that becomes one folder or file-name part: no path separators, no leading dot.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_name(value: object, flag: str, what: str) -> str:
    """``value`` as a plain name (letters, digits, _ - and ., not starting with a dot), else an error.

    ``flag`` is the option that gave it (--exp_id), ``what`` says what the name is used for.
    """
    text = str(value)
    if not text:
        raise LibTrafficError(f"{flag} is empty: {what}.")
    if not _PLAIN_NAME.fullmatch(text):
        raise LibTrafficError(
            f"{flag} {text!r} is not a plain name: {what}. Use letters, digits, '_', '-' and '.' "
            "(not first), without '/' or '..'."
        )
    return text


def raw_data_dir(dataset: str, data_path: str = "") -> Path:
    """Folder with the dataset's atomic files: ./raw_data/<dataset>, or ``data_path`` when given
    (absolute, or relative to the working directory)."""
    check_name(dataset, "--dataset", "a dataset is a folder name under ./raw_data (to read files elsewhere, "
               "set data_path to their folder)")
    if data_path:
        return root() / Path(data_path).expanduser()
    return root() / "raw_data" / dataset


def make_dir(path: Path) -> Path:
    """mkdir -p ``path``; a folder that cannot be created (read-only working directory, a file in
    the way) is a user error saying where runs write and what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LibTrafficError(
            f"Cannot create the folder {path}: {err.strerror or err}. Runs write their log and results under "
            f"./libtraffic/ of the working directory ({root()}); run from a folder you can write to "
            "(and where no file named libtraffic is in the way)."
        ) from err
    return path


def log_dir() -> Path:
    return root() / "libtraffic" / "log"


def cache_dir() -> Path:
    return root() / "libtraffic" / "cache"


def experiment_dir(exp_id: str | int) -> Path:
    """./libtraffic/cache/<exp_id>: model_cache, evaluate_cache and TensorBoard files."""
    return cache_dir() / check_name(exp_id, "--exp_id", "it names the folder libtraffic/cache/<exp_id>")


def model_cache_file(exp_id: str | int, model: str, dataset: str) -> Path:
    return experiment_dir(exp_id) / "model_cache" / f"{model}_{dataset}.m"


def evaluate_cache_dir(exp_id: str | int) -> Path:
    return experiment_dir(exp_id) / "evaluate_cache"


def dataset_cache_dir() -> Path:
    return cache_dir() / "dataset_cache"


def hyper_tune_dir() -> Path:
    """Parent of Ray Tune experiment folders: ./libtraffic/cache/hyper_tune."""
    return cache_dir() / "hyper_tune"
