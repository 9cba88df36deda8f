"""BatchStream: iterate a session's batches, acknowledge them, resume on failure."""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import grpc
from gmmserve_proto.v1 import gmmserve_pb2 as pb

from gmmserve_client._batch import Batch, PartAssembler, decode_batch
from gmmserve_client._checks import MAX_GLOBAL_INDEX, MAX_UINT32, check_int
from gmmserve_client._errors import (
    BatchIntegrityError,
    GmmServeClientError,
    SessionNotFound,
    StreamInterrupted,
    from_rpc_error,
)
from gmmserve_client._policy import ReconnectPolicy

if TYPE_CHECKING:
    from gmmserve_client._client import Session

__all__ = ["AckMode", "BatchStream"]

_LOGGER = logging.getLogger(__name__)

AckMode = Literal["auto", "manual"]

# The StreamBatches callable of a channel. Its response deserializer
# returns (serialized size, StreamBatchesResponse) pairs.
StreamCallable = Callable[..., Any]

# Marks the end of a call's request stream (the client half-closes).
_END_OF_REQUESTS = None

# How often close() checks the committed cursor while it waits for the
# server to process the final acknowledgement, and for how long at most.
_CLOSE_POLL_S = 0.02
_CLOSE_TIMEOUT_S = 5.0


def _request_iterator(
    start: pb.StreamBatchesRequest,
    requests: queue.SimpleQueue[pb.StreamBatchesRequest | None],
) -> Iterator[pb.StreamBatchesRequest]:
    yield start
    while True:
        request = requests.get()
        if request is _END_OF_REQUESTS:
            return
        yield request


class _Connection:
    """One StreamBatches call and the queue that feeds its request stream."""

    def __init__(
        self, call: Any, requests: queue.SimpleQueue[Any], start: int | None
    ) -> None:
        self.call = call
        self.requests = requests
        self.done = threading.Event()
        call.add_done_callback(lambda _call: self.done.set())
        # The global index of the call's first batch: the requested start,
        # or, for a call that starts at the committed cursor, the first batch
        # received. The server accepts acknowledgements from start - 1 on.
        self.start = start
        self.acked: int | None = None
        self.half_closed = False

    def send_ack(self, global_index: int) -> bool:
        """Queue an Ack; return False when this call cannot carry it."""
        if self.half_closed or self.done.is_set():
            return False
        if self.start is None or global_index < self.start - 1:
            return False
        if self.acked is not None and global_index <= self.acked:
            return True
        ack = pb.StreamBatchesRequest(ack=pb.Ack(global_index=global_index))
        self.requests.put(ack)
        self.acked = global_index
        return True

    def half_close(self) -> None:
        if not self.half_closed:
            self.half_closed = True
            self.requests.put(_END_OF_REQUESTS)

    def cancel(self) -> None:
        self.half_close()
        self.call.cancel()


