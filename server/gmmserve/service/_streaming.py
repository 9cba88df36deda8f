"""StreamBatches: batches sent ahead of acknowledgements, within a window.

The stream keeps at most ``window`` batches sent but not acknowledged.
Batches are generated and encoded in a thread pool, up to the window ahead,
so numpy work never runs on the event loop. Each Ack is persisted before the
next request is handled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from gmmserve_proto.v1 import gmmserve_pb2 as pb

from gmmserve.config import MAX_SEED
from gmmserve.errors import ConfigError
from gmmserve.generator import ARRAY_NAMES, fingerprint_arrays
from gmmserve.loader import GMMDataLoader
from gmmserve.service._auth import Authenticator
from gmmserve.service._sessions import LiveSession, OpenStream, SessionRegistry
from gmmserve.service._settings import ServerSettings
from gmmserve.service._spec import check_session_id
from gmmserve.service._status import StreamEndedError, require_parsed

__all__ = ["ClientGoneError", "encode_batch", "stream_batches"]

_LOGGER = logging.getLogger(__name__)

_HALF_CLOSE = object()

# Seconds a StreamStart without takeover waits for the session's open stream
# to end before it fails. A client that closes a stream and at once opens
# the next races its own cancellation, which reaches the server a moment
# later, so the wait keeps that client from failing.
STREAM_CONFLICT_WAIT_S = 2.0


class ClientGoneError(Exception):
    """A write to a stream failed because its call can no longer send.

    This happens when the client cancels or disconnects, often during a
    server shutdown. No one is left to receive a status, so the stream's
    closing INFO line records it and the servicer ends the call without one.
    """


def position_message(global_index: int, batches_per_epoch: int) -> pb.Position:
    epoch, batch_index = divmod(global_index, batches_per_epoch)
    return pb.Position(epoch=epoch, batch_index=batch_index, global_index=global_index)


def encode_batch(
    loader: GMMDataLoader, global_index: int, part_size: int
) -> list[pb.StreamBatchesResponse]:
    """Generate one batch and encode it as one Batch or as BatchParts.

    Runs in a worker thread. A batch whose serialized size exceeds
    ``part_size`` bytes becomes ``ceil(size / part_size)`` parts.
    """
    position = position_message(global_index, loader.batches_per_epoch)
    batch = loader.batch_at(position.epoch, position.batch_index)
    arrays = []
    for name in ARRAY_NAMES:
        array = np.ascontiguousarray(batch.arrays[name])
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        arrays.append(
            pb.Array(
                name=name,
                dtype=little.dtype.str,
                shape=little.shape,
                data=little.tobytes(),
            )
        )
    message = pb.Batch(
        position=position, arrays=arrays, fingerprint=fingerprint_arrays(batch.arrays)
    )
    if message.ByteSize() <= part_size:
        return [pb.StreamBatchesResponse(batch=message)]
    payload = message.SerializeToString()
    count = math.ceil(len(payload) / part_size)
    return [
        pb.StreamBatchesResponse(
            part=pb.BatchPart(
                position=position,
                part_index=index,
                part_count=count,
                payload=payload[index * part_size : (index + 1) * part_size],
            )
        )
        for index in range(count)
    ]


class _BatchStream:
    """The state of one StreamBatches call between its start and its end."""

    def __init__(
        self,
        registry: SessionRegistry,
        settings: ServerSettings,
        executor: concurrent.futures.Executor,
        live: LiveSession,
        handle: OpenStream,
        start: int,
        window: int,
        max_batches: int,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.executor = executor
        self.live = live
        self.handle = handle
        self.start = start
        self.window = window
        # Sends stop below MAX_SEED, because the Ack of batch MAX_SEED would
        # move the cursor past the largest global index a state may hold.
        # stream_batches rejects a max_batches that would pass it.
        self.end = start + max_batches if max_batches else MAX_SEED
        self.next_send = start
        # Every batch below this index has been acknowledged; the window
        # counts from here.
        self.acked_through = start
        # The highest index acknowledged on this stream, or None before the
        # first Ack. A lower Ack is rejected, so no stream moves the cursor back.
        self.highest_ack: int | None = None
        self.sent = 0
        self.acked = 0
        self.half_closed = False
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[list[pb.StreamBatchesResponse]]] = {}
        self.next_schedule = start

    def _window_end(self) -> int:
        return min(self.acked_through + self.window, self.end)

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        window_end = self._window_end()
        while self.next_schedule < window_end:
            self.pending[self.next_schedule] = loop.run_in_executor(
                self.executor,
                encode_batch,
                self.live.loader,
                self.next_schedule,
                self.settings.part_size,
            )
            self.next_schedule += 1

    async def run(self, context: grpc.aio.ServicerContext) -> None:
        """Send batches and handle requests until the stream ends."""
        request_task: asyncio.Task[Any] | None = None
        end_task = asyncio.ensure_future(self.handle.wakeup.wait())
        try:
            while True:
                self._raise_if_ended()
                self._schedule()
                if self.acked_through >= self.end:
                    return
                can_send = self.next_send < self._window_end()
                if self.half_closed and not can_send:
                    return
                if request_task is None and not self.half_closed:
                    request_task = asyncio.ensure_future(self.requests.get())
                waits: set[asyncio.Future[Any]] = {end_task}
                if request_task is not None:
                    waits.add(request_task)
                if can_send:
                    waits.add(self.pending[self.next_send])
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                self._raise_if_ended()
                if request_task is not None and request_task.done():
                    request = request_task.result()
                    request_task = None
                    await self._handle_request(request)
                elif can_send and self.pending[self.next_send].done():
                    await self._send(context)
        finally:
            end_task.cancel()
            if request_task is not None:
                request_task.cancel()
            for future in self.pending.values():
                future.cancel()

    def _raise_if_ended(self) -> None:
        if self.handle.end_status is not None:
            code, template = self.handle.end_status
            raise StreamEndedError(
                code, template.format(cursor=self.live.record.cursor)
            )

    async def _send(self, context: grpc.aio.ServicerContext) -> None:
        messages = await self.pending.pop(self.next_send)
        # NOTE: a write waits while the client does not read (flow control),
        # and an end request is seen only after it, so at shutdown such a
        # stream lasts until the grace period cancels it.
        for message in messages:
            try:
                await context.write(message)
            except Exception as error:
                # grpcio 1.85 raises its private ExecuteBatchError when the
                # call is gone. A valid message fails for no other reason, so
                # any error here means that the client left.
                raise ClientGoneError(
                    f"batch {self.next_send} could not be sent: {error!r}"
                ) from error
        self.next_send += 1
        self.sent += 1

    async def _handle_request(self, request: Any) -> None:
        if request is _HALF_CLOSE:
            self.half_closed = True
            return
        require_parsed(request)
        if request.WhichOneof("kind") != "ack":
            raise ConfigError(
                "request",
                "only the first request may be a StreamStart; later ones are Acks",
            )
        index = request.ack.global_index
        if not self.start - 1 <= index < self.next_send:
            low = max(self.start - 1, 0)
            if self.next_send == self.start and self.start == 0:
                accepted = "none, because no batch has been sent yet"
            else:
                accepted = (
                    f"[{low}, {self.next_send - 1}], from the stream's start - 1 "
                    "to the last batch sent"
                )
            raise ConfigError(
                "ack.global_index",
                f"{index} is out of range; the accepted range is {accepted}",
            )
        if self.highest_ack is not None and index <= self.highest_ack:
            if index < self.highest_ack:
                raise ConfigError(
                    "ack.global_index",
                    f"{index} is below {self.highest_ack}, the highest index this "
                    "stream acknowledged; acknowledgements must not decrease. To "
                    "rewind, open a new stream with start_global_index",
                )
            return
        self.highest_ack = index
        if await self.registry.acknowledge(self.live, self.handle, index + 1):
            self.acked_through = max(self.acked_through, index + 1)
            self.acked += 1


async def _read_requests(
    requests: AsyncIterator[pb.StreamBatchesRequest], queue: asyncio.Queue[Any]
) -> None:
    async for request in requests:
        queue.put_nowait(request)
    queue.put_nowait(_HALF_CLOSE)


def _check_start(start: pb.StreamStart, settings: ServerSettings) -> tuple[int, int]:
    check_session_id("start.session_id", start.session_id)
    window = start.window or settings.default_window
    if window > settings.max_window:
        raise ConfigError(
            "start.window",
            f"{window} is out of range; accepted range is [1, {settings.max_window}] "
            f"(0 selects {settings.default_window})",
        )
    if start.HasField("start_global_index") and start.start_global_index >= MAX_SEED:
        raise ConfigError(
            "start.start_global_index",
            f"{start.start_global_index} is out of range; accepted range is "
            f"[0, {MAX_SEED - 1}], because global indices and cursors stop at "
            f"2^53 - 1 = {MAX_SEED}",
        )
    if start.max_batches > MAX_SEED:
        raise ConfigError(
            "start.max_batches",
            f"{start.max_batches} is out of range; accepted range is [0, {MAX_SEED}]",
        )
    return window, start.max_batches


async def _read_start(
    requests: AsyncIterator[pb.StreamBatchesRequest],
) -> pb.StreamStart:
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        first = pb.StreamBatchesRequest()
    require_parsed(first)
    if first.WhichOneof("kind") != "start":
        raise ConfigError(
            "start", "is missing; the first request must be a StreamStart"
        )
    return first.start


def _outcome(error: BaseException) -> str:
    if isinstance(error, StreamEndedError):
        return error.code.name
    if isinstance(error, ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT.name
    if isinstance(error, ClientGoneError):
        return "client left"
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    return type(error).__name__


async def _claim_session(
    registry: SessionRegistry, live: LiveSession, takeover: bool
) -> None:
    """Return once no other stream of ``live`` runs, ending them on takeover.

    Raises
    ------
    StreamEndedError
        FAILED_PRECONDITION naming the open stream, when another stream
        still runs after the wait and ``takeover`` is false.
    """
    stream_id = registry.new_stream_id()
    waited = False
    # Each pass re-checks after its await, because another StreamStart of
    # the same session may have registered meanwhile.
    while running := live.running_streams():
        if takeover:
            await registry.take_over(live, stream_id)
        elif not waited:
            await registry.wait_for_streams_to_end(live, STREAM_CONFLICT_WAIT_S)
            waited = True
        else:
            other = min(running, key=lambda stream: stream.stream_id)
            raise StreamEndedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {live.record.session_id} already has open stream "
                f"{other.stream_id} (started at batch {other.start}, peer "
                f"{other.peer}); close it first, or set takeover=true in "
                "StreamStart to end it with ABORTED and start this one",
            )


async def stream_batches(
    registry: SessionRegistry,
    settings: ServerSettings,
    authenticator: Authenticator,
    executor: concurrent.futures.Executor,
    requests: AsyncIterator[pb.StreamBatchesRequest],
    context: grpc.aio.ServicerContext,
) -> None:
    """Serve one StreamBatches call; errors propagate for the caller to map."""
    start_request = await _read_start(requests)
    window, max_batches = _check_start(start_request, settings)
    authenticator.authorize_session(
        context, start_request.session_id, allow_operator=False
    )
    if registry.open_stream_count >= settings.max_streams:
        raise StreamEndedError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server has {settings.max_streams} open streams, its limit of "
            "max_streams; retry later",
        )

    live = await registry.live(start_request.session_id)
    await _claim_session(registry, live, start_request.takeover)
    session_id = live.record.session_id
    if start_request.HasField("start_global_index"):
        start = start_request.start_global_index
    else:
        start = live.record.cursor
        if start >= MAX_SEED:
            raise ConfigError(
                "start.start_global_index",
                f"is absent and the committed cursor {start} is at the last "
                f"global index, 2^53 - 1 = {MAX_SEED}, so no batch is left to "
                "send; restore a snapshot or pass a start_global_index below it",
            )
    if max_batches > MAX_SEED - start:
        raise ConfigError(
            "start.max_batches",
            f"{max_batches} is out of range for a stream that starts at batch "
            f"{start}; the accepted range is [0, {MAX_SEED - start}], so that the "
            f"cursor stays within 2^53 - 1 = {MAX_SEED}",
        )
    handle = registry.open_stream(live, start, context.peer())
    stream = _BatchStream(
        registry, settings, executor, live, handle, start, window, max_batches
    )
    reader = asyncio.ensure_future(_read_requests(requests, stream.requests))
    _LOGGER.info(
        "session %s stream %d opened at batch %d, window %d, max_batches %d, "
        "takeover %s, peer %s",
        session_id,
        handle.stream_id,
        start,
        window,
        max_batches,
        start_request.takeover,
        handle.peer,
    )

    outcome = grpc.StatusCode.OK.name
    try:
        await stream.run(context)
    except BaseException as error:
        outcome = _outcome(error)
        raise
    finally:
        reader.cancel()
        await registry.close_stream(live, handle)
        _LOGGER.info(
            "session %s stream %d closed (%s): %d batches sent, %d acknowledged, "
            "cursor at batch %d",
            session_id,
            handle.stream_id,
            outcome,
            stream.sent,
            stream.acked,
            live.record.cursor,
        )
