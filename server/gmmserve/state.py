"""The state document: format, fingerprint, validation and atomic files.

Loader state files and server snapshots share this one format, a JSON
object::

    {
      "format_version": 1,
      "fingerprint": "<sha256 hex of config and seed>",
      "config": {... resolved data config ...},
      "param_generator_state": {"bit_generator": "Philox", "stream": "parameters",
                                "seed": 197646, "loader_id": "train"},
      "data_generator_state":  {"bit_generator": "Philox", "stream": "points",
                                "seed": 197646, "loader_id": "train"},
      "loader_state": {"current_epoch": 2, "current_batch": 5,
                       "batches_per_epoch": 63, "loader_id": "train",
                       "fixed_data": false, "batch_size": 16,
                       "num_samples": 1000, "seed": 197646, "base_seed": 42}
    }

``current_batch`` counts the batches already returned in ``current_epoch``.
Seeds are integers in [0, 2^53 - 1], exact in every JSON reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from gmmserve.config import MAX_SEED, canonical_json
from gmmserve.errors import StateError, StateMismatchError

__all__ = [
    "FORMAT_VERSION",
    "atomic_write_json",
    "config_seed_fingerprint",
    "read_state_file",
    "validate_state",
]

FORMAT_VERSION = 1
# State documents larger than this are rejected before parsing.
MAX_STATE_BYTES = 1024 * 1024


def config_seed_fingerprint(resolved_config: dict[str, Any], seed: int) -> str:
    """Return the SHA-256 hex digest of the resolved config and the seed."""
    text = canonical_json({"config": resolved_config, "seed": seed})
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_json(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path`` so a crash leaves the old file.

    The text goes to a temporary file in the same directory, is flushed and
    fsynced, and then replaces ``path`` by rename. The directory is fsynced
    too, so the rename itself survives a power loss.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, sort_keys=True, allow_nan=False)
    temporary = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    # Mode 0666 under the umask, like open() gives a new file; a file being
    # replaced keeps its own mode.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            if target.exists():
                os.fchmod(stream.fileno(), target.stat().st_mode & 0o777)
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_state_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse a state file; raise StateError when it is not JSON."""
    target = Path(path)
    size = target.stat().st_size
    if size > MAX_STATE_BYTES:
        raise StateError(
            f"state file {str(target)!r} has {size} bytes; the limit is {MAX_STATE_BYTES}"
        )
    return parse_state_json(target.read_text(encoding="utf-8"), source=str(target))


def _reject_constant(name: str) -> None:
    raise StateError(f"state documents must not contain {name}")


def parse_state_json(text: str, source: str = "state document") -> dict[str, Any]:
    """Parse state JSON text, rejecting NaN and Infinity."""
    if len(text) > MAX_STATE_BYTES:
        raise StateError(
            f"{source} has {len(text)} characters; the limit is {MAX_STATE_BYTES}"
        )
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise StateError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise StateError(f"{source} must be a JSON object, got {type(document).__name__}")
    return document


def _require_int(section: dict[str, Any], key: str, low: int, high: float, where: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(f"{where}.{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise StateError(f"{where}.{key} is {value}; accepted range is [{low}, {high}]")
    return value


def validate_state(document: dict[str, Any]) -> dict[str, Any]:
    """Check a state document's structure and return its loader_state.

    Raises
    ------
    StateMismatchError
        When the format version is not FORMAT_VERSION.
    StateError
        When a section or field is missing or out of range.
    """
    if "format_version" not in document:
        raise StateError(
            "state document has no 'format_version'; it is not a gmmserve state "
            "(expected the JSON that GMMDataLoader.save_state writes)"
        )
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise StateMismatchError(
            f"state format_version is {version!r}; this gmmserve reads version "
            f"{FORMAT_VERSION}"
        )
    for key in ("fingerprint", "config", "loader_state"):
        if key not in document:
            raise StateError(f"state document has no {key!r} section")
    if not isinstance(document["fingerprint"], str):
        raise StateError("state fingerprint must be a string")
    loader = document["loader_state"]
    if not isinstance(loader, dict):
        raise StateError("loader_state must be an object")
    _require_int(loader, "current_epoch", 0, 2**53 - 1, "loader_state")
    batches = _require_int(loader, "batches_per_epoch", 1, 2**53 - 1, "loader_state")
    _require_int(loader, "current_batch", 0, batches, "loader_state")
    _require_int(loader, "seed", 0, MAX_SEED, "loader_state")
    if not isinstance(loader.get("loader_id"), str):
        raise StateError(f"loader_state.loader_id must be a string, got {loader.get('loader_id')!r}")
    if not isinstance(loader.get("fixed_data"), bool):
        raise StateError(
            f"loader_state.fixed_data must be true or false, got {loader.get('fixed_data')!r}"
        )
    return loader


def check_fingerprint(document: dict[str, Any], expected: str) -> None:
    """Raise StateMismatchError when the document is of another config or seed."""
    found = document.get("fingerprint")
    if found != expected:
        raise StateMismatchError(
            f"state fingerprint {found!r} does not match this loader's {expected!r}: "
            "the state was saved with another config or seed"
        )

