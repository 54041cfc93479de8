"""Progress you can see: a bar with batches/s and ETA on a terminal, nothing extra in logs and CI."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress_bar(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """``items`` with a tqdm bar on stderr when it is a terminal (removed when done); else ``items`` as they are."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, total=total, unit="batch", leave=False, dynamic_ncols=True)


def duration(seconds: float) -> str:
    """'45 s', '12.5 min', '3.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
