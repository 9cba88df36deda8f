"""Fuzz config loading, request validation and a loopback server.

Most inputs go in-process to ``gmmserve.config.load_config``, to the
service's spec and id validation and to the state-document checks that a
Restore runs. A share goes as real RPCs, through the client library, to a
server subprocess on 127.0.0.1. Every input is drawn from a seeded RNG, so
``--seed S --only N`` replays input N alone.

The properties checked, per input:

- a config, spec, id or state document is either accepted or rejected with
  ConfigError or StateError (INVALID_ARGUMENT over gRPC, or NOT_FOUND,
  FAILED_PRECONDITION, UNAUTHENTICATED or PERMISSION_DENIED where they
  apply), and a rejection's message names the field;
- nothing raises another exception, and no RPC ends with INTERNAL, UNKNOWN
  or a deadline;
- an accepted config loads again from its resolved form to the same
  fingerprint, and its batches hold finite values where the generator
  promises them;
- after the run, no NaN or Infinity is stored in the server's SQLite rows.

Usage::

    .venv/bin/python scripts/fuzz.py --inputs 100000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gmmserve.config import (
    DEFAULT_LIMITS,
    Limits,
    experiment_config,
    experiment_names,
    load_config,
    presets,
)
from gmmserve.errors import ConfigError, StateError
from gmmserve.loader import GMMDataLoader
from gmmserve.service._spec import check_id, normalize_spec
from gmmserve.state import parse_state_json
from gmmserve_proto.v1 import gmmserve_pb2 as pb

_LOGGER = logging.getLogger("fuzz")

# Small limits keep the batch generated for each accepted config cheap.
# They still admit every bundled preset and experiment config.
FUZZ_LIMITS = Limits(
    max_dim=8,
    max_clusters=16,
    max_points=5000,
    max_batch_size=64,
    max_batch_elements=200_000,
)

CONFIG_KEYS = (
    "dim",
    "cluster_params",
    "snr_db_params",
    "sample_count_distribution",
    "mi_factor_params",
    "mi_params",
    "alpha_dirichlet",
    "random_seed",
    "control_mode",
    "vary_parameter_in_batch",
    "vary_snr_in_batch",
    "estimate_mi",
    "vary_clusters_in_batch",
    "uniform_sample_count",
    "num_workers",
)
SPEC_KEYS = ("cluster_params", "snr_db_params", "sample_count_distribution")
SPEC_KEYS_ALL = (*SPEC_KEYS, "mi_factor_params", "mi_params")
DISTRIBUTION_FIELDS: dict[str, tuple[str, ...]] = {
    "fixed": ("value",),
    "uniform": ("min", "max"),
    "range": ("min", "max"),
    "normal": ("mean", "std"),
    "truncated_normal": ("mean", "std", "min", "max"),
    "truncated_lognormal": ("mean", "sigma", "min", "max"),
    "poisson": ("lam", "offset", "min", "max"),
    "truncated_poisson": ("lam", "min", "max", "offset"),
    "choice": ("options", "probs"),
}
# Status codes a rejected request may end with; OK is the other outcome.
CLEAN_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    }
)
# A rejection names its field first ("spec.batch_size: ..."), or, for a
# state document, the section or key it found wrong.
FIELD_PREFIX = re.compile(r"^[^\n]+?: ")
# Columns of the store that hold JSON text.
JSON_COLUMNS = frozenset({"spec_json", "resolved_config_json", "state_json"})
STATE_MESSAGE = re.compile(r"state|loader_state|fingerprint|format_version|stream")


class FuzzFailure(Exception):
    """A property violation, with what to print about it.

    Parameters
    ----------
    message : str
        What failed, on which value; cut to 600 characters.
    kind : str, optional
        A short label that groups findings of one cause in the report;
        by default the message's first 80 characters.
    """

    def __init__(self, message: str, kind: str = "") -> None:
        if len(message) > 600:
            message = message[:600] + "..."
        super().__init__(message)
        self.kind = kind or message[:80]


# Random JSON-like values.


def junk_number(rng: random.Random) -> Any:
    choice = rng.randrange(12)
    if choice == 0:
        return rng.choice([math.nan, math.inf, -math.inf])
    if choice == 1:
        return rng.choice([0, -1, 1, 2**31, 2**53, 2**63, 2**64, -(2**64), 10**30])
    if choice == 2:
        return rng.choice([1e308, -1e308, 5e-324, -0.0, 1e-300, 1e12, 1e12 + 1])
    if choice < 6:
        return rng.randint(-5, 300)
    if choice < 9:
        return rng.uniform(-200, 200)
    return round(rng.uniform(0, 20), rng.randrange(4))


def junk_string(rng: random.Random) -> str:
    choice = rng.randrange(10)
    if choice == 0:
        return ""
    if choice == 1:
        return "x" * rng.choice([129, 257, 5000, 70_000])
    if choice == 2:
        return rng.choice(list(DISTRIBUTION_FIELDS))
    if choice == 3:
        table = presets()[rng.choice(SPEC_KEYS)]
        return rng.choice(list(table))
    if choice == 4:
        return rng.choice(["snr", "mi", "mi_factor", "SNR", "auto"])
    if choice == 5:
        return "".join(
            chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(8))
        )
    if choice == 6:
        return rng.choice(["NaN", "Infinity", "1e999", "null", "{}", "\x00", " "])
    alphabet = "abcdefghijklmnopqrstuvwxyz_0123456789.-:"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20)))


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice < 4:
        return junk_number(rng)
    if choice < 7:
        return junk_string(rng)
    if choice < 9:
        return [junk_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {
        junk_string(rng): junk_value(rng, depth + 1) for _ in range(rng.randrange(4))
    }


def random_spec(rng: random.Random, key: str) -> dict[str, Any]:
    """Return a distribution spec with random, mostly well-typed parameters."""
    kind = rng.choice(list(DISTRIBUTION_FIELDS))
    spec: dict[str, Any] = {"type": kind}
    scale = {"cluster_params": 20, "sample_count_distribution": 500}.get(key, 120)
    for name in DISTRIBUTION_FIELDS[kind]:
        if rng.random() < 0.15:
            continue
        if name == "options":
            spec[name] = [rng.randint(-5, scale) for _ in range(rng.randrange(0, 5))]
        elif name == "probs":
            spec[name] = [rng.random() for _ in range(rng.randrange(0, 5))]
        elif name in ("std", "sigma", "lam"):
            spec[name] = rng.choice([rng.uniform(0, 5), rng.uniform(0, scale), 0])
        elif kind in ("range", "fixed", "poisson", "truncated_poisson"):
            spec[name] = rng.randint(-3, scale)
        else:
            spec[name] = rng.uniform(-scale, scale)
    if rng.random() < 0.2:
        spec[rng.choice(DISTRIBUTION_FIELDS[kind])] = junk_value(rng)
    return spec


def random_config(rng: random.Random) -> dict[str, Any]:
    """Return a config built key by key, plausible often enough to be accepted."""
    config: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        if rng.random() < 0.5:
            continue
        if key in SPEC_KEYS_ALL:
            config[key] = random_spec(rng, key)
        elif key == "dim":
            config[key] = rng.choice([1, 2, 3, rng.randint(-2, 12)])
        elif key == "alpha_dirichlet":
            config[key] = rng.choice([1.0, 1e-3, 1e6, rng.uniform(-1, 50)])
        elif key == "random_seed":
            config[key] = rng.choice([None, 0, 2**53 - 1, 2**53, rng.randrange(10**6)])
        elif key == "control_mode":
            config[key] = rng.choice(["snr", "mi", "mi_factor"])
        else:
            config[key] = rng.random() < 0.5
    if config.get("control_mode") == "mi" and rng.random() < 0.7:
        config["mi_params"] = {"type": "uniform", "min": 0.0, "max": rng.uniform(0, 3)}
    return config


def mutate_config(rng: random.Random, config: dict[str, Any]) -> dict[str, Any]:
    """Apply one to three random edits to a copy of ``config``."""
    mutated = json.loads(json.dumps(config))
    for _ in range(rng.randint(1, 3)):
        operation = rng.randrange(6)
        keys = list(mutated)
        if operation == 0 or not keys:
            mutated[rng.choice(CONFIG_KEYS)] = junk_value(rng)
        elif operation == 1:
            del mutated[rng.choice(keys)]
        elif operation == 2:
            mutated[junk_string(rng)] = junk_value(rng)
        elif operation == 3:
            key = rng.choice(SPEC_KEYS_ALL)
            mutated[key] = random_spec(rng, key)
        else:
            key = rng.choice(keys)
            value = mutated[key]
            if isinstance(value, str) and key in SPEC_KEYS:
                value = dict(presets()[key].get(value, {"type": value}))
            if isinstance(value, dict) and value:
                value[rng.choice([*value, junk_string(rng)])] = junk_value(rng)
                mutated[key] = value
            else:
                mutated[key] = junk_value(rng)
    return mutated


def random_config_input(rng: random.Random) -> dict[str, Any] | str:
    """Return a config as a dict or as text, from one of several sources."""
    source = rng.randrange(10)
    if source < 4:
        config: Any = mutate_config(
            rng, experiment_config(rng.choice(experiment_names()))
        )
    elif source < 8:
        config = random_config(rng)
    elif source == 8:
        config = junk_value(rng)
        if rng.random() < 0.7:
            config = {
                junk_string(rng): junk_value(rng) for _ in range(rng.randrange(4))
            }
    else:
        config = rng.choice(experiment_names() + [junk_string(rng)])
        return config if rng.random() < 0.5 else f"  {config}\n"
    if rng.random() < 0.3:
        text = json.dumps(config)
        if rng.random() < 0.3:
            text = text[: rng.randrange(len(text) + 1)]
        return text
    return config if isinstance(config, dict) else json.dumps(config)


# Properties of in-process calls.


def _names_known_field(field_name: str, raw: dict[str, Any] | str) -> bool:
    """Return whether a ConfigError field is a config key or a key of the input."""
    keys = {"config", "experiment", *CONFIG_KEYS}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            pass
    if isinstance(raw, dict):
        keys |= {str(key) for key in raw}
    return any(
        field_name == key or field_name.startswith((f"{key}.", f"{key}["))
        for key in keys
    )


def check_config(raw: dict[str, Any] | str, limits: Limits = FUZZ_LIMITS) -> bool:
    """Check load_config's properties on one input; return True when accepted.

    Raises
    ------
    FuzzFailure
        When a property does not hold.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = load_config(raw, limits)
    except ConfigError as error:
        if not _names_known_field(error.field, raw):
            raise FuzzFailure(
                f"ConfigError names field {error.field!r}, which is not in the "
                f"input: {error}"
            ) from None
        return False
    except Exception as error:
        raise FuzzFailure(f"load_config raised {_describe(error)}") from error
    check_accepted_config(config.resolved, limits)
    return True