class BatchStream(Iterator[Batch]):
    """An iterator over a session's batches; see :meth:`Session.batches`.

    Acknowledgement: with ``ack="auto"`` a batch is acknowledged when the
    next one is requested, or when the stream is closed after the batch
    was yielded. With ``ack="manual"`` only :meth:`ack` acknowledges, and
    ``next`` raises :class:`GmmServeClientError` while ``window`` yielded
    batches are unacknowledged, because the server sends no more until then.
    Acknowledging batch g marks every batch up to g as consumed, so the
    server's committed cursor becomes g + 1.

    When the server becomes UNAVAILABLE the stream reconnects following its
    :class:`ReconnectPolicy` and requests the batch after the last one it
    received, so no batch is lost or repeated.

    A BatchStream is not thread-safe: use it from one thread.
    """

    def __init__(
        self,
        session: Session,
        open_call: StreamCallable,
        *,
        start: int | None,
        max_batches: int | None,
        window: int,
        ack: AckMode,
        reconnect: ReconnectPolicy,
        timeout_s: float | None = None,
        takeover: bool = False,
    ) -> None:
        # A stream sends no batch at 2^53 - 1, whose acknowledgement would
        # move the cursor past the largest global index.
        if start is not None:
            check_int("start", start, 0, MAX_GLOBAL_INDEX - 1)
        if max_batches is not None:
            check_int("max_batches", max_batches, 1, MAX_GLOBAL_INDEX)
        if start is not None and max_batches is not None:
            check_int("max_batches", max_batches, 1, MAX_GLOBAL_INDEX - start)
        check_int("window", window, 1, MAX_UINT32)
        if ack not in ("auto", "manual"):
            raise ValueError(f"ack must be 'auto' or 'manual', got {ack!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(
                f"timeout_s must be None or greater than 0, got {timeout_s!r}"
            )

        self._session = session
        self._open_call = open_call
        self._start = start
        self._remaining = max_batches
        self._window = window
        self._auto_ack = ack == "auto"
        self._reconnect = reconnect
        self._timeout_s = timeout_s
        self._takeover = bool(takeover)
        self._assembler = PartAssembler()
        self._pending_bytes = 0
        self._connection: _Connection | None = None
        self._closed = False
        self._last_yielded: int | None = None
        self._consumed: int | None = None
        self.last_received: int | None = None
        """Global index of the last batch received, or None before the first."""
        self.batches_received = 0
        """Number of batches received and verified."""
        self.bytes_received = 0
        """Total size of the serialized responses received."""
        self.reconnects = 0
        """Number of successful reconnects after UNAVAILABLE."""

    @property
    def session_id(self) -> str:
        """The id of the session this stream reads."""
        return self._session.id

    @property
    def closed(self) -> bool:
        """Whether the stream was closed, by the caller, its end or an error."""
        return self._closed

    def __iter__(self) -> BatchStream:
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        if self._auto_ack and self._last_yielded is not None:
            self._acknowledge(self._last_yielded)
        if self._remaining == 0:
            self.close()
            raise StopIteration
        if not self._auto_ack:
            self._raise_if_window_full()
        try:
            batch = self._receive()
        except BaseException:
            self._abort()
            raise
        if batch is None:
            self.close()
            raise StopIteration
        self._last_yielded = batch.global_index
        if self._remaining is not None:
            self._remaining -= 1
        return batch

    def _raise_if_window_full(self) -> None:
        """Raise instead of waiting for a batch the server will not send.

        The server sends at most ``window`` batches past the call's last
        acknowledgement (or its start), so in manual mode a consumer with
        that many unacknowledged batches would wait forever.
        """
        connection = self._connection
        # An ended call is left to _receive, which raises its status.
        if connection is None or connection.start is None or connection.done.is_set():
            return
        if self.last_received is None or self.last_received < connection.start:
            return
        first_unacked = connection.start
        if connection.acked is not None:
            first_unacked = max(first_unacked, connection.acked + 1)
        unacked = self.last_received - first_unacked + 1
        if unacked < self._window:
            return
        raise GmmServeClientError(
            f"session {self.session_id}: batches {first_unacked} to "
            f"{self.last_received} were yielded but not acknowledged, which fills "
            f"the stream's window of {self._window}, so the server sends no more "
            "until an acknowledgement. In manual ack mode call stream.ack(batch) "
            "on the last batch consumed before the next next(), or open the "
            "stream with a larger window"
        )

    def ack(self, batch: Batch | int) -> None:
        """Acknowledge a batch and every batch before it.

        Parameters
        ----------
        batch : Batch or int
            A batch this stream yielded, or its global index. Acknowledging
            a batch at or before an earlier acknowledgement does nothing.

        Raises
        ------
        ValueError
            When the batch was not yet yielded by this stream.
        GmmServeClientError
            When the stream is closed.
        """
        index = batch.global_index if isinstance(batch, Batch) else int(batch)
        if self._closed:
            raise GmmServeClientError(
                f"cannot acknowledge batch {index}: the stream of session "
                f"{self.session_id} is closed"
            )
        if self._last_yielded is None or index > self._last_yielded:
            raise ValueError(
                f"cannot acknowledge batch {index}: the last batch yielded is "
                f"{self._last_yielded}"
            )
        self._acknowledge(index)

    def close(self) -> None:
        """Acknowledge the last yielded batch (auto mode) and end the call.

        Closing waits up to 5 seconds for the server to commit the final
        acknowledgement, and logs a warning when it does not.
        """
        if self._closed:
            return
        self._closed = True
        if self._auto_ack and self._last_yielded is not None:
            self._acknowledge(self._last_yielded)
        connection = self._connection
        self._connection = None
        self._session._stream_closed(self)
        if connection is None:
            return
        try:
            self._wait_for_commit(connection)
        finally:
            connection.cancel()
            _LOGGER.info(
                "session %s: stream closed after %d batches (last %s)",
                self.session_id,
                self.batches_received,
                self.last_received,
            )

    def _abort(self) -> None:
        """Close after an error without waiting for the server."""
        self._closed = True
        connection = self._connection
        self._connection = None
        if connection is not None:
            connection.cancel()
        self._session._stream_closed(self)

    def _acknowledge(self, index: int) -> None:
        if self._consumed is not None and index <= self._consumed:
            return
        self._consumed = index
        connection = self._connection
        if connection is not None and not connection.send_ack(index):
            _LOGGER.debug(
                "session %s: acknowledgement of batch %d deferred because the call "
                "cannot carry it",
                self.session_id,
                index,
            )

    def _wait_for_commit(self, connection: _Connection) -> None:
        """Half-close and wait until the server commits the last acknowledgement."""
        target = connection.acked
        if self._consumed is not None and (target is None or target < self._consumed):
            _LOGGER.warning(
                "session %s: batch %d was consumed but its stream could not carry "
                "the acknowledgement, so the committed cursor stays behind it",
                self.session_id,
                self._consumed,
            )
        connection.half_close()
        if target is None:
            return
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        polls = 0
        while time.monotonic() < deadline:
            done = connection.done.wait(_CLOSE_POLL_S)
            polls += 1
            if (done or polls % 5 == 0) and self._committed_at_least(target + 1):
                return
            if done:
                break
        _LOGGER.warning(
            "session %s: the server did not commit the acknowledgement of batch %d "
            "before the stream ended or %.1f s passed",
            self.session_id,
            target,
            _CLOSE_TIMEOUT_S,
        )

    def _committed_at_least(self, global_index: int) -> bool:
        try:
            position = self._session.info().position
        except GmmServeClientError:
            return False
        return position.global_index >= global_index

    def _connect(self, resuming: bool) -> _Connection:
        if self.last_received is not None:
            start: int | None = self.last_received + 1
        else:
            start = self._start
        # A reconnect replaces this stream's own earlier call, which the
        # server may still count as open, so it takes the session over.
        stream_start = pb.StreamStart(
            session_id=self.session_id,
            window=self._window,
            max_batches=self._remaining or 0,
            takeover=self._takeover or resuming,
        )
        if start is not None:
            stream_start.start_global_index = start

        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        first = pb.StreamBatchesRequest(start=stream_start)
        call = self._open_call(
            _request_iterator(first, requests),
            timeout=self._timeout_s,
            metadata=self._session._metadata(),
        )
        _LOGGER.info(
            "session %s: stream opened at %s, window %d",
            self.session_id,
            "the committed cursor" if start is None else f"batch {start}",
            self._window,
        )

        connection = _Connection(call, requests, start)
        # A stream dropped without close() still ends its call and releases
        # the thread that reads its request queue.
        weakref.finalize(self, connection.cancel)
        if self._consumed is not None:
            # After a reconnect, repeat the latest acknowledgement: the
            # failed call may have lost it, and the server accepts start - 1.
            connection.send_ack(self._consumed)
        return connection

    def _receive(self) -> Batch | None:
        """Return the next verified batch, or None when the server ended the stream."""
        failures = 0
        failed_at: float | None = None
        while True:
            if self._connection is None:
                self._connection = self._connect(resuming=failures > 0)
            connection = self._connection
            try:
                wire_bytes, response = next(connection.call)
            except StopIteration:
                if self._assembler.pending:
                    raise BatchIntegrityError(
                        "the stream ended in the middle of a batch's parts"
                    ) from None
                return None
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(error, SessionNotFound) from error
                connection.cancel()
                self._connection = None
                self._assembler = PartAssembler()
                self._pending_bytes = 0
                failures += 1
                if failed_at is None:
                    failed_at = time.monotonic()
                self._sleep_before_reconnect(failures, failed_at, error)
                continue
            batch = self._accept(connection, wire_bytes, response)
            if batch is not None:
                if failures:
                    self.reconnects += 1
                    _LOGGER.info(
                        "session %s: stream resumed at batch %d after %d attempts",
                        self.session_id,
                        batch.global_index,
                        failures,
                    )
                return batch

    def _sleep_before_reconnect(
        self, failures: int, failed_at: float, error: grpc.RpcError
    ) -> None:
        policy = self._reconnect
        elapsed = time.monotonic() - failed_at
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        attempts_spent = (
            policy.max_attempts is not None and failures > policy.max_attempts
        )
        if attempts_spent or elapsed >= policy.max_elapsed_s:
            raise self._interrupted(failures - 1, elapsed, details)
        delay = min(
            policy.backoff_s(failures), max(0.0, policy.max_elapsed_s - elapsed)
        )
        _LOGGER.warning(
            "session %s: stream unavailable after batch %s (%s); reconnect attempt %d "
            "in %.2f s",
            self.session_id,
            self.last_received,
            details,
            failures,
            delay,
        )
        time.sleep(delay)

    def _interrupted(
        self, attempts: int, elapsed: float, details: str
    ) -> StreamInterrupted:
        """Build the error that ends a stream whose reconnects ran out."""
        policy = self._reconnect
        consumed = self._consumed
        if consumed is not None:
            resume = consumed + 1
            where = (
                f"The last batch consumed was {consumed}, and its acknowledgement "
                "may not be committed, so a new stream at the committed cursor "
                "could repeat it. Resume with "
                f"session.batches(start={resume})."
            )
        elif self._start is not None:
            resume = self._start
            where = (
                f"No batch was consumed. Resume with session.batches(start={resume})."
            )
        else:
            resume = None
            where = (
                "No batch was consumed. Resume with session.batches(), which "
                "starts at the committed cursor."
            )
        return StreamInterrupted(
            f"session {self.session_id}: stream could not be resumed after batch "
            f"{self.last_received} within {attempts} reconnect attempts and "
            f"{elapsed:.1f} s (ReconnectPolicy max_attempts {policy.max_attempts}, "
            f"max_elapsed_s {policy.max_elapsed_s}); last error: {details}. "
            f"{where}",
            grpc.StatusCode.UNAVAILABLE,
            last_consumed=consumed,
            resume_start=resume,
        )

    def _accept(
        self,
        connection: _Connection,
        wire_bytes: int,
        response: pb.StreamBatchesResponse,
    ) -> Batch | None:
        """Decode one response; return a batch once all of it has arrived."""
        self.bytes_received += wire_bytes
        self._pending_bytes += wire_bytes
        kind = response.WhichOneof("kind")
        if kind == "batch":
            if self._assembler.pending:
                raise BatchIntegrityError(
                    f"batch {response.batch.position.global_index} arrived whole while "
                    "the parts of an earlier batch were incomplete"
                )
            message = response.batch
        elif kind == "part":
            assembled = self._assembler.add(response.part)
            if assembled is None:
                return None
            message = assembled
        else:
            raise BatchIntegrityError(
                f"stream response of kind {kind!r}; expected 'batch' or 'part'"
            )
        index = message.position.global_index
        expected = self._expected_index()
        if expected is not None and index != expected:
            raise BatchIntegrityError(
                f"session {self.session_id}: received batch {index} where batch "
                f"{expected} was expected"
            )
        batch = decode_batch(message, self._pending_bytes)
        self._pending_bytes = 0
        if connection.start is None:
            connection.start = index
        self.last_received = index
        self.batches_received += 1
        return batch

    def _expected_index(self) -> int | None:
        if self.last_received is not None:
            return self.last_received + 1
        return self._start
