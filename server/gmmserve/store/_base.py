"""The session store interface: sessions, cursors and snapshots.

A store keeps one row per session (its settings and committed cursor) and
the snapshots taken of it. It does not import gRPC. Every method is a
coroutine, so an implementation backed by blocking I/O runs that I/O off
the event loop.

The cursor carries a generation that every write increments. A writer that
passes ``expected_generation`` to :meth:`Store.set_cursor` only succeeds when
nobody else wrote in between, which lets replicas sharing one store guard a
session against concurrent writers.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gmmserve.errors import StoreError

__all__ = [
    "CursorConflictError",
    "LimitExceededError",
    "NonFiniteValueError",
    "SessionRecord",
    "SnapshotRecord",
    "Store",
    "loads_finite",
    "require_finite_json",
    "require_finite_number",
]


class CursorConflictError(StoreError):
    """A compare-and-set cursor write found another generation than expected."""


class LimitExceededError(Exception):
    """A write would exceed a configured count, such as the stored sessions."""


class NonFiniteValueError(ValueError):
    """A value to be stored is NaN or infinite, or JSON text contains one."""


def _reject_constant(name: str) -> float:
    raise NonFiniteValueError(f"{name} is not a finite number")


def _reject_non_finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteValueError(f"{text} overflows to {value}")
    return value


def loads_finite(text: str) -> Any:
    """Parse JSON text, raising NonFiniteValueError for NaN or an infinity.

    Numbers such as ``1e400`` that overflow a float count as infinite.
    Malformed text raises ValueError (JSONDecodeError), and nesting deeper
    than the interpreter's recursion limit raises RecursionError.
    """
    return json.loads(
        text, parse_constant=_reject_constant, parse_float=_reject_non_finite_float
    )


def require_finite_json(field: str, text: str) -> None:
    """Raise NonFiniteValueError when JSON text is malformed or not finite."""
    try:
        loads_finite(text)
    except NonFiniteValueError as error:
        raise NonFiniteValueError(
            f"{field}: {error}; stored values must be finite"
        ) from None
    except (ValueError, RecursionError) as error:
        raise NonFiniteValueError(f"{field} is not valid JSON: {error}") from None


def require_finite_number(field: str, value: float) -> None:
    """Raise NonFiniteValueError when ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteValueError(f"{field} is {value}; stored values must be finite")


@dataclass(frozen=True)
class SessionRecord:
    """One session row.

    Attributes
    ----------
    session_id : str
    request_id : str or None
        The client's idempotency key; unique among live sessions.
    spec_json : str
        The normalized session spec as canonical JSON text.
    seed : int
        The effective seed of the session's loader.
    base_seed : int or None
        The base seed from the spec, from which ``seed`` was derived.
    resolved_config_json : str
        The resolved data config as canonical JSON text.
    fingerprint : str
        SHA-256 hex digest of the resolved config and the seed.
    batches_per_epoch : int
    cursor : int
        Global index of the next batch not yet acknowledged.
    generation : int
        Incremented by every cursor write.
    created_at, updated_at : float
        Seconds since the Unix epoch.
    """

    session_id: str
    request_id: str | None
    spec_json: str
    seed: int
    base_seed: int | None
    resolved_config_json: str
    fingerprint: str
    batches_per_epoch: int
    cursor: int
    generation: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot row: a session's committed position under an id.

    Attributes
    ----------
    snapshot_id : str
    session_id : str
    label : str
    cursor : int
        The session's committed cursor when the snapshot was taken.
    fingerprint : str
    state_json : str
        The state document, in the format ``GMMDataLoader.save_state`` writes.
    created_at : float
    """

    snapshot_id: str
    session_id: str
    label: str
    cursor: int
    fingerprint: str
    state_json: str
    created_at: float


class Store(abc.ABC):
    """Persistent sessions and snapshots.

    Lookups of unknown ids raise :class:`gmmserve.errors.NotFoundError`, and
    failures of the storage itself raise :class:`gmmserve.errors.StoreError`.
    Every write checks its values with :func:`require_finite_json` and
    :func:`require_finite_number` first, so NaN and infinities never reach
    the storage.
    """

    @abc.abstractmethod
    async def create_session(
        self, record: SessionRecord, max_sessions: int | None = None
    ) -> tuple[SessionRecord, bool]:
        """Insert a session unless its request id is already taken.

        Raises LimitExceededError, inserting nothing, when the store already
        has ``max_sessions`` sessions (None sets no limit).

        Returns
        -------
        record : SessionRecord
            The inserted record, or the existing session with the same
            ``request_id``.
        existing : bool
            True when the request id matched an existing session, which the
            caller compares against the request it received.
        """

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord:
        """Return a session; raise NotFoundError when it is unknown."""

    @abc.abstractmethod
    async def list_sessions(
        self, page_size: int, after: str | None = None
    ) -> list[SessionRecord]:
        """Return up to ``page_size`` sessions with ids greater than ``after``.

        Sessions are ordered by id, so the last id of a page is the token of
        the next.
        """

    @abc.abstractmethod
    async def set_cursor(
        self, session_id: str, cursor: int, expected_generation: int | None = None
    ) -> SessionRecord:
        """Write a session's committed cursor and return the updated record.

        Raises
        ------
        NotFoundError
            When the session is unknown.
        CursorConflictError
            When ``expected_generation`` is given and differs from the stored
            generation.
        """

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> SessionRecord:
        """Delete a session and its snapshots; return the deleted record."""

    @abc.abstractmethod
    async def put_snapshot(
        self, record: SnapshotRecord, max_snapshots: int | None = None
    ) -> None:
        """Insert a snapshot in one transaction.

        A crash during the write leaves every earlier snapshot readable and
        this one absent. Raises NotFoundError when the session is unknown,
        and LimitExceededError when the session already has
        ``max_snapshots`` snapshots (None sets no limit).
        """

    @abc.abstractmethod
    async def delete_snapshot(
        self, session_id: str, snapshot_id: str
    ) -> SnapshotRecord:
        """Delete one snapshot of a session in one transaction; return it.

        Raises NotFoundError, deleting nothing, when the session or the
        snapshot is unknown or the snapshot belongs to another session.
        """

    @abc.abstractmethod
    async def count_sessions(self) -> int:
        """Return the number of stored sessions."""

    @abc.abstractmethod
    async def get_or_create_secret(self, name: str, create: Callable[[], str]) -> str:
        """Return the secret stored under ``name``, storing ``create()`` first.

        The first caller's value wins, so every process sharing the store
        reads the same secret.
        """

    @abc.abstractmethod
    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        """Return a snapshot; raise NotFoundError when it is unknown."""

    @abc.abstractmethod
    async def list_snapshots(self, session_id: str) -> list[SnapshotRecord]:
        """Return a session's snapshots, oldest first."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the storage."""
