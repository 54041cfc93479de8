"""Reading user JSON files with errors that point at the line and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from libtraffic.utils.errors import LibTrafficError


def load_json(path: Path, what: str) -> Any:
    """Parse ``path``; a missing file or a syntax error becomes a LibTrafficError.

    ``what`` describes the file for the message ("config file", "dataset config").
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise LibTrafficError(f"The {what} {path} does not exist.") from err
    except OSError as err:
        raise LibTrafficError(f"Cannot read the {what} {path}: {err.strerror}.") from err
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is accepted
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise LibTrafficError(
            f"The {what} {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at line {line} cannot be decoded. "
            "JSON files must be UTF-8; save it again as UTF-8 (e.g. an accented letter written by a Latin-1 editor)."
        ) from err
    try:
        return json.loads(text)
    except RecursionError as err:
        raise LibTrafficError(f"The {what} {path} is nested too deeply to be read as JSON.") from err
    except json.JSONDecodeError as err:
        lines = text.splitlines()
        shown = lines[err.lineno - 1] if 0 < err.lineno <= len(lines) else ""
        pointer = " " * (err.colno - 1) + "^"
        raise LibTrafficError(
            f"The {what} {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}:\n"
            f"    {shown}\n    {pointer}\n"
            "Hint: JSON needs a comma between entries, double quotes around keys and strings, "
            "no trailing comma, and true/false/null in lower case."
        ) from err


def find_json_file(name: str, what: str, hint: str = "") -> Path:
    """Find a file named on the command line as ./NAME.json (like LibCity) or as a path.

    ``what`` names it in the error ("Config file"); ``hint`` is appended to the message.
    """
    candidates = [Path(name)] if name.endswith(".json") else [Path(name + ".json"), Path(name)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise LibTrafficError(
        f"{what} '{name}' not found: looked for {', '.join(str(c.resolve()) for c in candidates)}. "
        f"Give the file name without .json (found in the working directory) or a path to it.{hint}"
    )
