"""Command-line flags of the server, shared by ``gmmserve serve`` and
``python -m gmmserve.service``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from gmmserve.config import DEFAULT_LIMITS
from gmmserve.service._settings import DEFAULT_MAX_REQUEST_BYTES, ServerSettings

__all__ = [
    "OPERATOR_TOKEN_ENV",
    "add_server_arguments",
    "float_in_range",
    "int_in_range",
    "read_token_file",
    "settings_from_arguments",
]

_LOGGER = logging.getLogger(__name__)

OPERATOR_TOKEN_ENV = "GMMSERVE_OPERATOR_TOKEN"
_DEFAULTS = ServerSettings()

# Upper bound of the limit flags whose settings have only a lower bound.
_LARGE = 2**53 - 1


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """Return an argparse ``type`` that parses an integer in ``[low, high]``.

    argparse prefixes the ArgumentTypeError message with the flag, so an
    error names the flag, the value and the accepted range.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer; accepted range is [{low}, {high}]"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value} is out of range; accepted range is [{low}, {high}]"
            )
        return value

    return parse


def float_in_range(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    """Return an argparse ``type`` that parses a finite float in ``[low, high]``."""
    suffix = f" {unit}" if unit else ""
    bounds = ", ".join(
        str(int(bound)) if float(bound).is_integer() else str(bound)
        for bound in (low, high)
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; accepted range is [{bounds}]{suffix}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range; accepted range is [{bounds}]{suffix}"
            )
        return value

    return parse


# Flag, parser, default and help text of each limit. The flag without its
# dashes is the Limits or ServerSettings field it sets. Each parser accepts
# the range that ServerSettings checks, or up to _LARGE where it checks only
# the lower bound.
_LIMIT_FLAGS: tuple[tuple[str, Callable[[str], float], float, str], ...] = (
    (
        "--max-dim",
        int_in_range(1, _LARGE),
        DEFAULT_LIMITS.max_dim,
        "largest config dimension",
    ),
    (
        "--max-clusters",
        int_in_range(1, _LARGE),
        DEFAULT_LIMITS.max_clusters,
        "largest cluster count",
    ),
    (
        "--max-points",
        int_in_range(1, _LARGE),
        DEFAULT_LIMITS.max_points,
        "largest points per sample",
    ),
    (
        "--max-batch-size",
        int_in_range(1, _LARGE),
        DEFAULT_LIMITS.max_batch_size,
        "largest datasets per batch",
    ),
    (
        "--max-batch-elements",
        int_in_range(1, _LARGE),
        DEFAULT_LIMITS.max_batch_elements,
        "largest float count of one batch's points",
    ),
    (
        "--max-sessions",
        int_in_range(1, 100_000_000),
        _DEFAULTS.max_sessions,
        "sessions the store may hold",
    ),
    (
        "--max-snapshots-per-session",
        int_in_range(1, 1_000_000),
        _DEFAULTS.max_snapshots_per_session,
        "snapshots one session may hold",
    ),
    (
        "--max-streams",
        int_in_range(1, 1_000_000),
        _DEFAULTS.max_streams,
        "open streams at once",
    ),
    (
        "--max-window",
        int_in_range(1, 4096),
        _DEFAULTS.max_window,
        "largest stream window in batches",
    ),
    (
        "--max-request-bytes",
        int_in_range(64 * 1024, 1024**3),
        DEFAULT_MAX_REQUEST_BYTES,
        "largest request message in bytes",
    ),
    (
        "--part-size",
        int_in_range(1024, 3 * 1024 * 1024),
        _DEFAULTS.part_size,
        "batches serialized larger than this many bytes are sent in parts",
    ),
    (
        "--idle-timeout-s",
        float_in_range(1.0, 30 * 24 * 3600, "seconds"),
        _DEFAULTS.idle_timeout_s,
        (
            "seconds after which an idle session releases its in-memory loader; "
            "it stays stored and resumes on the next call"
        ),
    ),
)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bind, store, limit, token and TLS flags to ``parser``."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int_in_range(0, 65535),
        default=50051,
        help="TCP port; 0 picks a free one (default 50051)",
    )
    parser.add_argument(
        "--data-dir",
        default=".gmmserve-data",
        help="directory of the session store (default .gmmserve-data)",
    )
    parser.add_argument(
        "--grace-s",
        "--grace",
        dest="grace_s",
        type=float_in_range(0.0, 24 * 3600, "seconds"),
        default=10.0,
        help="seconds open calls get to finish after SIGTERM or SIGINT, at most "
        "86400 (default 10)",
    )
    parser.add_argument(
        "--port-file",
        help='JSON file that receives {"port": N} once the server accepts calls; '
        "with --port 0 it reports the free port chosen",
    )

    access = parser.add_argument_group("access control and TLS")
    access.add_argument(
        "--operator-token-file",
        help="file whose first line is the operator token, which may list, get, "
        "snapshot, restore and close any session (default: the "
        f"{OPERATOR_TOKEN_ENV} environment variable, else no operator access)",
    )
    access.add_argument(
        "--tls-cert", help="PEM certificate chain of the server; enables TLS"
    )
    access.add_argument("--tls-key", help="PEM private key of --tls-cert")
    access.add_argument(
        "--tls-client-ca",
        help="PEM certificates of the CAs that sign client certificates; "
        "requires a valid client certificate on every connection (mutual TLS)",
    )

    limits = parser.add_argument_group("limits")
    for flag, parse, default, help_text in _LIMIT_FLAGS:
        limits.add_argument(
            flag,
            type=parse,
            default=default,
            help=f"{help_text} (default {default})",
        )


