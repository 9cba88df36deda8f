"""Server settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gmmserve.config import DEFAULT_LIMITS, Limits

__all__ = ["ServerSettings"]

# gRPC clients reject messages over 4 MiB by default; 1 MiB parts leave room
# for the message framing and keep one part's copy small.
DEFAULT_PART_SIZE = 1024 * 1024
# The largest request a client sends is a Restore with a state document
# (at most a few KiB) or a CreateSession with a config; 4 MiB is gRPC's own
# default receive limit.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Operator tokens shorter than this are rejected as too easy to guess.
MIN_OPERATOR_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ServerSettings:
    """What ``serve`` binds to, stores in and allows.

    Attributes
    ----------
    host : str
        Address to bind, for example ``"127.0.0.1"``.
    port : int
        TCP port; 0 binds a free port.
    data_dir : path
        Directory of the SQLite store ``gmmserve.sqlite3``.
    grace_s : float
        Seconds that open RPCs get to finish after SIGTERM or SIGINT.
    default_window : int
        Batches sent ahead of the last acknowledgement when a stream requests
        window 0.
    max_window : int
        Largest window a stream may ask for.
    max_streams : int
        Open streams allowed at once; more get RESOURCE_EXHAUSTED.
    part_size : int
        Serialized batches larger than this many bytes are sent as parts.
    workers : int
        Threads that generate and encode batches.
    limits : Limits
        Bounds on configs and batch sizes: dimension, clusters, points per
        sample and elements per batch.
    max_sessions : int
        Sessions the store may hold; CreateSession beyond it gets
        RESOURCE_EXHAUSTED.
    max_snapshots_per_session : int
        Snapshots one session may hold; more get RESOURCE_EXHAUSTED.
    max_request_bytes : int
        Largest request message the server accepts, in bytes.
    idle_timeout_s : float
        Seconds after which a session with no open stream and no call
        releases its in-memory loader. Its row stays stored, and the next
        call rebuilds the loader at the same position.
    operator_token : str or None
        Bearer token that may list, get, snapshot, restore and close any
        session; None disables operator access. Kept out of ``repr``.
    tls_cert, tls_key : path or None
        PEM server certificate chain and private key; both or neither.
        With them the server accepts only TLS connections.
    tls_client_ca : path or None
        PEM certificates of the authorities that sign client certificates.
        With it the server requires a valid client certificate (mutual TLS).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path(".gmmserve-data")
    grace_s: float = 10.0
    default_window: int = 4
    max_window: int = 64
    max_streams: int = 256
    part_size: int = DEFAULT_PART_SIZE
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    limits: Limits = DEFAULT_LIMITS
    max_sessions: int = 10_000
    max_snapshots_per_session: int = 1000
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    idle_timeout_s: float = 600.0
    operator_token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def __post_init__(self) -> None:
        checks = (
            ("port", self.port, 0, 65535),
            ("default_window", self.default_window, 1, self.max_window),
            ("max_window", self.max_window, 1, 4096),
            ("max_streams", self.max_streams, 1, 1_000_000),
            ("part_size", self.part_size, 1024, 3 * 1024 * 1024),
            ("workers", self.workers, 1, 256),
            ("max_sessions", self.max_sessions, 1, 100_000_000),
            ("max_snapshots_per_session", self.max_snapshots_per_session, 1, 1_000_000),
            ("max_request_bytes", self.max_request_bytes, 64 * 1024, 1024**3),
        )
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
        if not self.grace_s >= 0:
            raise ValueError(f"grace_s must be 0 or more seconds, got {self.grace_s!r}")
        if not 1.0 <= self.idle_timeout_s <= 30 * 24 * 3600:
            raise ValueError(
                "idle_timeout_s must be in [1, 2592000] seconds, got "
                f"{self.idle_timeout_s!r}"
            )
        self._check_operator_token()
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key must be given together, got "
                f"tls_cert={self.tls_cert!r}, tls_key={self.tls_key!r}"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "tls_client_ca requires tls_cert and tls_key, because mutual TLS "
                "runs over TLS"
            )

    def _check_operator_token(self) -> None:
        token = self.operator_token
        if token is None:
            return
        # The message never contains the token itself.
        if len(token) < MIN_OPERATOR_TOKEN_LENGTH or len(token) > 1024:
            raise ValueError(
                f"operator_token has {len(token)} characters; accepted length is "
                f"{MIN_OPERATOR_TOKEN_LENGTH} to 1024"
            )
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError(
                "operator_token must be printable ASCII without spaces, because "
                "it is sent in a gRPC metadata value"
            )

    @property
    def tls(self) -> bool:
        """Whether the server accepts only TLS connections."""
        return self.tls_cert is not None
