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
        Bounds on configs and batch sizes.
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

    def __post_init__(self) -> None:
        checks = (
            ("port", self.port, 0, 65535),
            ("default_window", self.default_window, 1, self.max_window),
            ("max_window", self.max_window, 1, 4096),
            ("max_streams", self.max_streams, 1, 1_000_000),
            ("part_size", self.part_size, 1024, 3 * 1024 * 1024),
            ("workers", self.workers, 1, 256),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
        if not self.grace_s >= 0:
            raise ValueError(f"grace_s must be 0 or more seconds, got {self.grace_s!r}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))