def check_accepted_config(resolved: dict[str, Any], limits: Limits) -> None:
    """Check that a resolved config reloads unchanged and generates finite data."""
    try:
        text = json.dumps(resolved, allow_nan=False)
    except ValueError as error:
        raise FuzzFailure(
            f"resolved config contains a non-finite number: {error}"
        ) from None
    try:
        reloaded = load_config(json.loads(text), limits)
    except Exception as error:
        raise FuzzFailure(
            f"the resolved config does not load again: {_describe(error)}"
        ) from error
    if reloaded.resolved != resolved:
        raise FuzzFailure("loading the resolved config changes it")
    try:
        loader = GMMDataLoader(
            reloaded,
            batch_size=2,
            num_samples=5,
            base_seed=3,
            loader_id="fuzz",
            limits=limits,
        )
        batches = [
            loader.batch_at(0, 0),
            loader.batch_at(7, loader.batches_per_epoch - 1),
        ]
    except Exception as error:
        raise FuzzFailure(
            f"an accepted config failed to generate: {_describe(error)}"
        ) from error
    for batch in batches:
        check_batch_values(
            batch.arrays, reloaded.model.control_mode, reloaded.model.estimate_mi
        )


def check_batch_values(
    arrays: dict[str, np.ndarray], control_mode: str, estimate_mi: bool
) -> None:
    """Check the finite values that the generator documents for each array.

    data, centers, weights and noise_std are always finite. snr_db is
    finite, or -inf where the signal variance is zero. Labels index the
    centers. mi and mi_factor are finite unless the mode is SNR without
    ``estimate_mi``, and mi_target is finite in the MI modes.
    """
    for name in ("data", "centers", "weights", "noise_std"):
        if not np.isfinite(arrays[name]).all():
            raise FuzzFailure(f"batch array {name} contains a non-finite value")
    snr_db = arrays["snr_db"]
    if np.isnan(snr_db).any() or (snr_db == np.inf).any():
        raise FuzzFailure("batch array snr_db contains NaN or +inf")
    labels = arrays["labels"]
    clusters = arrays["centers"].shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= clusters):
        raise FuzzFailure(f"batch labels lie outside [0, {clusters - 1}]")
    names = []
    if control_mode != "snr" or estimate_mi:
        names += ["mi", "mi_factor"]
    if control_mode != "snr":
        names.append("mi_target")
    for name in names:
        if not np.isfinite(arrays[name]).all():
            raise FuzzFailure(
                f"batch array {name} contains a non-finite value in {control_mode} mode"
            )


