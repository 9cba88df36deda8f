"""The session registry: live loaders, open streams and cursor writes.

The store is the source of truth for every session. The registry caches,
per session, the loader built from its row, the last record this server
wrote and the set of open streams, and serializes the writes that move the
cursor (acknowledgements, restores, closes) with one lock per session.

A restore or close ends every open stream of the session with ABORTED, and
shutdown ends them with UNAVAILABLE. A stream whose end was requested no
longer moves the cursor, even for an acknowledgement already received.

A session with no open stream and no call for ``idle_timeout_s`` leaves the
cache (:meth:`SessionRegistry.expire_idle`). Its row stays in the store,
so the next call rebuilds the loader at the same cursor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import grpc

from gmmserve.config import MAX_SEED
from gmmserve.errors import ConfigError, NotFoundError
from gmmserve.loader import GMMDataLoader
from gmmserve.service._settings import ServerSettings
from gmmserve.service._spec import (
    NormalizedSpec,
    build_loader,
    new_session_record,
    new_snapshot_id,
    parse_json_object,
)
from gmmserve.service._status import StreamEndedError
from gmmserve.state import MAX_STATE_BYTES, parse_state_json
from gmmserve.store import SessionRecord, SnapshotRecord, Store

__all__ = ["LiveSession", "OpenStream", "SessionRegistry"]

_LOGGER = logging.getLogger(__name__)


class OpenStream:
    """One open StreamBatches call, as the registry tracks it.

    Attributes
    ----------
    stream_id : int
    session_id : str
    start : int
        Global index of the stream's first batch.
    peer : str
        The client's address, as gRPC reports it.
    end_status : tuple of (StatusCode, str) or None
        Set when something else (a restore, a close, shutdown) ends the
        stream; the message template may contain ``{cursor}``.
    wakeup : asyncio.Event
        Set together with ``end_status`` so the stream's loop notices.
    """

    def __init__(self, stream_id: int, session_id: str, start: int, peer: str) -> None:
        self.stream_id = stream_id
        self.session_id = session_id
        self.start = start
        self.peer = peer
        self.end_status: tuple[grpc.StatusCode, str] | None = None
        self.wakeup = asyncio.Event()

    def request_end(self, code: grpc.StatusCode, template: str) -> None:
        """Ask the stream to end with ``code``; the first request wins."""
        if self.end_status is None:
            self.end_status = (code, template)
            self.wakeup.set()


@dataclass
class LiveSession:
    """A session this server has streamed or changed since it started."""

    record: SessionRecord
    loader: GMMDataLoader
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    streams: set[OpenStream] = field(default_factory=set)
    # Notified whenever a stream of the session closes, for a StreamStart
    # that waits for the previous stream to end.
    stream_closed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # time.monotonic() of the last call that used the session.
    last_used: float = field(default_factory=time.monotonic)

    def running_streams(self) -> list[OpenStream]:
        """Open streams whose end nobody has requested yet."""
        return [stream for stream in self.streams if stream.end_status is None]


class SessionRegistry:
    """Sessions and their open streams on top of a store.

    Parameters
    ----------
    store : Store
    settings : ServerSettings
        Its limits, session and snapshot counts and idle timeout apply.
    """

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        self.shutting_down = False
        # Entries leave this cache when their session is closed or idle.
        self._live: dict[str, LiveSession] = {}
        self._next_stream_id = 1

    @property
    def live_count(self) -> int:
        """Sessions whose loader is in memory."""
        return len(self._live)

    @property
    def open_stream_count(self) -> int:
        """Streams open on this server."""
        return sum(len(live.streams) for live in self._live.values())

    async def create(
        self, spec: NormalizedSpec, request_id: str | None
    ) -> tuple[SessionRecord, bool]:
        """Create a session, or return the one created under ``request_id``.

        Raises
        ------
        ConfigError
            When ``request_id`` was used before with another spec.
        """
        record = new_session_record(spec, request_id, self.limits)
        stored, existing = await self.store.create_session(
            record, max_sessions=self.settings.max_sessions
        )
        if existing:
            if stored.spec_json != record.spec_json:
                raise ConfigError(
                    "request_id",
                    f"{request_id!r} was already used by session {stored.session_id} "
                    "with another spec; use a new request_id for a new session",
                )
            _LOGGER.info(
                "session %s returned again for request id %r",
                stored.session_id,
                request_id,
            )
        else:
            _LOGGER.info(
                "session %s created: loader_id %r, seed %d, %d batches per epoch",
                stored.session_id,
                spec.fields["loader_id"],
                stored.seed,
                stored.batches_per_epoch,
            )
        return stored, existing

    async def live(self, session_id: str) -> LiveSession:
        """Return the live state of a session, reading its row from the store.

        Raises
        ------
        NotFoundError
            When the session is unknown.
        """
        record = await self.store.get_session(session_id)
        live = self._live.get(session_id)
        if live is None:
            live = LiveSession(record=record, loader=build_loader(record, self.limits))
            self._live[session_id] = live
        elif record.generation >= live.record.generation:
            live.record = record
        live.last_used = time.monotonic()
        return live

    def open_stream(self, live: LiveSession, start: int, peer: str) -> OpenStream:
        """Register a new stream of ``live`` starting at global index ``start``."""
        if self.shutting_down:
            raise StreamEndedError(
                grpc.StatusCode.UNAVAILABLE, "server shutting down; reconnect to resume"
            )
        stream = OpenStream(self._next_stream_id, live.record.session_id, start, peer)
        self._next_stream_id += 1
        live.streams.add(stream)
        live.last_used = time.monotonic()
        return stream

    async def close_stream(self, live: LiveSession, stream: OpenStream) -> None:
        """Unregister ``stream`` and wake StreamStarts waiting for it to end."""
        live.streams.discard(stream)
        live.last_used = time.monotonic()
        async with live.stream_closed:
            live.stream_closed.notify_all()

    async def wait_for_streams_to_end(
        self, live: LiveSession, timeout_s: float
    ) -> bool:
        """Wait up to ``timeout_s`` for the running streams of ``live`` to end.

        Returns True when none is running. A client that closed its previous
        stream a moment ago gets it ended here instead of a conflict error.
        """

        async def no_running_streams() -> None:
            async with live.stream_closed:
                await live.stream_closed.wait_for(lambda: not live.running_streams())

        try:
            await asyncio.wait_for(no_running_streams(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def take_over(self, live: LiveSession, stream_id: int) -> None:
        """End the running streams of ``live`` with ABORTED for stream ``stream_id``.

        Returns once an acknowledgement that an ended stream was persisting
        has finished, so the cursor read afterwards is final.
        """
        session_id = live.record.session_id
        async with live.lock:
            for stream in live.running_streams():
                stream.request_end(
                    grpc.StatusCode.ABORTED,
                    f"session {session_id} was taken over by stream {stream_id}, "
                    "which a StreamStart with takeover opened; the committed "
                    "cursor is at batch {cursor}",
                )
                _LOGGER.info(
                    "session %s stream %d taken over by stream %d",
                    session_id,
                    stream.stream_id,
                    stream_id,
                )

    def touch(self, session_id: str) -> None:
        """Mark a cached session as used now, which delays its idle expiry."""
        live = self._live.get(session_id)
        if live is not None:
            live.last_used = time.monotonic()

    def new_stream_id(self) -> int:
        """Return the next stream id, for log lines and messages."""
        return self._next_stream_id

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Drop cached sessions idle for ``idle_timeout_s``; return their ids.

        A session with an open stream or a held lock is never dropped. The
        store keeps every dropped session, and the next call rebuilds its
        loader from the stored row at the same cursor.
        """
        now = time.monotonic() if now is None else now
        expired = []
        for session_id, live in list(self._live.items()):
            idle_s = now - live.last_used
            if live.streams or live.lock.locked():
                continue
            if idle_s < self.settings.idle_timeout_s:
                continue
            del self._live[session_id]
            expired.append(session_id)
            _LOGGER.info(
                "session %s expired after %.0f s idle; its loader was released and "
                "its cursor at batch %d stays stored",
                session_id,
                idle_s,
                live.record.cursor,
            )
        return expired

    async def acknowledge(
        self, live: LiveSession, stream: OpenStream, cursor: int
    ) -> bool:
        """Persist ``cursor`` for an acknowledgement on ``stream``.

        Returns False, writing nothing, when the stream's end was requested
        (the session was restored or closed, or the server is stopping).

        Raises
        ------
        CursorConflictError
            When another writer moved the cursor since this server last did.
        """
        async with live.lock:
            if stream.end_status is not None:
                return False
            live.record = await self.store.set_cursor(
                live.record.session_id,
                cursor,
                expected_generation=live.record.generation,
            )
            return True

    async def snapshot(
        self, session_id: str, label: str
    ) -> tuple[SnapshotRecord, SessionRecord]:
        """Save the committed position of a session under a new snapshot id.

        Returns the snapshot and the session row it was taken from.
        """
        live = await self.live(session_id)
        async with live.lock:
            record = await self.store.get_session(session_id)
            document = state_document(live.loader, record.cursor)
            snapshot = SnapshotRecord(
                snapshot_id=new_snapshot_id(),
                session_id=session_id,
                label=label,
                cursor=record.cursor,
                fingerprint=record.fingerprint,
                state_json=json.dumps(document, sort_keys=True, allow_nan=False),
                created_at=time.time(),
            )
            await self.store.put_snapshot(
                snapshot, max_snapshots=self.settings.max_snapshots_per_session
            )
        _LOGGER.info(
            "session %s snapshot %s saved at batch %d",
            session_id,
            snapshot.snapshot_id,
            snapshot.cursor,
        )
        return snapshot, record

    async def delete_snapshot(
        self, session_id: str, snapshot_id: str
    ) -> SnapshotRecord:
        """Delete one snapshot of a session and return it.

        Raises
        ------
        NotFoundError
            When the session or snapshot is unknown, or the snapshot belongs
            to another session.
        """
        self.touch(session_id)
        snapshot = await self.store.delete_snapshot(session_id, snapshot_id)
        _LOGGER.info(
            "session %s snapshot %s deleted (it was at batch %d)",
            session_id,
            snapshot_id,
            snapshot.cursor,
        )
        return snapshot

    async def restore(
        self,
        session_id: str,
        *,
        snapshot_id: str | None = None,
        state_json: str | None = None,
    ) -> SessionRecord:
        """Move a session's cursor to a snapshot's or a state document's position.

        Raises
        ------
        StateMismatchError
            When the state is of another config, seed or format version.
        StateError
            When the state document is malformed.
        NotFoundError
            When the session or snapshot is unknown.
        """
        live = await self.live(session_id)
        if snapshot_id is not None:
            source = f"snapshot {snapshot_id}"
            snapshot = await self.store.get_snapshot(snapshot_id)
            if snapshot.session_id != session_id:
                # The same message as for an unknown id, so a session's
                # token reveals nothing about other sessions' snapshots.
                raise NotFoundError(f"snapshot {snapshot_id!r} not found")
            text = snapshot.state_json
        elif state_json is not None:
            source = "a state document"
            parse_json_object("state_json", state_json, MAX_STATE_BYTES)
            text = state_json
        else:
            raise ConfigError("source", "is missing; set snapshot_id or state_json")
        cursor = self._cursor_of_state(live.record, parse_state_json(text))
        async with live.lock:
            for stream in live.streams:
                stream.request_end(
                    grpc.StatusCode.ABORTED,
                    f"session {session_id} was restored to batch {cursor}; "
                    "open a new stream",
                )
            live.record = await self.store.set_cursor(session_id, cursor)
        _LOGGER.info(
            "session %s restored from %s to batch %d", session_id, source, cursor
        )
        return live.record

    def _cursor_of_state(self, record: SessionRecord, document: dict[str, Any]) -> int:
        # A fresh loader validates the document exactly as a local restore
        # would, including the move to the next epoch for a batch past the end.
        loader = build_loader(record, self.limits)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader.restore_state(document)
        for warning in caught:
            _LOGGER.warning(
                "session %s restore: %s", record.session_id, warning.message
            )
        epoch, batch = loader.current_epoch, loader.current_batch
        cursor = epoch * loader.batches_per_epoch + batch
        if cursor > MAX_SEED:
            # Stream starts accept global indices up to MAX_SEED, so a cursor
            # past it could be stored but never streamed from.
            raise ConfigError(
                "state_json",
                f"loader_state.current_epoch {epoch} and current_batch {batch} "
                f"put the cursor at global index {cursor}; the accepted range is "
                f"[0, {MAX_SEED}]",
            )
        return cursor

    async def close(self, session_id: str) -> SessionRecord:
        """End a session's streams, then delete it and its snapshots."""
        live = self._live.get(session_id)
        if live is None:
            record = await self.store.delete_session(session_id)
        else:
            async with live.lock:
                for stream in live.streams:
                    stream.request_end(
                        grpc.StatusCode.ABORTED, f"session {session_id} was closed"
                    )
                record = await self.store.delete_session(session_id)
            self._live.pop(session_id, None)
        _LOGGER.info("session %s closed at batch %d", session_id, record.cursor)
        return record

    def begin_shutdown(self) -> int:
        """Ask every open stream to end with UNAVAILABLE; return how many."""
        self.shutting_down = True
        count = 0
        for live in self._live.values():
            for stream in live.streams:
                stream.request_end(
                    grpc.StatusCode.UNAVAILABLE,
                    "server shutting down; reconnect to resume at batch {cursor}",
                )
                count += 1
        return count


def state_document(loader: GMMDataLoader, cursor: int) -> dict[str, Any]:
    """Return the loader's state document positioned at global index ``cursor``."""
    document = loader.state_dict()
    epoch, batch = divmod(cursor, loader.batches_per_epoch)
    document["loader_state"]["current_epoch"] = epoch
    document["loader_state"]["current_batch"] = batch
    return document
