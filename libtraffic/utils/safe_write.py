"""Writing files so that a reader never sees a half-written one: temporary file, then rename."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def write_atomically(path: Path, chunks: Iterable[bytes | np.ndarray]) -> None:
    """Write ``chunks`` to a temporary file next to ``path``, then rename it to ``path``.

    A crash, a full disk or a Ctrl-C leaves ``path`` as it was (absent or the previous version),
    never truncated. The temporary name is unique, so concurrent writers never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, content: str | bytes) -> None:
    """Text (UTF-8) or bytes to ``path``, atomically."""
    write_atomically(path, [content.encode("utf-8") if isinstance(content, str) else content])


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
