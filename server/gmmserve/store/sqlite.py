"""SQLite session store, the embedded default.

One file, ``gmmserve.sqlite3`` in the data directory, in WAL mode. A single
worker thread owns the connection and runs every query, so the event loop
never blocks on SQLite and writes are applied in the order they were
requested.

Durability: with ``journal_mode=WAL`` and ``synchronous=NORMAL`` a commit is
in the WAL file, in the operating system's page cache, when ``COMMIT``
returns. A process crash (``kill -9``) therefore loses no committed write.
A power loss or kernel crash may lose the last commits before the next
checkpoint, but the database stays consistent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gmmserve.errors import NotFoundError, StoreError
from gmmserve.store._base import (
    CursorConflictError,
    LimitExceededError,
    SessionRecord,
    SnapshotRecord,
    Store,
    require_finite_json,
    require_finite_number,
)

__all__ = ["DATABASE_NAME", "SNAPSHOT_PAUSE_ENV", "SQLiteStore"]

_LOGGER = logging.getLogger(__name__)

DATABASE_NAME = "gmmserve.sqlite3"

# Test-only hook: when this variable names a file and that file exists while
# a snapshot transaction is open, the store creates "<file>.paused" and waits
# inside the transaction until the file is removed (at most
# _SNAPSHOT_PAUSE_MAX_S). Crash tests use it to kill the server mid-write.
SNAPSHOT_PAUSE_ENV = "GMMSERVE_TEST_SNAPSHOT_PAUSE_FILE"
_SNAPSHOT_PAUSE_MAX_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    spec_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    base_seed INTEGER,
    resolved_config_json TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    batches_per_epoch INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    label TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    state_json TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_session ON snapshots (session_id, created_at);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_SESSION_COLUMNS = (
    "session_id, request_id, spec_json, seed, base_seed, resolved_config_json, "
    "fingerprint, batches_per_epoch, cursor, generation, created_at, updated_at"
)
_SNAPSHOT_COLUMNS = (
    "snapshot_id, session_id, label, cursor, fingerprint, state_json, created_at"
)

_T = TypeVar("_T")

_MAX_SQLITE_INTEGER = 2**63 - 1


class SQLiteStore(Store):
    """Sessions and snapshots in one SQLite file.

    Build it with :meth:`open`; the constructor does no I/O.

    Parameters
    ----------
    path : str or path
        The database file; its directory is created when missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="gmmserve-store"
        )
        self._connection: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SQLiteStore:
        """Open (creating when needed) the database at ``path``."""
        store = cls(path)
        await store._run(store._connect)
        return store

    @classmethod
    async def open_in(cls, data_dir: str | os.PathLike[str]) -> SQLiteStore:
        """Open ``gmmserve.sqlite3`` in the data directory ``data_dir``."""
        return await cls.open(Path(data_dir) / DATABASE_NAME)

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._guarded, function, *args)
        return await loop.run_in_executor(self._executor, call)

    def _guarded(self, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return function(*args)
        except sqlite3.Error as error:
            raise StoreError(
                f"SQLite store {str(self.path)!r} failed: {error}"
            ) from error

    def _connect(self) -> None:
        # The database contains the token secret, so a new directory and file
        # are readable by their owner only. An existing directory keeps its
        # mode, which the operator chose.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        # isolation_level=None leaves transactions to the explicit BEGIN below.
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL skips the fsync on each commit; a committed write still
        # survives a process crash (see the module docstring).
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        self._connection = connection
        _LOGGER.info("opened session store %s", self.path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection
        if connection is None:
            raise StoreError(f"SQLite store {str(self.path)!r} is closed")
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # Sessions.

    async def create_session(
        self, record: SessionRecord, max_sessions: int | None = None
    ) -> tuple[SessionRecord, bool]:
        _check_session(record)
        return await self._run(self._create_session, record, max_sessions)

    def _create_session(
        self, record: SessionRecord, max_sessions: int | None
    ) -> tuple[SessionRecord, bool]:
        with self._transaction() as connection:
            if record.request_id is not None:
                row = connection.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE request_id = ?",
                    (record.request_id,),
                ).fetchone()
                if row is not None:
                    return _session_from_row(row), True
            if max_sessions is not None:
                (count,) = connection.execute(
                    "SELECT COUNT(*) FROM sessions"
                ).fetchone()
                if count >= max_sessions:
                    raise LimitExceededError(
                        f"the store has {count} sessions, the limit of "
                        f"max_sessions={max_sessions}; close unused sessions"
                    )
            connection.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _session_to_row(record),
            )
        return record, False

    async def get_session(self, session_id: str) -> SessionRecord:
        return await self._run(self._get_session, session_id)

    def _get_session(self, session_id: str) -> SessionRecord:
        return _fetch_session(self._require_connection(), session_id)

    async def count_sessions(self) -> int:
        return await self._run(self._count_sessions)

    def _count_sessions(self) -> int:
        connection = self._require_connection()
        (count,) = connection.execute("SELECT COUNT(*) FROM sessions").fetchone()
        return int(count)

    async def get_or_create_secret(self, name: str, create: Callable[[], str]) -> str:
        return await self._run(self._get_or_create_secret, name, create)

    def _get_or_create_secret(self, name: str, create: Callable[[], str]) -> str:
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT value FROM secrets WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                return str(row[0])
            value = create()
            connection.execute(
                "INSERT INTO secrets (name, value) VALUES (?, ?)", (name, value)
            )
        return value

    async def list_sessions(
        self, page_size: int, after: str | None = None
    ) -> list[SessionRecord]:
        return await self._run(self._list_sessions, page_size, after)

    def _list_sessions(self, page_size: int, after: str | None) -> list[SessionRecord]:
        connection = self._require_connection()
        rows = connection.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id > ? "
            "ORDER BY session_id LIMIT ?",
            (after or "", page_size),
        ).fetchall()
        return [_session_from_row(row) for row in rows]

    async def set_cursor(
        self, session_id: str, cursor: int, expected_generation: int | None = None
    ) -> SessionRecord:
        if isinstance(cursor, bool) or not isinstance(cursor, int):
            raise TypeError(f"cursor must be an int, got {type(cursor).__name__}")
        if not 0 <= cursor <= _MAX_SQLITE_INTEGER:
            raise ValueError(
                f"cursor {cursor} is out of range; accepted range is "
                f"[0, {_MAX_SQLITE_INTEGER}]"
            )
        return await self._run(
            self._set_cursor, session_id, cursor, expected_generation
        )

    def _set_cursor(
        self, session_id: str, cursor: int, expected_generation: int | None
    ) -> SessionRecord:
        with self._transaction() as connection:
            record = _fetch_session(connection, session_id)
            if (
                expected_generation is not None
                and record.generation != expected_generation
            ):
                # The write count stays out of the message: it means nothing
                # to a client, which only needs to reconnect.
                raise CursorConflictError(
                    f"another stream or server moved the committed cursor of "
                    f"session {session_id} to batch {record.cursor} since this "
                    "stream last wrote it; reconnect, and the client resumes "
                    "from the last batch it received"
                )
            now = time.time()
            connection.execute(
                "UPDATE sessions SET cursor = ?, generation = ?, updated_at = ? "
                "WHERE session_id = ?",
                (cursor, record.generation + 1, now, session_id),
            )
        return _replace_cursor(record, cursor, now)

    async def delete_session(self, session_id: str) -> SessionRecord:
        return await self._run(self._delete_session, session_id)

    def _delete_session(self, session_id: str) -> SessionRecord:
        with self._transaction() as connection:
            record = _fetch_session(connection, session_id)
            connection.execute(
                "DELETE FROM snapshots WHERE session_id = ?", (session_id,)
            )
            connection.execute(
                "DELETE FROM sessions WHERE session_id = ?", (session_id,)
            )
        return record

    # Snapshots.

    async def put_snapshot(
        self, record: SnapshotRecord, max_snapshots: int | None = None
    ) -> None:
        require_finite_json("snapshot state_json", record.state_json)
        require_finite_number("snapshot created_at", record.created_at)
        await self._run(self._put_snapshot, record, max_snapshots)

    def _put_snapshot(self, record: SnapshotRecord, max_snapshots: int | None) -> None:
        with self._transaction() as connection:
            found = connection.execute(
                "SELECT 1 FROM sessions WHERE session_id = ?", (record.session_id,)
            ).fetchone()
            if found is None:
                raise NotFoundError(f"session {record.session_id!r} not found")
            if max_snapshots is not None:
                (count,) = connection.execute(
                    "SELECT COUNT(*) FROM snapshots WHERE session_id = ?",
                    (record.session_id,),
                ).fetchone()
                if count >= max_snapshots:
                    raise LimitExceededError(
                        f"session {record.session_id} has {count} snapshots, the "
                        f"limit of max_snapshots_per_session={max_snapshots}; "
                        "delete old snapshots with DeleteSnapshot, close the "
                        "session or start a new one, or raise "
                        "--max-snapshots-per-session on the server"
                    )
            connection.execute(
                f"INSERT INTO snapshots ({_SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.snapshot_id,
                    record.session_id,
                    record.label,
                    record.cursor,
                    record.fingerprint,
                    record.state_json,
                    record.created_at,
                ),
            )
            connection.execute(
                "UPDATE sessions SET updated_at = ? WHERE session_id = ?",
                (record.created_at, record.session_id),
            )
            _pause_for_crash_test()

    async def delete_snapshot(
        self, session_id: str, snapshot_id: str
    ) -> SnapshotRecord:
        return await self._run(self._delete_snapshot, session_id, snapshot_id)

    def _delete_snapshot(self, session_id: str, snapshot_id: str) -> SnapshotRecord:
        with self._transaction() as connection:
            _fetch_session(connection, session_id)
            row = connection.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots "
                "WHERE snapshot_id = ? AND session_id = ?",
                (snapshot_id, session_id),
            ).fetchone()
            if row is None:
                # The same message for a snapshot of another session as for
                # an unknown id, so a session's token reveals nothing about
                # other sessions' snapshots.
                raise NotFoundError(f"snapshot {snapshot_id!r} not found")
            connection.execute(
                "DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot_id,)
            )
        return SnapshotRecord(*row)

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        return await self._run(self._get_snapshot, snapshot_id)

    def _get_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        connection = self._require_connection()
        row = connection.execute(
            f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE snapshot_id = ?",
            (snapshot_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"snapshot {snapshot_id!r} not found")
        return SnapshotRecord(*row)

    async def list_snapshots(self, session_id: str) -> list[SnapshotRecord]:
        return await self._run(self._list_snapshots, session_id)

    def _list_snapshots(self, session_id: str) -> list[SnapshotRecord]:
        connection = self._require_connection()
        rows = connection.execute(
            f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE session_id = ? "
            "ORDER BY created_at, snapshot_id",
            (session_id,),
        ).fetchall()
        return [SnapshotRecord(*row) for row in rows]

    async def close(self) -> None:
        if self._connection is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            _LOGGER.info("closed session store %s", self.path)

    def _require_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"SQLite store {str(self.path)!r} is closed")
        return self._connection


