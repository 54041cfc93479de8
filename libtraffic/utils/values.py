"""Small value conversions shared by the CLIs, the config and the results files."""

from __future__ import annotations

from typing import Any

#: Words accepted for true/false on the command line and in --key value pairs.
BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_bool(text: str) -> bool | None:
    """True/False for a word of BOOL_WORDS (any case), else None."""
    return BOOL_WORDS.get(text.lower())


def plain(value: Any) -> Any:
    """A NumPy (or torch) scalar as the plain Python number it holds; anything else unchanged.

    Searchers (HyperOpt, BayesOpt) and readers hand out NumPy scalars, which print as np.int64(7)
    and do not serialise to JSON."""
    if isinstance(value, (list, tuple, dict, str, bytes)) or not hasattr(value, "item"):
        return value
    try:
        return value.item()
    except (TypeError, ValueError):  # an array of several values stays as it is
        return value
