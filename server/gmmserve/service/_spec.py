"""Validation of session specs and the loaders built from session rows."""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

from gmmserve_proto.v1 import gmmserve_pb2 as pb

from gmmserve.config import MAX_SEED, DataConfig, Limits, experiment_config, load_config
from gmmserve.errors import ConfigError
from gmmserve.generator import derive_seed
from gmmserve.loader import GMMDataLoader
from gmmserve.state import config_seed_fingerprint
from gmmserve.store import SessionRecord, loads_finite

__all__ = [
    "MAX_BASE_SEED",
    "MAX_CONFIG_JSON_CHARS",
    "MAX_ID_LENGTH",
    "MAX_LABEL_LENGTH",
    "build_loader",
    "check_id",
    "check_label",
    "check_session_id",
    "check_snapshot_id",
    "new_session_record",
    "new_snapshot_id",
    "normalize_spec",
    "parse_json_object",
    "shown",
]

_LOGGER = logging.getLogger(__name__)

MAX_ID_LENGTH = 128
# GMMDataLoader adds an offset below 10^6 to the base seed, and the sum must
# stay an exact JSON number.
MAX_BASE_SEED = MAX_SEED - 1_000_000
DEFAULT_LOADER_ID = "default"
MAX_LABEL_LENGTH = 256
MAX_CONFIG_JSON_CHARS = 64 * 1024
MAX_EXPERIMENT_NAME_LENGTH = 128
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]+")
# Session and snapshot ids are a prefix and secrets.token_urlsafe(16): 22
# characters of the URL-safe base64 alphabet, never '.', '/' or '%'.
_SESSION_PREFIX = "ses_"
_SNAPSHOT_PREFIX = "snap_"
_TOKEN_CHARS = 22
_SESSION_ID_PATTERN = re.compile(_SESSION_PREFIX + r"[A-Za-z0-9_-]{22}")
_SNAPSHOT_ID_PATTERN = re.compile(_SNAPSHOT_PREFIX + r"[A-Za-z0-9_-]{22}")
_SHOWN_CHARS = 64


def shown(value: str) -> str:
    """Return ``repr(value)`` cut to about 64 characters, for error messages."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"


def check_id(field: str, value: str) -> str:
    """Return ``value`` when it is a well-formed client-chosen id.

    Raises
    ------
    ConfigError
        When ``value`` is empty, too long or has other characters than
        A-Z, a-z, 0-9, '_', '-', '.' and ':'.
    """
    if not value:
        raise ConfigError(field, "is required; pass the id the server returned")
    if len(value) > MAX_ID_LENGTH or _ID_PATTERN.fullmatch(value) is None:
        raise ConfigError(
            field,
            f"{shown(value)} is not a valid id; ids are 1 to "
            f"{MAX_ID_LENGTH} characters from A-Z, a-z, 0-9, '_', '-', '.' and ':'",
        )
    return value


def _check_server_id(
    field: str, value: str, pattern: re.Pattern[str], prefix: str
) -> str:
    if not value:
        raise ConfigError(field, "is required; pass the id the server returned")
    if pattern.fullmatch(value) is None:
        raise ConfigError(
            field,
            f"{shown(value)} is not a valid id; the server issues ids of "
            f"{prefix!r} and {_TOKEN_CHARS} characters from A-Z, a-z, 0-9, "
            "'_' and '-'",
        )
    return value


def check_session_id(field: str, value: str) -> str:
    """Return ``value`` when it has the form of a server-issued session id.

    Every request's session id passes this check before any store access.

    Raises
    ------
    ConfigError
        Naming the field and the accepted form.
    """
    return _check_server_id(field, value, _SESSION_ID_PATTERN, _SESSION_PREFIX)


def check_snapshot_id(field: str, value: str) -> str:
    """Return ``value`` when it has the form of a server-issued snapshot id."""
    return _check_server_id(field, value, _SNAPSHOT_ID_PATTERN, _SNAPSHOT_PREFIX)


def _check_text(field: str, value: str, low: int, high: int) -> str:
    """Check a free-text field's length and reject control characters."""
    if not low <= len(value) <= high:
        raise ConfigError(
            field,
            f"{shown(value)} has {len(value)} characters; accepted length is "
            f"{low} to {high}",
        )
    if not value.isprintable():
        raise ConfigError(
            field,
            f"{shown(value)} contains control characters; accepted are printable "
            "characters only",
        )
    return value


def check_label(value: str) -> str:
    """Return a snapshot label of 0 to 256 printable characters."""
    return _check_text("label", value, 0, MAX_LABEL_LENGTH)


def parse_json_object(field: str, text: str, max_chars: int) -> dict[str, Any]:
    """Parse JSON text that must be an object of finite numbers.

    Raises
    ------
    ConfigError
        When the text is too long, not JSON, nested too deep, not an object,
        or contains NaN, an infinity, a float that overflows, or an integer
        of more digits than Python converts.
    """
    if len(text) > max_chars:
        raise ConfigError(
            field,
            f"has {len(text)} characters; accepted length is 1 to {max_chars}",
        )
    try:
        document = loads_finite(text)
    except RecursionError:
        raise ConfigError(
            field,
            "is nested too deeply for Python's JSON parser (its recursion limit); "
            "configs and state documents nest only a few levels",
        ) from None
    except ValueError as error:
        # JSONDecodeError is a ValueError, as are the non-finite number and
        # long integer errors.
        raise ConfigError(
            field, f"{shown(text)} is not valid JSON of finite numbers: {error}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            field,
            f"must be a JSON object of config keys, got {type(document).__name__} "
            f"{shown(text)}",
        )
    return document


