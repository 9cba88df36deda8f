"""Persistent sessions and snapshots behind one interface.

:class:`Store` is the interface and :class:`SQLiteStore` the embedded
default, a single SQLite file in WAL mode.
"""

from gmmserve.store._base import (
    CursorConflictError,
    SessionRecord,
    SnapshotRecord,
    Store,
)
from gmmserve.store.sqlite import SQLiteStore

__all__ = [
    "CursorConflictError",
    "SQLiteStore",
    "SessionRecord",
    "SnapshotRecord",
    "Store",
]
