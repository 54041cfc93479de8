"""Checkpoint files: read safely, told apart (ours or LibCity's), checked against the run.

Ours is one self-describing dict (model, optimiser, scheduler, epoch, best loss and metric, config,
random states). LibCity's ``<MODEL>_<DATASET>.m`` is a tuple (model state_dict, optimizer
state_dict) and carries no config. Both are read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary Python objects, so the random states we save are kept as
tensors, lists and numbers.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from libtraffic.data.prepared import DATA_KEYS
from libtraffic.utils.errors import LibTrafficError

# What a libtraffic checkpoint dict must hold.
REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch", "best_val_loss", "best_epoch")
# Data settings whose change gives other test windows or scaling; data_path only says where the
# files are, so a moved dataset folder is no difference.
COMPARED_DATA_KEYS = tuple(k for k in DATA_KEYS if k != "data_path")
_UNREADABLE = (EOFError, OSError, RuntimeError, ValueError, TypeError, AttributeError, ImportError, IndexError,
               KeyError, UnicodeDecodeError, UnpicklingError)


def load_file(path: Path, map_location: torch.device | str, what: str, fix: str) -> Any:
    """The content of a checkpoint file, loaded weights-only.

    ``what`` says what the file is for and ``fix`` what to do; both end up in the error of an
    empty, truncated, foreign or unsafe file.
    """
    try:
        with warnings.catch_warnings():  # a plain pickle is refused below; torch's hint about it is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except _UNREADABLE as err:
        unsafe = _unsafe_globals(path) if isinstance(err, UnpicklingError) else []
        if unsafe:
            raise LibTrafficError(
                f"{path} ({what}) is not a checkpoint we can load safely: it holds Python objects "
                f"({', '.join(unsafe[:3])}{', ...' if len(unsafe) > 3 else ''}) that only unpickling arbitrary code "
                "could restore, and checkpoints are loaded as weights only (torch.load weights_only=True). "
                f"Checkpoints of older libtraffic versions (NumPy random states) are such files too. {fix}"
            ) from err
        raise LibTrafficError(
            f"{path} ({what}) is not a readable checkpoint ({type(err).__name__}, {_first_line(err)}): it is "
            f"empty, truncated (a run interrupted while saving?) or not a libtraffic or LibCity checkpoint. {fix}"
        ) from err


def _unsafe_globals(path: Path) -> list[str]:
    """The Python names a torch.save file would need to import (none if it is not such a file)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except _UNREADABLE:
        return []


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else "no detail"


def is_ours(content: Any) -> bool:
    return (isinstance(content, dict) and all(k in content for k in REQUIRED_KEYS)
            and isinstance(content["model_state_dict"], dict))


def is_libcitys(content: Any) -> bool:
    """LibCity's saved model: (model state_dict, optimizer state_dict)."""
    return (isinstance(content, tuple) and len(content) == 2 and isinstance(content[0], dict)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in content[0].items()))


def is_libcitys_epoch(content: Any) -> bool:
    """LibCity's epoch checkpoint ``<MODEL>_<DATASET>_epoch<K>.tar``: a dict of the model's and the
    optimiser's state_dict and the epoch, and nothing of ours (no best epoch, scheduler or config)."""
    return (isinstance(content, dict) and not is_ours(content)
            and {"model_state_dict", "optimizer_state_dict", "epoch"} <= set(content)
            and isinstance(content["model_state_dict"], dict) and isinstance(content["epoch"], int)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in content["model_state_dict"].items()))


def describe(content: Any) -> str:
    """'a dict with keys a, b, c, d', 'a list', ... for messages."""
    name = type(content).__name__
    if isinstance(content, dict):
        return f"a {name} with keys {', '.join(map(str, list(content)[:4]))}"
    return f"a {name}"


def weight_mismatches(model: nn.Module, weights: Mapping[str, Any]) -> list[str]:
    """Every difference between ``weights`` and the model's state_dict, in the model's order:
    'missing weight k', 'unexpected weight k', or 'k: checkpoint shape [..] vs model shape [..]'."""
    own = model.state_dict()
    problems = []
    for key, value in own.items():
        if key not in weights:
            problems.append(f"missing weight {key} (model shape {list(value.shape)})")
        elif not isinstance(weights[key], Tensor) or weights[key].shape != value.shape:
            found = list(weights[key].shape) if isinstance(weights[key], Tensor) else type(weights[key]).__name__
            problems.append(f"{key}: checkpoint shape {found} vs model shape {list(value.shape)}")
    problems += [f"unexpected weight {key}" for key in weights if key not in own]
    return problems


def summary(problems: list[str]) -> str:
    """The first problem, and how many more there are."""
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more mismatched weight{'s' if more > 1 else ''})" if more else "")


def data_differences(saved: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(one line per data setting that differs between a checkpoint's config and this run's,
    the data settings the checkpoint did not record)."""
    lines, unrecorded = [], []
    for key in COMPARED_DATA_KEYS:
        if key not in saved:
            unrecorded.append(key)
        elif saved[key] != config[key]:
            lines.append(f"--{key}: checkpoint {saved[key]!r}, this run {config[key]!r}")
    return lines, unrecorded


# ----- random states, in forms weights_only loading accepts -----

def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random source training draws from: dropout (torch), teacher forcing (random), NumPy,
    and the training loader's shuffling generator; as tensors, lists and numbers."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "data_order": generator.get_state() if generator is not None else None}


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"].cpu())  # loaded onto the run's device with the weights
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if generator is not None and state.get("data_order") is not None:
        generator.set_state(state["data_order"].cpu())
