"""LibCity's outputs on SYNTH_LA (tests/libcity_reference/): its checkpoints, predictions and logs."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).parent / "libcity_reference" / "SYNTH_LA"
MODELS = ("GRU", "LSTM", "STID", "GWNET", "STGCN", "DCRNN", "AGCRN", "MTGNN", "TGCN")
# sha256 of the SYNTH_LA files LibCity read: our generator must write exactly these.
SYNTH_LA_SHA256 = {
    "SYNTH_LA.geo": "307801c26a577537d9b919b99830029ac6da09ac4610f5daf13a2fc48fd11e51",
    "SYNTH_LA.rel": "13fd861bd3a1cff779db29951fe696fe013e594c4a4ff5a50439a87a9c77b571",
    "config.json": "a2431ce3e21d243650ff6337bbab0ed5021ab45c009db38ae44db1a5ef96fd5e",
    "SYNTH_LA.dyna": "00e03b35cc2c7da42598e57060bd6033e0c00afe224c28456bd8eff274385fb6",
}


def checkpoint_bytes(model: str) -> bytes:
    """LibCity's <model>_SYNTH_LA.m, byte for byte (gunzipped; AGCRN's pieces joined first)."""
    folder = REFERENCE / model
    pieces = sorted(folder.glob(f"{model}_SYNTH_LA.m.gz.part*")) or [folder / f"{model}_SYNTH_LA.m.gz"]
    return gzip.decompress(b"".join(p.read_bytes() for p in pieces))


def write_checkpoint(model: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(checkpoint_bytes(model))
    return path


def predictions(model: str) -> tuple[np.ndarray, np.ndarray]:
    """LibCity's (prediction, truth) for the first 200 test samples, [200, 12, 20, 1] in mph."""
    with np.load(REFERENCE / model / "predictions.npz") as data:
        return data["prediction"], data["truth"]


def log_text(model: str) -> str:
    return (REFERENCE / model / "log.txt").read_text()


def parameter_count(model: str) -> int:
    """'Total parameter numbers: N' from LibCity's log."""
    return int(re.search(r"Total parameter numbers: (\d+)", log_text(model)).group(1))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
