"""Client and Session: the gmmserve calls over one gRPC channel."""

from __future__ import annotations

import json
import logging
import os
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

from gmmserve_client._batch import Batch
from gmmserve_client._checks import (
    MAX_BASE_SEED,
    MAX_GLOBAL_INDEX,
    MAX_UINT32,
    check_int,
)
from gmmserve_client._errors import (
    DeadlineExceeded,
    GmmServeClientError,
    NotFound,
    SessionNotFound,
    Unavailable,
    from_rpc_error,
)
from gmmserve_client._policy import SERVICE_NAME, ReconnectPolicy, RetryPolicy
from gmmserve_client._stream import AckMode, BatchStream
from gmmserve_client._types import Position, SessionInfo, SnapshotInfo

__all__ = ["Client", "Session"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# PEM contents as bytes or text, or the path of a PEM file.
PemSource = bytes | str | os.PathLike[str]


def _read_pem(source: PemSource | None, name: str) -> bytes | None:
    """Return PEM bytes from PEM contents or a file path."""
    if source is None or isinstance(source, bytes):
        return source
    if isinstance(source, str) and "-----BEGIN" in source:
        return source.encode()
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise ValueError(
            f"{name}: cannot read PEM file {str(source)!r}: {error.strerror}"
        ) from None


def _check_token(token: str | None, name: str) -> str | None:
    if token is None:
        return None
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        # The message never contains the token.
        raise ValueError(
            f"{name} must be a non-empty printable ASCII string without spaces"
        )
    return token


def _bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    if token is None:
        return None
    return (("authorization", f"Bearer {token}"),)


def _parse_stream_response(raw: bytes) -> tuple[int, pb.StreamBatchesResponse]:
    """Parse a StreamBatches response, keeping its serialized size."""
    return len(raw), pb.StreamBatchesResponse.FromString(raw)


class Client:
    """A connection to a gmmserve server.

    Parameters
    ----------
    target : str
        ``"host:port"`` or any gRPC target string.
    timeout_s : float, default 10.0
        Deadline of each unary call, retries included, in seconds.
    retry : RetryPolicy, optional
        gRPC's retry policy for unary calls on UNAVAILABLE.
    reconnect : ReconnectPolicy, optional
        How batch streams reconnect on UNAVAILABLE.
    credentials : grpc.ChannelCredentials, optional
        When given, the channel uses TLS with these credentials; otherwise
        it is insecure unless a TLS argument below is given.
    max_message_bytes : int, default 64 MiB
        Largest message the channel receives. Batches larger than the
        server's message limit arrive as BatchParts, each within that limit.
    root_certificates : bytes, str or path, optional
        PEM certificates of the CAs that sign the server's certificate, as
        contents or a file path. Any of the three TLS arguments turns TLS
        on; without root certificates the system's trust store is used.
    certificate_chain, private_key : bytes, str or path, optional
        The client's PEM certificate chain and key, for a server that
        requires mutual TLS. Give both or neither.
    operator_token : str, optional
        The server's operator token. Calls on sessions whose token this
        client does not know, and :meth:`list_sessions`, send it.
    tls_server_name : str, optional
        Host name to verify the server's certificate against, when it
        differs from the host in ``target``.

    Examples
    --------
    >>> with Client("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     session = client.create_session(experiment="standard", seed=7)
    ...     for batch in session.batches(max_batches=3):
    ...         print(batch.global_index, batch.data.shape)
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        reconnect: ReconnectPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        root_certificates: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        operator_token: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be greater than 0, got {timeout_s!r}")
        if max_message_bytes < 1:
            raise ValueError(
                f"max_message_bytes must be 1 or more, got {max_message_bytes!r}"
            )
        if (certificate_chain is None) != (private_key is None):
            raise ValueError(
                "certificate_chain and private_key must be given together for "
                "mutual TLS"
            )
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self._operator_token = _check_token(operator_token, "operator_token")
        # Session tokens returned by CreateSession, by session id.
        self._tokens: dict[str, str] = {}
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self.retry.service_config()),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_server_name is not None:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        tls_given = any(
            value is not None
            for value in (root_certificates, certificate_chain, private_key)
        )
        if credentials is None and tls_given:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_certificates, "root_certificates"),
                private_key=_read_pem(private_key, "private_key"),
                certificate_chain=_read_pem(certificate_chain, "certificate_chain"),
            )
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        # The generated gRPC module is untyped.
        stub_class: Any = pb_grpc.GmmServiceStub
        self._stub = stub_class(self._channel)
        self._stream_batches = self._channel.stream_stream(
            f"/{SERVICE_NAME}/StreamBatches",
            request_serializer=pb.StreamBatchesRequest.SerializeToString,
            response_deserializer=_parse_stream_response,
        )

    def __repr__(self) -> str:
        # Tokens stay out of the repr, which ends up in logs.
        return f"Client({self.target!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; open streams end with CANCELLED."""
        self._channel.close()

    def wait_until_ready(self, timeout_s: float) -> None:
        """Block until the channel connects.

        Raises
        ------
        DeadlineExceeded
            When the server cannot be reached within ``timeout_s`` seconds.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise DeadlineExceeded(
                f"server at {self.target} was not reachable within {timeout_s} s"
            ) from None

    def _token_for(self, session_id: str | None) -> str | None:
        """Return the session's token when known, else the operator token."""
        if session_id is not None and session_id in self._tokens:
            return self._tokens[session_id]
        return self._operator_token

    def _unary(
        self,
        method_name: str,
        request: Any,
        not_found: type[NotFound] = NotFound,
        token: str | None = None,
    ) -> Any:
        method: Callable[..., Any] = getattr(self._stub, method_name)
        try:
            return method(request, timeout=self.timeout_s, metadata=_bearer(token))
        except grpc.RpcError as error:
            converted = from_rpc_error(error, not_found)
            if isinstance(converted, (Unavailable, DeadlineExceeded)):
                # These usually come from the channel, not the service, so
                # the message needs the address, the deadline and the attempts.
                converted = type(converted)(
                    f"{method_name} to {self.target} failed after up to "
                    f"{self.retry.max_attempts} attempts within a {self.timeout_s} s "
                    f"deadline: {converted.details}. Check that the server is "
                    "running at that address.",
                    converted.code,
                )
            raise converted from error

    def create_session(
        self,
        config: Mapping[str, Any] | str | None = None,
        *,
        experiment: str | None = None,
        seed: int | None = None,
        loader_id: str = "default",
        batch_size: int = 16,
        samples_per_epoch: int = 1000,
        fixed_data: bool = False,
        request_id: str | None = None,
    ) -> Session:
        """Create a session on the server.

        Parameters
        ----------
        config : dict or str, optional
            A data config as a dict or its JSON text. Exactly one of
            ``config`` and ``experiment`` is required.
        experiment : str, optional
            The name of a bundled experiment config, such as ``"standard"``.
        seed : int, optional
            Base seed; when None the config's ``random_seed`` is used, and
            when that is null too the server chooses one.
        loader_id : str, default "default"
            Keys the random stream, so "train" and "val" differ.
        batch_size : int, default 16
            Datasets per batch.
        samples_per_epoch : int, default 1000
            Datasets per epoch.
        fixed_data : bool, default False
            Every epoch repeats the batches of epoch 0.
        request_id : str, optional
            Makes the call idempotent: a second call with the same id and
            settings returns the first session. A random id is used when
            None, so gRPC's retries cannot create two sessions.

        Raises
        ------
        ValueError, TypeError
            When ``seed`` is outside [0, 2^53 - 1 - 10^6], ``batch_size``
            outside [1, 2^32 - 1] or ``samples_per_epoch`` outside
            [1, 2^53 - 1], before any call; the message names the argument.
        InvalidArgument
            When the server rejects a setting or the config (its limits
            apply too); the message names it.
        """
        if (config is None) == (experiment is None):
            raise ValueError(
                "exactly one of config and experiment is required, got "
                f"config={config!r}, experiment={experiment!r}"
            )
        if seed is not None:
            check_int("seed", seed, 0, MAX_BASE_SEED)
        check_int("batch_size", batch_size, 1, MAX_UINT32)
        check_int("samples_per_epoch", samples_per_epoch, 1, MAX_GLOBAL_INDEX)
        spec = pb.SessionSpec(
            loader_id=loader_id,
            batch_size=batch_size,
            samples_per_epoch=samples_per_epoch,
            fixed_data=fixed_data,
        )
        if experiment is not None:
            spec.experiment = experiment
        elif isinstance(config, str):
            spec.config_json = config
        else:
            spec.config_json = json.dumps(dict(config or {}))
        if seed is not None:
            spec.seed = seed
        request = pb.CreateSessionRequest(
            spec=spec,
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
        )
        response = self._unary("CreateSession", request)
        info = SessionInfo.from_proto(response.session)
        if response.session_token:
            self._tokens[info.session_id] = response.session_token
        _LOGGER.info(
            "session %s: %s on %s (seed %d, %d batches per epoch)",
            info.session_id,
            "attached to existing session" if response.existing else "created",
            self.target,
            info.seed,
            info.batches_per_epoch,
        )
        return Session(self, info.session_id)

    def session(self, session_id: str, token: str | None = None) -> Session:
        """Attach to an existing session.

        Parameters
        ----------
        session_id : str
        token : str, optional
            The session's token (``Session.token`` of the handle that
            created it). Without it, the token this client received when it
            created the session is used, else the operator token.

        Raises
        ------
        SessionNotFound
            When the server has no session with this id (with the operator
            token, or a valid token of a closed session).
        PermissionDenied
            When the token is not valid for the session, or the session does
            not exist and the token is not the operator token.
        """
        checked = _check_token(token, "token")
        if checked is not None:
            self._tokens[session_id] = checked
        session = Session(self, session_id)
        session.info()
        return session

    def list_sessions(self, page_size: int = 0) -> list[SessionInfo]:
        """Return every session on the server, fetching all pages.

        Needs the ``operator_token``. Without it the call raises
        :class:`Unauthenticated`.

        Parameters
        ----------
        page_size : int, default 0
            Sessions per request; 0 selects the server's default.
        """
        check_int("page_size", page_size, 0, MAX_UINT32)
        sessions: list[SessionInfo] = []
        token = ""
        while True:
            request = pb.ListSessionsRequest(page_size=page_size, page_token=token)
            response = self._unary("ListSessions", request, token=self._operator_token)
            sessions.extend(SessionInfo.from_proto(item) for item in response.sessions)
            token = response.next_page_token
            if not token:
                return sessions


class Session:
    """A handle on one server session; see :meth:`Client.create_session`.

    The handle stores no state beyond the id, so any number of handles, in
    any process, may refer to the same session.
    """

    def __init__(self, client: Client, session_id: str) -> None:
        self._client = client
        self._id = session_id
        # Weak references, so a stream dropped without close() can be
        # collected and its finalizer can end the call.
        self._streams: list[weakref.ref[BatchStream]] = []

    def __repr__(self) -> str:
        return f"Session({self._id!r}, target={self._client.target!r})"

    @property
    def id(self) -> str:
        """The session id."""
        return self._id

    @property
    def token(self) -> str | None:
        """The session token, or None when the client does not know it.

        Pass it to :meth:`Client.session` in another process to attach to
        this session. Treat it as a password: anyone holding it can stream,
        snapshot, restore and close the session.
        """
        return self._client._tokens.get(self._id)

    def _call(
        self, method_name: str, request: Any, not_found: type[NotFound] = NotFound
    ) -> Any:
        return self._client._unary(
            method_name, request, not_found, self._client._token_for(self._id)
        )

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return _bearer(self._client._token_for(self._id))

    def info(self) -> SessionInfo:
        """Fetch the session's settings and committed cursor from the server."""
        request = pb.GetSessionRequest(session_id=self._id)
        return SessionInfo.from_proto(
            self._call("GetSession", request, SessionNotFound)
        )

    @property
    def position(self) -> Position:
        """The committed cursor, fetched from the server on each access."""
        return self.info().position

    def batches(
        self,
        start: int | None = None,
        max_batches: int | None = None,
        window: int = 4,
        ack: AckMode = "auto",
        timeout_s: float | None = None,
        takeover: bool = False,
    ) -> BatchStream:
        """Open a stream of batches.

        Parameters
        ----------
        start : int, optional
            Global index of the first batch; by default the committed cursor.
        max_batches : int, optional
            Stop after this many batches; by default stream until closed.
        window : int, default 4
            Batches the server may send ahead of the last acknowledgement.
        ack : {"auto", "manual"}, default "auto"
            "auto" acknowledges a batch when the next one is requested or
            when the stream is closed; "manual" only through :meth:`ack`.
        timeout_s : float, optional
            Deadline of each stream call in seconds; a call still open then
            fails with DeadlineExceeded. None, the default, sets no deadline.
        takeover : bool, default False
            A session has one open stream at a time. With False, opening a
            stream while another is open raises FailedPrecondition; with
            True the other stream ends with Aborted and this one starts.
            Reconnects after UNAVAILABLE always take over, because the
            stream they replace is this one's own earlier call.

        Returns
        -------
        BatchStream
            An iterator of :class:`Batch` and a context manager that closes
            the stream. The call starts on the first ``next``. Use it in a
            ``with`` block or call ``close()``: a stream dropped without
            closing ends its call but does not acknowledge the last batch.

        Raises
        ------
        ValueError, TypeError
            When ``start`` is outside [0, 2^53 - 2], ``max_batches`` outside
            [1, 2^53 - 1] or ``window`` outside [1, 2^32 - 1].
        Aborted
            From ``next`` when the session is restored or closed meanwhile.
        StreamInterrupted
            From ``next`` when reconnects ran out (15 minutes by default, see
            :class:`ReconnectPolicy`). Its ``resume_start`` is the ``start``
            of a new stream that continues after the last batch consumed.
        GmmServeClientError
            From ``next`` in manual mode while ``window`` yielded batches
            are unacknowledged; acknowledge one and call ``next`` again.
        """
        stream = BatchStream(
            self,
            self._client._stream_batches,
            start=start,
            max_batches=max_batches,
            window=window,
            ack=ack,
            reconnect=self._client.reconnect,
            timeout_s=timeout_s,
            takeover=takeover,
        )
        self._streams.append(weakref.ref(stream))
        return stream

    def ack(self, batch: Batch) -> None:
        """Acknowledge ``batch`` and every batch before it (manual mode).

        Raises
        ------
        GmmServeClientError
            When no open stream of this handle yielded the batch.
        """
        for stream in reversed(self._open_streams()):
            last = stream.last_received
            if not stream.closed and last is not None and batch.global_index <= last:
                stream.ack(batch)
                return
        raise GmmServeClientError(
            f"cannot acknowledge batch {batch.global_index}: no open stream of "
            f"session {self._id} yielded it"
        )

    def _stream_closed(self, stream: BatchStream) -> None:
        self._streams = [
            reference
            for reference in self._streams
            if reference() is not None and reference() is not stream
        ]

    def _open_streams(self) -> list[BatchStream]:
        streams = [reference() for reference in self._streams]
        return [
            stream for stream in streams if stream is not None and not stream.closed
        ]

    def snapshot(self, label: str = "") -> SnapshotInfo:
        """Save the committed cursor under a new snapshot id."""
        request = pb.SnapshotRequest(session_id=self._id, label=label)
        response = self._call("Snapshot", request, SessionNotFound)
        snapshot = SnapshotInfo.from_proto(response)
        _LOGGER.info(
            "session %s: snapshot %s at batch %d",
            self._id,
            snapshot.snapshot_id,
            snapshot.position.global_index,
        )
        return snapshot

    def restore(
        self,
        snapshot_id: str | None = None,
        state: Mapping[str, Any] | str | None = None,
    ) -> SessionInfo:
        """Move the committed cursor to a snapshot's or a state document's.

        Parameters
        ----------
        snapshot_id : str, optional
            A snapshot of this session.
        state : dict or str, optional
            A state document (``GMMDataLoader.state_dict()``, the contents of
            a file written by ``save_state``, or a snapshot's
            ``state_json``). Exactly one of ``snapshot_id`` and ``state`` is
            required.

        Raises
        ------
        NotFound
            When the session or the snapshot is unknown.
        FailedPrecondition
            When the snapshot or state belongs to another config or seed.
        """
        if (snapshot_id is None) == (state is None):
            raise ValueError(
                "exactly one of snapshot_id and state is required, got "
                f"snapshot_id={snapshot_id!r}, state={'given' if state else state!r}"
            )
        request = pb.RestoreRequest(session_id=self._id)
        if snapshot_id is not None:
            request.snapshot_id = snapshot_id
        elif isinstance(state, str):
            request.state_json = state
        else:
            request.state_json = json.dumps(dict(state or {}))
        response = self._call("Restore", request)
        info = SessionInfo.from_proto(response.session)
        _LOGGER.info(
            "session %s: restored to batch %d from %s",
            self._id,
            info.position.global_index,
            f"snapshot {snapshot_id}"
            if snapshot_id is not None
            else "a state document",
        )
        return info

    def list_snapshots(self) -> list[SnapshotInfo]:
        """Return the session's snapshots."""
        request = pb.ListSnapshotsRequest(session_id=self._id)
        response = self._call("ListSnapshots", request, SessionNotFound)
        return [SnapshotInfo.from_proto(item) for item in response.snapshots]

    def delete_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """Delete one of the session's snapshots on the server.

        The session and its committed cursor stay as they are, and the freed
        room counts against the server's snapshots-per-session limit again.

        Returns
        -------
        SnapshotInfo
            The deleted snapshot.

        Raises
        ------
        NotFound
            When the session or the snapshot is unknown, or the snapshot
            belongs to another session.
        """
        request = pb.DeleteSnapshotRequest(session_id=self._id, snapshot_id=snapshot_id)
        response = self._call("DeleteSnapshot", request)
        snapshot = SnapshotInfo.from_proto(response.snapshot)
        _LOGGER.info("session %s: deleted snapshot %s", self._id, snapshot_id)
        return snapshot

    def close(self) -> Position:
        """Close the session on the server, deleting it and its snapshots.

        Returns
        -------
        Position
            The committed cursor at close.
        """
        for stream in self._open_streams():
            stream.close()
        request = pb.CloseSessionRequest(session_id=self._id)
        response = self._call("CloseSession", request, SessionNotFound)
        position = Position.from_proto(response.position)
        _LOGGER.info("session %s: closed at batch %d", self._id, position.global_index)
        return position