def check_rejection_message(field_name: str, message: str) -> None:
    if not FIELD_PREFIX.match(message):
        raise FuzzFailure(
            f"{field_name}: the message does not start with a field: {message!r}"
        )


def check_spec(spec: pb.SessionSpec, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Check normalize_spec's properties on one spec; return True when accepted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            normalize_spec(spec, limits)
    except ConfigError as error:
        check_rejection_message("spec", str(error))
        return False
    except Exception as error:
        raise FuzzFailure(f"normalize_spec raised {_describe(error)}") from error
    return True


def check_id_value(field_name: str, value: str) -> bool:
    """Check check_id on one value; return True when accepted."""
    try:
        check_id(field_name, value)
    except ConfigError as error:
        if error.field != field_name:
            raise FuzzFailure(
                f"check_id names {error.field!r}, not {field_name!r}"
            ) from None
        return False
    except Exception as error:
        raise FuzzFailure(f"check_id raised {_describe(error)}") from error
    return True


def check_state(text: str, loader: GMMDataLoader) -> bool:
    """Restore a state document into a loader as the server's Restore does.

    Returns True when accepted. The server's own range check of the
    resulting cursor runs only over RPC.
    """
    fresh = GMMDataLoader(
        loader.config,
        batch_size=loader.batch_size,
        num_samples=loader.num_samples,
        base_seed=loader.base_seed,
        loader_id=loader.loader_id,
        limits=loader.limits,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh.restore_state(parse_state_json(text))
    except StateError as error:
        if not STATE_MESSAGE.search(str(error)):
            raise FuzzFailure(f"StateError names no field: {error}") from None
        return False
    except Exception as error:
        raise FuzzFailure(f"restore_state raised {_describe(error)}") from error
    return True


def random_state_text(rng: random.Random, document: dict[str, Any]) -> str:
    """Return a state document's text after random edits, or junk text."""
    choice = rng.randrange(8)
    if choice == 0:
        return json.dumps(junk_value(rng))
    if choice == 1:
        text = json.dumps(document)
        return text[: rng.randrange(len(text) + 1)]
    mutated = json.loads(json.dumps(document))
    for _ in range(rng.randint(1, 3)):
        section = rng.choice(list(mutated))
        value = mutated[section]
        if isinstance(value, dict) and value and rng.random() < 0.8:
            key = rng.choice(list(value))
            value[key] = _state_value(rng, key, value[key])
        elif rng.random() < 0.5:
            mutated[section] = junk_value(rng)
        else:
            del mutated[section]
    return json.dumps(mutated)


def _state_value(rng: random.Random, key: str, current: Any) -> Any:
    if (
        isinstance(current, int)
        and not isinstance(current, bool)
        and rng.random() < 0.6
    ):
        return rng.choice(
            [current + 1, current - 1, -1, 0, 2**53 - 1, 2**53, 2**64, current * 3]
        )
    return junk_value(rng)


def random_spec_message(rng: random.Random) -> pb.SessionSpec:
    spec = pb.SessionSpec()
    config = random_config_input(rng)
    if isinstance(config, str) and not config.lstrip().startswith("{"):
        spec.experiment = config
    elif rng.random() < 0.05:
        pass
    else:
        spec.config_json = config if isinstance(config, str) else json.dumps(config)
    if rng.random() < 0.7:
        spec.seed = rng.choice([0, 7, 2**53 - 1 - 10**6, 2**53, 2**64 - 1])
    spec.loader_id = rng.choice(["", "train", junk_string(rng)])
    spec.batch_size = rng.choice([0, 1, 2, 64, 65, 4096, 2**32 - 1])
    spec.samples_per_epoch = rng.choice([0, 1, 10, 2**53 - 1, 2**53, 2**64 - 1])
    spec.fixed_data = rng.random() < 0.5
    return spec


def _describe(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = (
        f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    )
    return f"{type(error).__name__}: {error}{where}"


# Real RPCs against a loopback server.


# The operator token of the fuzzed server, which only listens on 127.0.0.1.
FUZZ_OPERATOR_TOKEN = "fuzz-operator-token"

# (batch_size, samples_per_epoch) of the sessions whose state documents are
# mutated: a short epoch, and the longest epoch a spec accepts.
WIDE_AND_SMALL = ((3, 10), (1, 2**53 - 1))

SMALL_CONFIG: dict[str, Any] = {
    "dim": 2,
    "cluster_params": {"type": "range", "min": 1, "max": 4},
    "snr_db_params": {"type": "uniform", "min": -5.0, "max": 20.0},
    "sample_count_distribution": {"type": "range", "min": 1, "max": 30},
    "vary_parameter_in_batch": True,
}


def rpc_outcome(call: Callable[[], Any], name: str) -> bool:
    """Run one client call; return True on success, False on a clean rejection.

    Raises
    ------
    FuzzFailure
        When the call ends with another status, or INVALID_ARGUMENT with a
        message that names no field.
    """
    from gmmserve_client import GmmServeClientError

    try:
        call()
    except GmmServeClientError as error:
        code = error.code.name if error.code is not None else "client-side"
        if code not in CLEAN_CODES:
            raise FuzzFailure(
                f"{name} ended with {code}: {error.details}", kind=f"ended with {code}"
            ) from None
        if code == "INVALID_ARGUMENT" and not (
            FIELD_PREFIX.match(error.details) or STATE_MESSAGE.search(error.details)
        ):
            raise FuzzFailure(
                f"{name} INVALID_ARGUMENT names no field: {error.details!r}"
            ) from None
        return False
    return True


class RpcFuzzer:
    """Sends random requests to a server.

    Parameters
    ----------
    client : gmmserve_client.Client
        A client with the server's operator token, so requests on any
        session id reach the checks behind access control.
    anonymous : gmmserve_client.Client
        A client without the operator token, for a share of the requests.
    rng : random.Random
    operator_token : str
        The token ``client`` carries, for calls made without the client.
    """

    def __init__(
        self, client: Any, anonymous: Any, rng: random.Random, operator_token: str
    ) -> None:
        self.client = client
        self.anonymous = anonymous
        self.rng = rng
        self.operator_token = operator_token
        self.sessions = []
        self.states = []
        for batch_size, samples_per_epoch in WIDE_AND_SMALL:
            session = client.create_session(
                SMALL_CONFIG,
                seed=5,
                loader_id="fuzz",
                batch_size=batch_size,
                samples_per_epoch=samples_per_epoch,
            )
            self.sessions.append(session)
            self.snapshot = session.snapshot(label="fuzz")
            self.states.append(json.loads(self.snapshot.state_json))
        self.session = self.sessions[0]

    def random_request(self) -> tuple[str, Callable[[], Any]]:
        """Return the name of a random RPC and a call that sends it."""
        kind = self.rng.randrange(9)
        if kind == 6:
            return "StreamBatches (raw)", self._raw_stream()
        if kind == 7:
            return "ListSessions", self._list_sessions()
        if kind == 8:
            return "CloseSession", self._close_session()
        if kind == 0:
            return "CreateSession", self._create_session()
        if kind == 1:
            return "StreamBatches", self._stream()
        if kind == 2:
            return "Snapshot", self._snapshot()
        if kind == 3:
            return "Restore", self._restore()
        if kind == 4:
            return "GetSession", self._get_session()
        return "ListSnapshots", self._list_snapshots()

    def random_id(self) -> str:
        rng = self.rng
        return rng.choice(
            [
                self.session.id,
                self.snapshot.snapshot_id,
                "ses_" + junk_string(rng),
                junk_string(rng),
                "",
                "x" * 129,
            ]
        )

    def _create_session(self) -> Callable[[], Any]:
        rng = self.rng
        spec = random_spec_message(rng)
        if rng.random() < 0.5:
            # Settings the server accepts, so the config decides the outcome.
            spec.seed = rng.randrange(10**6)
            spec.batch_size = rng.randint(1, 8)
            spec.samples_per_epoch = rng.randint(1, 100)
            spec.loader_id = rng.choice(["", "train"])
        arguments: dict[str, Any] = {
            "loader_id": spec.loader_id,
            "batch_size": spec.batch_size,
            "samples_per_epoch": spec.samples_per_epoch,
            "fixed_data": spec.fixed_data,
        }
        if spec.HasField("seed"):
            arguments["seed"] = spec.seed
        if spec.WhichOneof("config") == "experiment":
            arguments["experiment"] = spec.experiment
        else:
            arguments["config"] = spec.config_json or "{}"
        if rng.random() < 0.3:
            arguments["request_id"] = rng.choice(
                ["fuzz-1", junk_string(rng), "x" * 129]
            )
        return lambda: self.client.create_session(**arguments)

    def _stream(self) -> Callable[[], Any]:
        rng = self.rng
        start = rng.choice(
            [None, 0, 9, 10, rng.randrange(10**6), 2**53 - 1, 2**53, 2**64 - 1]
        )
        window = rng.choice([1, 4, 64, 65, 4096, 2**32 - 1])
        count = rng.randint(1, 3)

        def stream() -> None:
            with self.session.batches(
                start=start, window=window, max_batches=count, timeout_s=30
            ) as batches:
                received = [batch.global_index for batch in batches]
            if start is not None and received != list(range(start, start + count)):
                raise FuzzFailure(f"stream from {start} returned batches {received}")

        return stream

    def _raw_stream(self) -> Callable[[], Any]:
        """Send StreamBatches messages that the client library never sends."""
        rng = self.rng
        start = pb.StreamStart(
            session_id=rng.choice([self.session.id, self.random_id()]),
            window=rng.choice([0, 1, 3, 64, 65, 2**32 - 1]),
            max_batches=rng.choice([0, 1, 2, 5, 2**53, 2**64 - 1]),
            takeover=rng.random() < 0.5,
        )
        if rng.random() < 0.7:
            start.start_global_index = rng.choice([0, 3, 2**53 - 1, 2**53, 2**64 - 1])
        requests = []
        if rng.random() < 0.9:
            requests.append(pb.StreamBatchesRequest(start=start))
        for _ in range(rng.randrange(4)):
            if rng.random() < 0.2:
                requests.append(pb.StreamBatchesRequest(start=start))
            else:
                index = rng.choice([0, 1, 2, 3, 4, 2**63, 2**64 - 1])
                requests.append(pb.StreamBatchesRequest(ack=pb.Ack(global_index=index)))
        if rng.random() < 0.1:
            requests.append(pb.StreamBatchesRequest())
        token = rng.choice([self.session.token, self.session.token, None, "junk"])
        return lambda: raw_stream_call(self.client.target, requests, token)

    def _list_sessions(self) -> Callable[[], Any]:
        import grpc
        from gmmserve_client._errors import from_rpc_error
        from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

        rng = self.rng
        request = pb.ListSessionsRequest(
            page_size=rng.choice([0, 1, 2, 1000, 1001, 2**32 - 1]),
            page_token=rng.choice(["", self.session.id, junk_string(rng)]),
        )
        token = rng.choice([self.operator_token, None, self.session.token])

        def list_page() -> None:
            with grpc.insecure_channel(self.client.target) as channel:
                stub: Any = pb_grpc.GmmServiceStub(channel)
                try:
                    stub.ListSessions(request, timeout=30, metadata=bearer(token))
                except grpc.RpcError as error:
                    raise from_rpc_error(error) from error

        return list_page

    def session_handle(self, session_id: str) -> Any:
        """Return a handle on ``session_id``, without a token one time in five."""
        from gmmserve_client import Session

        client = self.anonymous if self.rng.random() < 0.2 else self.client
        return Session(client, session_id)

    def _close_session(self) -> Callable[[], Any]:
        rng = self.rng
        if rng.random() < 0.3:
            # A session made for this call, so the shared ones stay open.
            session = self.client.create_session(SMALL_CONFIG, seed=1)
        else:
            session = self.session_handle(rng.choice(["", "x" * 129, junk_string(rng)]))
        return session.close

    def _snapshot(self) -> Callable[[], Any]:
        session = self.session_handle(self.random_id())
        label = self.rng.choice(["", "ok", "x" * 256, "x" * 257, junk_string(self.rng)])
        return lambda: session.snapshot(label=label)

    def _restore(self) -> Callable[[], Any]:
        rng = self.rng
        which = rng.randrange(len(self.sessions))
        session_id = rng.choice([self.sessions[which].id, self.random_id()])
        session = self.session_handle(session_id)
        if rng.random() < 0.3:
            snapshot_id = self.random_id()
            return lambda: session.restore(snapshot_id=snapshot_id)
        text = random_state_text(rng, self.states[which])
        return lambda: session.restore(state=text)

    def _get_session(self) -> Callable[[], Any]:
        session = self.session_handle(self.random_id())
        return session.info

    def _list_snapshots(self) -> Callable[[], Any]:
        session = self.session_handle(self.random_id())
        return session.list_snapshots


def bearer(token: str | None) -> list[tuple[str, str]]:
    """Return the call metadata that carries ``token``, or none for None."""
    return [] if token is None else [("authorization", f"Bearer {token}")]


def raw_stream_call(
    target: str, requests: list[pb.StreamBatchesRequest], token: str | None
) -> None:
    """Send ``requests`` on one StreamBatches call and read it to its end.

    The request stream half-closes after the last request. A failed call
    raises the client library's exception for its status code.
    """
    import grpc
    from gmmserve_client._errors import from_rpc_error
    from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub: Any = pb_grpc.GmmServiceStub(channel)
        call = stub.StreamBatches(iter(requests), timeout=30, metadata=bearer(token))
        try:
            responses = sum(1 for _ in call)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
    if responses > 64:
        raise FuzzFailure(f"a half-closed stream sent {responses} responses")


def scan_store(database: Path) -> list[str]:
    """Return a finding for each NaN or Infinity stored in the SQLite file."""
    findings = []
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        for table in ("sessions", "snapshots"):
            cursor = connection.execute(f"SELECT * FROM {table}")
            columns = [description[0] for description in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    problem = _non_finite(value, column in JSON_COLUMNS)
                    if problem:
                        findings.append(f"{table}.{column} of row {row[0]}: {problem}")
    finally:
        connection.close()
    return findings


def _non_finite(value: Any, is_json: bool) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {value}"
    if is_json and isinstance(value, str):
        try:
            json.loads(value, parse_constant=_raise_constant)
        except ValueError as error:
            return str(error)
        if re.search(r"(?<![\w\"])(NaN|-?Infinity)(?![\w\"])", value):
            return "a NaN or Infinity token"
    return None


def _raise_constant(name: str) -> Any:
    raise ValueError(f"JSON text contains {name}")


# The run.


def _state_loader(batch_size: int, samples_per_epoch: int) -> GMMDataLoader:
    loader = GMMDataLoader(
        SMALL_CONFIG,
        batch_size=batch_size,
        num_samples=samples_per_epoch,
        base_seed=5,
        loader_id="fuzz",
        limits=FUZZ_LIMITS,
    )
    # Batch 2 of epoch 0 is inside the index range of every loader here.
    loader.seek(0, 2)
    return loader


@dataclass(frozen=True)
class Finding:
    """A failed property: where, what, and the input number that reproduces it."""

    target: str
    message: str
    kind: str
    index: int | None = None
    description: str = ""


@dataclass
class Tally:
    """Counts of one run, and the findings with their input numbers."""

    tried: int = 0
    accepted: int = 0
    rejected: int = 0
    by_target: dict[str, list[int]] = field(default_factory=dict)
    failures: list[Finding] = field(default_factory=list)

    def add(self, target: str, accepted: bool) -> None:
        counts = self.by_target.setdefault(target, [0, 0, 0])
        self.tried += 1
        counts[0] += 1
        if accepted:
            self.accepted += 1
            counts[1] += 1
        else:
            self.rejected += 1
            counts[2] += 1

    def fail(self, finding: Finding) -> None:
        counts = self.by_target.setdefault(finding.target, [0, 0, 0])
        self.tried += 1
        counts[0] += 1
        self.failures.append(finding)


def in_process_input(
    rng: random.Random, state_loaders: list[GMMDataLoader]
) -> tuple[str, str, Callable[[], bool]]:
    """Draw one in-process input: its target, its description and its check."""
    kind = rng.randrange(10)
    if kind < 6:
        raw = random_config_input(rng)
        return "load_config", json.dumps(raw), lambda: check_config(raw)
    if kind < 8:
        spec = random_spec_message(rng)
        return "normalize_spec", str(spec).replace("\n", " "), lambda: check_spec(spec)
    if kind == 8:
        field_name = rng.choice(["session_id", "snapshot_id", "request_id"])
        value = rng.choice([junk_string(rng), "ses_" + junk_string(rng)])
        return "check_id", json.dumps(value), lambda: check_id_value(field_name, value)
    state_loader = rng.choice(state_loaders)
    text = random_state_text(rng, state_loader.state_dict())
    return "restore_state", text, lambda: check_state(text, state_loader)


@contextmanager
def loopback_server(work_dir: Path) -> Iterator[Any]:
    """Run a server subprocess on 127.0.0.1 and yield it; SIGKILL it at the end."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fault_inject import ServerProcess, free_port

    server = ServerProcess(
        work_dir, free_port(), {"GMMSERVE_OPERATOR_TOKEN": FUZZ_OPERATOR_TOKEN}
    )
    server.start()
    try:
        yield server
    finally:
        server.kill()


def run(
    inputs: int, seed: int, rpc_share: float, only: int | None, max_seconds: float
) -> Tally:
    """Fuzz ``inputs`` inputs, a share ``rpc_share`` of them as RPCs."""
    from gmmserve_client import Client, RetryPolicy

    tally = Tally()
    state_loaders = [
        _state_loader(batch_size, samples) for batch_size, samples in WIDE_AND_SMALL
    ]
    deadline = time.monotonic() + max_seconds
    work_dir = Path(tempfile.mkdtemp(prefix="gmmserve-fuzz-"))
    # One attempt per call, so each status reaches the checks unchanged.
    no_retry = RetryPolicy(max_attempts=1)
    with (
        loopback_server(work_dir) as server,
        Client(
            server.target,
            timeout_s=30,
            retry=no_retry,
            operator_token=FUZZ_OPERATOR_TOKEN,
        ) as client,
        Client(server.target, timeout_s=30, retry=no_retry) as anonymous,
    ):
        rpc_fuzzer = RpcFuzzer(
            client, anonymous, random.Random(seed), FUZZ_OPERATOR_TOKEN
        )
        indices = range(inputs) if only is None else [only]
        for index in indices:
            if time.monotonic() > deadline:
                message = f"--max-seconds reached after {tally.tried} inputs"
                tally.failures.append(Finding("run", message, "time limit"))
                break
            rng = random.Random(f"{seed}:{index}")
            if rng.random() < rpc_share:
                rpc_fuzzer.rng = rng
                name, call = rpc_fuzzer.random_request()
                target, description = f"rpc {name}", f"{name} input {index}"
                check: Callable[[], bool] = lambda call=call, name=name: rpc_outcome(
                    call, name
                )
            else:
                target, description, check = in_process_input(rng, state_loaders)
            try:
                tally.add(target, check())
            except FuzzFailure as failure:
                finding = Finding(
                    target, str(failure), failure.kind, index, description
                )
                tally.fail(finding)
            if (index + 1) % 10_000 == 0:
                _LOGGER.info("%d inputs, %d failures", index + 1, len(tally.failures))
        # The server stays up: a final call must still succeed.
        rpc_fuzzer.session.info()
    for finding in scan_store(work_dir / "gmmserve.sqlite3"):
        tally.failures.append(Finding("store", finding, "non-finite value stored"))
    if tally.failures:
        print(f"server data and log kept in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return tally


def _shorten(text: str, width: int = 240) -> str:
    """Collapse runs of 20 or more equal characters and cut ``text`` to ``width``."""
    text = re.sub(r"(.)\1{19,}", lambda run: f"{run[1]}*{len(run[0])}", text)
    return text if len(text) <= width else text[: width - 3] + "..."


def print_findings(findings: list[Finding], seed: int) -> None:
    """Print the findings grouped by kind, then each with its input number."""
    if not findings:
        return
    groups: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        groups.setdefault((finding.target, finding.kind), []).append(finding)
    print("findings by kind:")
    for (target, kind), members in sorted(
        groups.items(), key=lambda item: -len(item[1])
    ):
        print(f"  {len(members)} x {target}: {kind}")
    print(f"each finding (replay one with: scripts/fuzz.py --seed {seed} --only N):")
    for finding in findings:
        where = f"N={finding.index} " if finding.index is not None else ""
        print(f"FAILURE {where}{finding.target}: {_shorten(finding.message)}")
        if finding.description:
            print(f"    input: {_shorten(finding.description)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input RNG")
    parser.add_argument(
        "--rpc-share", type=float, default=0.03, help="share of inputs sent as RPCs"
    )
    parser.add_argument("--only", type=int, help="replay input number ONLY alone")
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="stop after this many seconds"
    )
    options = parser.parse_args(argv)
    if not 1 <= options.inputs <= 10_000_000:
        parser.error(f"--inputs must be in [1, 10000000], got {options.inputs}")
    if not 0 <= options.rpc_share <= 1:
        parser.error(f"--rpc-share must be in [0, 1], got {options.rpc_share}")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _LOGGER.setLevel(logging.INFO)
    started = time.monotonic()
    tally = run(
        options.inputs,
        options.seed,
        options.rpc_share,
        options.only,
        options.max_seconds,
    )
    print(f"inputs tried: {tally.tried}")
    print(f"accepted: {tally.accepted}")
    print(f"cleanly rejected: {tally.rejected}")
    print(f"failures: {len(tally.failures)}")
    for target, (tried, accepted, rejected) in sorted(tally.by_target.items()):
        print(f"  {target}: {tried} tried, {accepted} accepted, {rejected} rejected")
    print_findings(tally.failures, options.seed)
    print(f"wall time: {time.monotonic() - started:.1f} s")
    return 0 if not tally.failures else 1


if __name__ == "__main__":
    sys.exit(main())