@dataclass(frozen=True)
class NormalizedSpec:
    """A validated session spec with defaults filled in.

    Attributes
    ----------
    fields : dict
        The spec's fields as JSON values; ``seed`` is absent when not given.
    config : DataConfig
    """

    fields: dict[str, Any]
    config: DataConfig

    def to_json(self) -> str:
        return json.dumps(self.fields, sort_keys=True, separators=(",", ":"))


def _load_quietly(raw: dict[str, Any] | str, limits: Limits) -> DataConfig:
    # Bundled configs carry legacy keys, and their warning would repeat on
    # every session; the keys change nothing.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(raw, limits)
    for warning in caught:
        _LOGGER.debug("config warning: %s", warning.message)
    return config


def normalize_spec(spec: pb.SessionSpec, limits: Limits) -> NormalizedSpec:
    """Validate a SessionSpec and load its config.

    Raises
    ------
    ConfigError
        Naming the field, the value given and the accepted range.
    """
    fields: dict[str, Any] = {}
    which = spec.WhichOneof("config")
    if which == "experiment":
        _check_text("spec.experiment", spec.experiment, 1, MAX_EXPERIMENT_NAME_LENGTH)
        fields["experiment"] = spec.experiment
        config = _load_quietly(experiment_config(spec.experiment), limits)
    elif which == "config_json":
        document = parse_json_object(
            "spec.config_json", spec.config_json, MAX_CONFIG_JSON_CHARS
        )
        fields["config_json"] = spec.config_json
        config = _load_quietly(document, limits)
    else:
        raise ConfigError("spec.config", "is missing; set config_json or experiment")

    if spec.HasField("seed"):
        if spec.seed > MAX_BASE_SEED:
            raise ConfigError(
                "spec.seed",
                f"{spec.seed} is out of range; accepted range is [0, {MAX_BASE_SEED}]",
            )
        fields["seed"] = spec.seed
    loader_id = _check_text(
        "spec.loader_id", spec.loader_id or DEFAULT_LOADER_ID, 1, MAX_ID_LENGTH
    )
    fields["loader_id"] = loader_id
    if not 1 <= spec.batch_size <= limits.max_batch_size:
        raise ConfigError(
            "spec.batch_size",
            f"{spec.batch_size} is out of range; accepted range is [1, {limits.max_batch_size}]",
        )
    fields["batch_size"] = spec.batch_size
    if not 1 <= spec.samples_per_epoch <= MAX_SEED:
        raise ConfigError(
            "spec.samples_per_epoch",
            f"{spec.samples_per_epoch} is out of range; accepted range is [1, {MAX_SEED}]",
        )
    fields["samples_per_epoch"] = spec.samples_per_epoch
    fields["fixed_data"] = spec.fixed_data
    return NormalizedSpec(fields=fields, config=config)


def spec_message(spec_json: str) -> pb.SessionSpec:
    """Rebuild the SessionSpec message of a stored spec."""
    fields = json.loads(spec_json)
    return pb.SessionSpec(**fields)


def new_session_record(
    spec: NormalizedSpec, request_id: str | None, limits: Limits
) -> SessionRecord:
    """Build the row of a new session, choosing its seed when the spec has none.

    Raises
    ------
    ConfigError
        When a batch of this spec could exceed the element limit.
    """
    fields = spec.fields
    base_seed = fields.get("seed")
    seed = derive_seed(base_seed, fields["loader_id"], spec.config.model.random_seed)
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    batch_size = fields["batch_size"]
    now = time.time()
    record = SessionRecord(
        session_id=_SESSION_PREFIX + secrets.token_urlsafe(16),
        request_id=request_id,
        spec_json=spec.to_json(),
        seed=seed,
        base_seed=base_seed,
        resolved_config_json=spec.config.to_json(),
        fingerprint=config_seed_fingerprint(spec.config.resolved, seed),
        batches_per_epoch=math.ceil(fields["samples_per_epoch"] / batch_size),
        cursor=0,
        generation=0,
        created_at=now,
        updated_at=now,
    )
    # Building the loader once checks the batch element limit.
    build_loader(record, limits)
    return record


def new_snapshot_id() -> str:
    return _SNAPSHOT_PREFIX + secrets.token_urlsafe(16)


def build_loader(record: SessionRecord, limits: Limits) -> GMMDataLoader:
    """Build the loader of a session row, positioned at batch 0 of epoch 0.

    Raises
    ------
    ConfigError
        When the loader rejects the batch size or the batch element count.
    """
    fields = json.loads(record.spec_json)
    try:
        loader = GMMDataLoader(
            _load_quietly(json.loads(record.resolved_config_json), limits),  # type: ignore[arg-type]
            batch_size=fields["batch_size"],
            num_samples=fields["samples_per_epoch"],
            base_seed=record.base_seed,
            loader_id=fields["loader_id"],
            fixed_data=fields["fixed_data"],
            limits=limits,
            seed=record.seed,
        )
    except ValueError as error:
        raise ConfigError("spec.batch_size", str(error)) from None
    return loader
