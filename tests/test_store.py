"""Tests of the SQLite session store."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from gmmserve.errors import NotFoundError, StoreError
from gmmserve.store import (
    CursorConflictError,
    LimitExceededError,
    NonFiniteValueError,
    SessionRecord,
    SnapshotRecord,
    SQLiteStore,
)
from gmmserve.store.sqlite import DATABASE_NAME

_T = TypeVar("_T")


def run(coroutine: Awaitable[_T]) -> _T:
    async def wrapper() -> _T:
        return await coroutine

    return asyncio.run(wrapper())


def session_record(session_id: str, request_id: str | None = None) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        request_id=request_id,
        spec_json='{"batch_size":4}',
        seed=197611,
        base_seed=7,
        resolved_config_json='{"dim":2}',
        fingerprint="f" * 64,
        batches_per_epoch=3,
        cursor=0,
        generation=0,
        created_at=1000.0,
        updated_at=1000.0,
    )


def snapshot_record(
    snapshot_id: str, session_id: str, cursor: int, at: float
) -> SnapshotRecord:
    return SnapshotRecord(
        snapshot_id=snapshot_id,
        session_id=session_id,
        label=f"at {cursor}",
        cursor=cursor,
        fingerprint="f" * 64,
        state_json='{"format_version": 1}',
        created_at=at,
    )


def test_store_create_and_get(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        record = session_record("ses_a")
        stored, existing = await store.create_session(record)
        assert stored == record
        assert existing is False
        assert await store.get_session("ses_a") == record
        await store.close()

    run(scenario())


def test_store_request_id_returns_existing(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        first, existing = await store.create_session(session_record("ses_a", "req-1"))
        assert existing is False
        second, existing = await store.create_session(session_record("ses_b", "req-1"))
        assert existing is True
        assert second == first
        with pytest.raises(NotFoundError):
            await store.get_session("ses_b")
        # Sessions without a request id never collide.
        await store.create_session(session_record("ses_c"))
        _, existing = await store.create_session(session_record("ses_d"))
        assert existing is False
        await store.close()

    run(scenario())


def test_store_unknown_ids_raise_not_found(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        with pytest.raises(NotFoundError, match="ses_missing"):
            await store.get_session("ses_missing")
        with pytest.raises(NotFoundError):
            await store.set_cursor("ses_missing", 3)
        with pytest.raises(NotFoundError):
            await store.delete_session("ses_missing")
        with pytest.raises(NotFoundError):
            await store.get_snapshot("snap_missing")
        with pytest.raises(NotFoundError):
            await store.put_snapshot(snapshot_record("snap_x", "ses_missing", 0, 1.0))
        await store.close()

    run(scenario())


def test_store_list_sessions_pages(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        for name in ("ses_c", "ses_a", "ses_e", "ses_b", "ses_d"):
            await store.create_session(session_record(name))
        first = await store.list_sessions(2)
        assert [record.session_id for record in first] == ["ses_a", "ses_b"]
        second = await store.list_sessions(2, after=first[-1].session_id)
        assert [record.session_id for record in second] == ["ses_c", "ses_d"]
        third = await store.list_sessions(2, after=second[-1].session_id)
        assert [record.session_id for record in third] == ["ses_e"]
        await store.close()

    run(scenario())


def test_store_set_cursor_compare_and_set(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        await store.create_session(session_record("ses_a"))
        updated = await store.set_cursor("ses_a", 5, expected_generation=0)
        assert updated.cursor == 5
        assert updated.generation == 1
        with pytest.raises(CursorConflictError) as caught:
            await store.set_cursor("ses_a", 9, expected_generation=0)
        message = str(caught.value)
        assert "another stream or server moved the committed cursor" in message
        assert "session ses_a to batch 5" in message
        assert "reconnect" in message
        assert "generation" not in message
        unguarded = await store.set_cursor("ses_a", 2)
        assert unguarded.cursor == 2
        assert unguarded.generation == 2
        assert await store.get_session("ses_a") == unguarded
        await store.close()

    run(scenario())


def test_store_cursor_survives_reopen(tmp_path: Path) -> None:
    async def write() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        await store.create_session(session_record("ses_a"))
        await store.set_cursor("ses_a", 41)
        await store.close()

    async def read() -> SessionRecord:
        store = await SQLiteStore.open_in(tmp_path)
        record = await store.get_session("ses_a")
        await store.close()
        return record

    run(write())
    record = run(read())
    assert record.cursor == 41
    assert record.generation == 1


def test_store_uses_wal_mode(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        await store.close()

    run(scenario())
    connection = sqlite3.connect(tmp_path / DATABASE_NAME)
    try:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()
    assert mode == "wal"


def test_store_snapshots_listed_and_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        await store.create_session(session_record("ses_a"))
        await store.create_session(session_record("ses_b"))
        later = snapshot_record("snap_2", "ses_a", 7, 2000.0)
        earlier = snapshot_record("snap_1", "ses_a", 3, 1500.0)
        other = snapshot_record("snap_3", "ses_b", 1, 1700.0)
        for record in (later, earlier, other):
            await store.put_snapshot(record)
        assert await store.get_snapshot("snap_1") == earlier
        assert await store.list_snapshots("ses_a") == [earlier, later]
        # updated_at is the creation time of the snapshot written last.
        assert (await store.get_session("ses_a")).updated_at == 1500.0

        deleted = await store.delete_session("ses_a")
        assert deleted.session_id == "ses_a"
        assert await store.list_snapshots("ses_a") == []
        with pytest.raises(NotFoundError):
            await store.get_snapshot("snap_2")
        assert await store.get_snapshot("snap_3") == other
        await store.close()

    run(scenario())


def test_store_delete_snapshot(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        try:
            await store.create_session(session_record("ses_a"))
            await store.create_session(session_record("ses_b"))
            first = snapshot_record("snap_1", "ses_a", 3, 1500.0)
            second = snapshot_record("snap_2", "ses_a", 7, 2000.0)
            other = snapshot_record("snap_3", "ses_b", 1, 1700.0)
            for record in (first, second, other):
                await store.put_snapshot(record, max_snapshots=2)

            assert await store.delete_snapshot("ses_a", "snap_1") == first
            assert await store.list_snapshots("ses_a") == [second]
            with pytest.raises(NotFoundError, match="snap_1"):
                await store.get_snapshot("snap_1")
            # The freed room takes a new snapshot under the same limit.
            third = snapshot_record("snap_4", "ses_a", 9, 2500.0)
            await store.put_snapshot(third, max_snapshots=2)
            assert await store.list_snapshots("ses_a") == [second, third]

            # Unknown ids and another session's snapshot delete nothing.
            with pytest.raises(NotFoundError, match="snap_1"):
                await store.delete_snapshot("ses_a", "snap_1")
            with pytest.raises(NotFoundError, match="snap_3"):
                await store.delete_snapshot("ses_a", "snap_3")
            with pytest.raises(NotFoundError, match="ses_c"):
                await store.delete_snapshot("ses_c", "snap_3")
            assert await store.get_snapshot("snap_3") == other
            assert await store.list_snapshots("ses_a") == [second, third]
        finally:
            await store.close()

    run(scenario())


def test_store_failed_snapshot_rolls_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        await store.create_session(session_record("ses_a"))
        first = snapshot_record("snap_1", "ses_a", 3, 1500.0)
        await store.put_snapshot(first)
        # A duplicate id fails inside the transaction, after the session check.
        duplicate = snapshot_record("snap_1", "ses_a", 9, 1600.0)
        with pytest.raises(StoreError, match="UNIQUE"):
            await store.put_snapshot(duplicate)
        assert await store.list_snapshots("ses_a") == [first]
        assert (await store.get_session("ses_a")).updated_at == 1500.0
        await store.close()

    run(scenario())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"created_at": float("nan")}, "session created_at is nan"),
        ({"updated_at": float("inf")}, "session updated_at is inf"),
        ({"spec_json": '{"batch_size": NaN}'}, "session spec_json"),
        ({"resolved_config_json": '{"dim": 1e400}'}, "session resolved_config_json"),
        ({"resolved_config_json": '{"dim": -Infinity}'}, "-Infinity"),
    ],
    ids=["nan-time", "inf-time", "nan-spec", "overflow-config", "infinity-config"],
)
def test_store_rejects_non_finite_session(
    tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        try:
            record = dataclasses.replace(session_record("ses_a"), **change)  # type: ignore[arg-type]
            with pytest.raises(NonFiniteValueError, match=re.escape(fragment)):
                await store.create_session(record)
            assert await store.count_sessions() == 0
        finally:
            await store.close()

    run(scenario())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"state_json": '{"format_version": NaN}'}, "snapshot state_json"),
        ({"state_json": '{"x": 1e999}'}, "1e999"),
        ({"created_at": float("-inf")}, "snapshot created_at is -inf"),
    ],
    ids=["nan-state", "overflow-state", "inf-time"],
)
def test_store_rejects_non_finite_snapshot(
    tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        try:
            await store.create_session(session_record("ses_a"))
            record = dataclasses.replace(
                snapshot_record("snap_a", "ses_a", 1, 1.0),
                **change,  # type: ignore[arg-type]
            )
            with pytest.raises(NonFiniteValueError, match=re.escape(fragment)):
                await store.put_snapshot(record)
            assert await store.list_snapshots("ses_a") == []
        finally:
            await store.close()

    run(scenario())


def test_store_rejects_bad_cursor(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        try:
            await store.create_session(session_record("ses_a"))
            with pytest.raises(ValueError, match=r"cursor -1 is out of range"):
                await store.set_cursor("ses_a", -1)
            with pytest.raises(ValueError, match=r"cursor 9223372036854775808 is out"):
                await store.set_cursor("ses_a", 2**63)
            with pytest.raises(TypeError, match="cursor must be an int, got float"):
                await store.set_cursor("ses_a", float("nan"))  # type: ignore[arg-type]
            assert (await store.get_session("ses_a")).cursor == 0
        finally:
            await store.close()

    run(scenario())


def test_store_session_and_snapshot_limits(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SQLiteStore.open_in(tmp_path)
        try:
            await store.create_session(session_record("ses_a", "req-a"), max_sessions=2)
            await store.create_session(session_record("ses_b"), max_sessions=2)
            with pytest.raises(LimitExceededError, match="max_sessions=2"):
                await store.create_session(session_record("ses_c"), max_sessions=2)
            # An existing request id is returned even at the limit.
            found, existing = await store.create_session(
                session_record("ses_d", "req-a"), max_sessions=2
            )
            assert existing
            assert found.session_id == "ses_a"
            assert await store.count_sessions() == 2

            await store.put_snapshot(snapshot_record("snap_1", "ses_a", 0, 1.0), 1)
            with pytest.raises(LimitExceededError, match="max_snapshots_per_session=1"):
                await store.put_snapshot(snapshot_record("snap_2", "ses_a", 0, 2.0), 1)
            await store.put_snapshot(snapshot_record("snap_3", "ses_b", 0, 3.0), 1)
            assert len(await store.list_snapshots("ses_a")) == 1
        finally:
            await store.close()

    run(scenario())


def test_store_secret_created_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, str]:
        store = await SQLiteStore.open_in(tmp_path)
        try:
            first = await store.get_or_create_secret("key", lambda: "one")
            second = await store.get_or_create_secret("key", lambda: "two")
        finally:
            await store.close()
        reopened = await SQLiteStore.open_in(tmp_path)
        try:
            third = await reopened.get_or_create_secret("key", lambda: "three")
        finally:
            await reopened.close()
        return first, second, third

    assert run(scenario()) == ("one", "one", "one")
