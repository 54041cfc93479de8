"""Signatures of the Ray state files a resume unpickles, so that a --storage_path written by someone else
cannot run code on the machine that resumes from it.

Tuner.restore unpickles the experiment's tuner.pkl, its experiment_state-*.json (cloudpickled values
inside), the searcher's state (basic-variant-state-*.json, searcher-state-*.pkl) and the callbacks'
state (callback-states-*.pkl): whoever can write to the storage can put code there. hyper_tune signs
each of these files with an HMAC key that stays on this machine (libtraffic/cache/tune_signing.key,
mode 600) as Ray writes them, and a --resume verifies every one before Ray opens any: a file that is
unsigned, changed or damaged (a truncated state, an empty tuner.pkl) is refused with exit code 2.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from libtraffic.tune.session import storage_filesystem
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

KEY_FILE = "tune_signing.key"
#: The signatures of the state files in the staging folder Ray uploads (written there, uploaded with them).
STATE_SIGNATURES = "libtraffic-state-signatures.json"
#: The signature of tuner.pkl, which Ray writes straight to the storage when the Tuner is made.
TUNER_SIGNATURE = "libtraffic-tuner-signature.json"
_OURS = (STATE_SIGNATURES, TUNER_SIGNATURE)
KEPT_VERSIONS = 3  # signatures kept per state file (see sign_staging)


def key_path() -> Path:
    return paths.cache_dir() / KEY_FILE


def signing_key() -> bytes:
    """This machine's key (made on first use, readable by its owner only)."""
    path = key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    key = path.read_text().strip()
    if len(key) != 64:
        raise LibTrafficError(f"The signing key {path} is damaged (expected 64 hex digits). Delete it: a new one is "
                              "made, and experiments signed with the old one can no longer be resumed.")
    return bytes.fromhex(key)


def signature(key: bytes, name: str, content: bytes) -> str:
    return hmac.new(key, name.encode() + b"\0" + content, hashlib.sha256).hexdigest()


def unpickled_by_ray(name: str) -> bool:
    """Whether Ray reads ``name`` (a file directly in an experiment folder) on restore: its .pkl and .json
    files (the json ones hold pickles too), not ours."""
    return name.endswith((".pkl", ".json")) and name not in _OURS


def sign_staging(folder: str | Path) -> None:
    """Sign every state file in Ray's local staging folder (after Ray wrote them, before it uploads them).

    The signatures of a file's last KEPT_VERSIONS versions stay valid: an upload cut short (a process
    killed while Ray copies the folder) can leave a file and the signatures of different saves, all
    written here."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    key = signing_key()
    previous = _read_signatures((folder / STATE_SIGNATURES).read_bytes()) if (folder / STATE_SIGNATURES).is_file() \
        else {}
    signed = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and unpickled_by_ray(p.name) and p.name != "tuner.pkl":
            new = signature(key, p.name, p.read_bytes())
            signed[p.name] = [*[old for old in previous.get(p.name, []) if old != new], new][-KEPT_VERSIONS:]
    tmp = folder / f".{STATE_SIGNATURES}.tmp"
    tmp.write_text(json.dumps(signed, indent=1, sort_keys=True))
    os.replace(tmp, folder / STATE_SIGNATURES)


def _read_signatures(content: bytes) -> dict[str, list[str]]:
    """A signatures file's {file name: [signature, ...]}; {} for anything else (nothing then verifies)."""
    try:
        signed = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(signed, dict):
        return {}
    return {name: [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
            for name, value in signed.items()}


def _filesystem(storage: str, name: str):
    filesystem, root = storage_filesystem(storage)
    return filesystem, f"{root}/{name}"


def sign_tuner(storage: str, name: str) -> None:
    """Sign the tuner.pkl Ray wrote for experiment ``name`` under ``storage`` (a folder or a URI)."""
    filesystem, folder = _filesystem(storage, name)
    with filesystem.open_input_stream(f"{folder}/tuner.pkl") as handle:
        content = handle.readall()
    with filesystem.open_output_stream(f"{folder}/{TUNER_SIGNATURE}") as handle:
        handle.write(json.dumps({"tuner.pkl": signature(signing_key(), "tuner.pkl", content)}).encode())


def verify_experiment(storage: str, name: str) -> None:
    """Refuse (LibTrafficError) experiment ``name`` unless every file Ray would unpickle from it carries this
    machine's valid signature. Nothing of it is unpickled here."""
    import pyarrow.fs

    filesystem, folder = _filesystem(storage, name)
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    files = {info.base_name for info in infos if info.type == pyarrow.fs.FileType.File}

    def read(file: str) -> bytes:
        with filesystem.open_input_stream(f"{folder}/{file}") as handle:
            return handle.readall()

    signed = {}
    for ours in _OURS:
        signed |= _read_signatures(read(ours)) if ours in files else {}
    key = signing_key()
    for file in sorted(f for f in files if unpickled_by_ray(f)):
        actual = signature(key, file, read(file))
        if not any(hmac.compare_digest(expected, actual) for expected in signed.get(file, [])):
            why = "carries no signature" if file not in signed else "does not match its signature (changed or damaged)"
            raise LibTrafficError(
                f"--resume: {storage}/{name}/{file} {why}. Resuming makes Ray unpickle that file, which can run "
                f"any code, so only files this machine's hyper_tune.py wrote and signed (key {key_path()}) are "
                "loaded. Start a new experiment with a new --exp_id; to resume an experiment another machine "
                "wrote, copy that machine's key file here, if you trust it.")
