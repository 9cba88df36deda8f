"""The GmmService servicer: requests in, registry calls, responses out."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import AsyncIterator

import grpc
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

from gmmserve.errors import ConfigError
from gmmserve.service._auth import Authenticator
from gmmserve.service._sessions import SessionRegistry
from gmmserve.service._settings import ServerSettings
from gmmserve.service._spec import (
    check_id,
    check_label,
    check_session_id,
    check_snapshot_id,
    normalize_spec,
    spec_message,
)
from gmmserve.service._status import status_for, unary_errors
from gmmserve.service._streaming import (
    ClientGoneError,
    position_message,
    stream_batches,
)
from gmmserve.store import SessionRecord, SnapshotRecord

__all__ = ["GmmServicer"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def session_info(record: SessionRecord) -> pb.SessionInfo:
    """Convert a session row to its SessionInfo message."""
    return pb.SessionInfo(
        session_id=record.session_id,
        spec=spec_message(record.spec_json),
        seed=record.seed,
        batches_per_epoch=record.batches_per_epoch,
        position=position_message(record.cursor, record.batches_per_epoch),
        fingerprint=record.fingerprint,
        resolved_config_json=record.resolved_config_json,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def snapshot_info(record: SnapshotRecord, batches_per_epoch: int) -> pb.SnapshotInfo:
    """Convert a snapshot row to its SnapshotInfo message."""
    return pb.SnapshotInfo(
        snapshot_id=record.snapshot_id,
        session_id=record.session_id,
        label=record.label,
        position=position_message(record.cursor, batches_per_epoch),
        fingerprint=record.fingerprint,
        created_at=record.created_at,
        state_json=record.state_json,
    )


class GmmServicer(pb_grpc.GmmServiceServicer):
    """Serves GmmService from a session registry.

    Every method checks its request fields, then the caller's token, before
    it touches the store. A session id of the wrong form is therefore
    INVALID_ARGUMENT, and a well-formed id without a valid token is
    PERMISSION_DENIED whether or not the session exists.

    Parameters
    ----------
    registry : SessionRegistry
    settings : ServerSettings
    authenticator : Authenticator
    executor : Executor
        Runs batch generation and encoding.
    """

    def __init__(
        self,
        registry: SessionRegistry,
        settings: ServerSettings,
        authenticator: Authenticator,
        executor: concurrent.futures.Executor,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.authenticator = authenticator
        self.executor = executor

    def _authorize(self, context: grpc.aio.ServicerContext, session_id: str) -> str:
        return self.authenticator.authorize_session(context, session_id)

    @unary_errors
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        request_id = None
        if request.request_id:
            request_id = check_id("request_id", request.request_id)
        spec = normalize_spec(request.spec, self.settings.limits)
        record, existing = await self.registry.create(spec, request_id)
        return pb.CreateSessionResponse(
            session=session_info(record),
            existing=existing,
            session_token=self.authenticator.session_token(record.session_id),
        )

    @unary_errors
    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionInfo:
        session_id = check_session_id("session_id", request.session_id)
        self._authorize(context, session_id)
        self.registry.touch(session_id)
        return session_info(await self.registry.store.get_session(session_id))

    @unary_errors
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = None
        if request.page_token:
            after = check_session_id("page_token", request.page_token)
        self.authenticator.authorize_operator(context, "ListSessions")
        records = await self.registry.store.list_sessions(page_size, after)
        next_token = records[-1].session_id if len(records) == page_size else ""
        return pb.ListSessionsResponse(
            sessions=[session_info(record) for record in records],
            next_page_token=next_token,
        )

    @unary_errors
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        session_id = check_session_id("session_id", request.session_id)
        self._authorize(context, session_id)
        record = await self.registry.close(session_id)
        return pb.CloseSessionResponse(
            position=position_message(record.cursor, record.batches_per_epoch)
        )

    async def StreamBatches(
        self,
        request_iterator: AsyncIterator[pb.StreamBatchesRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            await stream_batches(
                self.registry,
                self.settings,
                self.authenticator,
                self.executor,
                request_iterator,
                context,
            )
        except grpc.aio.AbortError:
            raise
        except ClientGoneError as error:
            # A client that leaves, during a shutdown or not, is no server
            # error, and the call cannot carry a status anymore. The stream's
            # closing INFO line already names the session and the outcome.
            _LOGGER.debug(
                "StreamBatches ended because the client left (server shutting "
                "down: %s): %s",
                "yes" if self.registry.shutting_down else "no",
                error,
            )
        except Exception as error:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(error, "StreamBatches")
            await context.abort(code, message)

    @unary_errors
    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.SnapshotInfo:
        session_id = check_session_id("session_id", request.session_id)
        label = check_label(request.label)
        self._authorize(context, session_id)
        snapshot, record = await self.registry.snapshot(session_id, label)
        return snapshot_info(snapshot, record.batches_per_epoch)

    @unary_errors
    async def Restore(
        self, request: pb.RestoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.RestoreResponse:
        session_id = check_session_id("session_id", request.session_id)
        source = request.WhichOneof("source")
        if source == "snapshot_id":
            snapshot_id = check_snapshot_id("snapshot_id", request.snapshot_id)
            self._authorize(context, session_id)
            record = await self.registry.restore(session_id, snapshot_id=snapshot_id)
        elif source == "state_json":
            if not request.state_json:
                raise ConfigError(
                    "state_json", "is empty; pass a state document's JSON text"
                )
            self._authorize(context, session_id)
            record = await self.registry.restore(
                session_id, state_json=request.state_json
            )
        else:
            raise ConfigError("source", "is missing; set snapshot_id or state_json")
        return pb.RestoreResponse(session=session_info(record))

    @unary_errors
    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSnapshotsResponse:
        session_id = check_session_id("session_id", request.session_id)
        self._authorize(context, session_id)
        self.registry.touch(session_id)
        record = await self.registry.store.get_session(session_id)
        snapshots = await self.registry.store.list_snapshots(session_id)
        return pb.ListSnapshotsResponse(
            snapshots=[
                snapshot_info(snapshot, record.batches_per_epoch)
                for snapshot in snapshots
            ]
        )

    @unary_errors
    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSnapshotResponse:
        session_id = check_session_id("session_id", request.session_id)
        snapshot_id = check_snapshot_id("snapshot_id", request.snapshot_id)
        self._authorize(context, session_id)
        snapshot = await self.registry.delete_snapshot(session_id, snapshot_id)
        record = await self.registry.store.get_session(session_id)
        return pb.DeleteSnapshotResponse(
            snapshot=snapshot_info(snapshot, record.batches_per_epoch)
        )