def read_token_file(path: str | os.PathLike[str], flag: str) -> str:
    """Return the first line of a token file, stripped.

    Logs a warning when other users may read the file.

    Raises
    ------
    ValueError
        When the file is empty.
    OSError
        When the file cannot be read.
    """
    file = Path(path)
    mode = file.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        _LOGGER.warning(
            "%s %s is readable by other users; chmod 600 it", flag, str(file)
        )
    lines = file.read_text(encoding="utf-8").splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(
            f"{flag} {str(file)!r} is empty; write the token on its first line"
        )
    return token


def _operator_token(args: argparse.Namespace) -> str | None:
    if args.operator_token_file:
        return read_token_file(args.operator_token_file, "--operator-token-file")
    return os.environ.get(OPERATOR_TOKEN_ENV) or None


def settings_from_arguments(args: argparse.Namespace) -> ServerSettings:
    """Build ServerSettings from flags that :func:`add_server_arguments` added.

    Raises
    ------
    ValueError
        When a flag value is out of range, or ``--data-dir`` names an
        existing path that is not a directory; the message names the flag.
    """
    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(
            f"--data-dir {str(data_dir)!r} exists but is not a directory; pass a "
            "directory, which is created when missing"
        )
    limits = dataclasses.replace(
        DEFAULT_LIMITS,
        max_dim=args.max_dim,
        max_clusters=args.max_clusters,
        max_points=args.max_points,
        max_batch_size=args.max_batch_size,
        max_batch_elements=args.max_batch_elements,
    )
    for name in ("max_dim", "max_clusters", "max_points", "max_batch_size"):
        value = getattr(limits, name)
        if value < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be 1 or more, got {value}"
            )
    if limits.max_batch_elements < 1:
        raise ValueError(
            f"--max-batch-elements must be 1 or more, got {limits.max_batch_elements}"
        )
    return ServerSettings(
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        grace_s=args.grace_s,
        max_window=args.max_window,
        default_window=min(_DEFAULTS.default_window, args.max_window),
        max_streams=args.max_streams,
        part_size=args.part_size,
        limits=limits,
        max_sessions=args.max_sessions,
        max_snapshots_per_session=args.max_snapshots_per_session,
        max_request_bytes=args.max_request_bytes,
        idle_timeout_s=args.idle_timeout_s,
        operator_token=_operator_token(args),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
    )