def _check_session(record: SessionRecord) -> None:
    require_finite_json("session spec_json", record.spec_json)
    require_finite_json("session resolved_config_json", record.resolved_config_json)
    require_finite_number("session created_at", record.created_at)
    require_finite_number("session updated_at", record.updated_at)


def _session_to_row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.session_id,
        record.request_id,
        record.spec_json,
        record.seed,
        record.base_seed,
        record.resolved_config_json,
        record.fingerprint,
        record.batches_per_epoch,
        record.cursor,
        record.generation,
        record.created_at,
        record.updated_at,
    )


def _session_from_row(row: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(*row)


def _fetch_session(connection: sqlite3.Connection, session_id: str) -> SessionRecord:
    row = connection.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"session {session_id!r} not found")
    return _session_from_row(row)


def _replace_cursor(record: SessionRecord, cursor: int, now: float) -> SessionRecord:
    return dataclasses.replace(
        record, cursor=cursor, generation=record.generation + 1, updated_at=now
    )


def _pause_for_crash_test() -> None:
    trigger = os.environ.get(SNAPSHOT_PAUSE_ENV)
    if not trigger or not os.path.exists(trigger):
        return
    marker = Path(f"{trigger}.paused")
    marker.touch()
    _LOGGER.warning(
        "test hook: pausing inside a snapshot transaction until %s is removed", trigger
    )
    deadline = time.monotonic() + _SNAPSHOT_PAUSE_MAX_S
    while os.path.exists(trigger) and time.monotonic() < deadline:
        time.sleep(0.05)
