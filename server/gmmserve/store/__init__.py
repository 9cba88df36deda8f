"""Persistent sessions and snapshots behind one interface.

:class:`Store` is the interface and :class:`SQLiteStore` the embedded
default, a single SQLite file in WAL mode.
"""

from gmmserve.store._base import (
    CursorConflictError,
    LimitExceededError,
    NonFiniteValueError,
    SessionRecord,
    SnapshotRecord,
    Store,
    loads_finite,
    require_finite_json,
    require_finite_number,
)
from gmmserve.store.sqlite import SQLiteStore

__all__ = [
    "CursorConflictError",
    "LimitExceededError",
    "NonFiniteValueError",
    "SQLiteStore",
    "SessionRecord",
    "SnapshotRecord",
    "Store",
    "loads_finite",
    "require_finite_json",
    "require_finite_number",
]
