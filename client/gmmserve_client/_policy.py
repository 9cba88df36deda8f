"""Retry settings for unary calls and reconnect settings for batch streams."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

__all__ = ["ReconnectPolicy", "RetryPolicy"]

SERVICE_NAME = "gmmserve.v1.GmmService"
UNARY_METHODS = (
    "CreateSession",
    "GetSession",
    "ListSessions",
    "CloseSession",
    "Snapshot",
    "Restore",
    "ListSnapshots",
)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's built-in retry policy for unary calls, applied on UNAVAILABLE.

    gRPC waits a random time in [0, b) before retry n, where
    b = min(initial_backoff_s * backoff_multiplier ** (n - 1), max_backoff_s).

    Attributes
    ----------
    max_attempts : int, default 5
        Attempts per call, the first included, in [1, 5]; gRPC caps the
        value at 5. 1 disables retries.
    initial_backoff_s, max_backoff_s : float, default 0.2 and 2.0
        Backoff bounds in seconds.
    backoff_multiplier : float, default 2.0
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(
                f"max_attempts must be an integer in [1, 5], got {self.max_attempts!r}"
            )
        _check_positive("initial_backoff_s", self.initial_backoff_s)
        _check_positive("max_backoff_s", self.max_backoff_s)
        _check_positive("backoff_multiplier", self.backoff_multiplier)

    def service_config(self) -> str:
        """Return the gRPC service config JSON applying this policy to unary methods."""
        method_config: dict[str, object] = {
            "name": [
                {"service": SERVICE_NAME, "method": name} for name in UNARY_METHODS
            ],
        }
        if self.max_attempts > 1:
            method_config["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s:.3f}s",
                "maxBackoff": f"{self.max_backoff_s:.3f}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps({"methodConfig": [method_config]})


@dataclass(frozen=True)
class ReconnectPolicy:
    """Reconnect settings of a batch stream that fails with UNAVAILABLE.

    Before reconnect attempt n (counted from 1 since the last batch
    received) the stream sleeps
    min(initial_backoff_s * backoff_multiplier ** (n - 1), max_backoff_s)
    seconds, scaled by a random factor in [1 - jitter, 1 + jitter]. It gives
    up after ``max_attempts`` attempts or once ``max_elapsed_s`` seconds
    have passed since the failure, whichever comes first, and raises
    :class:`StreamInterrupted`.

    The defaults ride out a server restart or a network outage of up to 15
    minutes, which suits trainers that run for days. Lower
    ``max_elapsed_s`` to fail faster.

    Attributes
    ----------
    max_attempts : int or None, default None
        None sets no limit on attempts, so ``max_elapsed_s`` alone bounds
        the reconnects; 0 disables reconnecting.
    initial_backoff_s, max_backoff_s : float, default 0.1 and 3.0
    backoff_multiplier : float, default 2.0
    jitter : float, default 0.2
        In [0, 1).
    max_elapsed_s : float, default 900.0
    """

    max_attempts: int | None = None
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 3.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2
    max_elapsed_s: float = 900.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError(
                f"max_attempts must be None or 0 or more, got {self.max_attempts!r}"
            )
        _check_positive("initial_backoff_s", self.initial_backoff_s)
        _check_positive("max_backoff_s", self.max_backoff_s)
        _check_positive("backoff_multiplier", self.backoff_multiplier)
        _check_positive("max_elapsed_s", self.max_elapsed_s)
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    def backoff_s(self, attempt: int) -> float:
        """Return the sleep in seconds before reconnect attempt ``attempt`` (from 1)."""
        base = self.initial_backoff_s * self.backoff_multiplier ** (attempt - 1)
        base = min(base, self.max_backoff_s)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)
