"""Server startup and shutdown, in the foreground or in a background thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import grpc
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gmmserve.service._auth import Authenticator
from gmmserve.service._servicer import GmmServicer
from gmmserve.service._sessions import SessionRegistry
from gmmserve.service._settings import ServerSettings
from gmmserve.service._status import lenient_parser
from gmmserve.store import SQLiteStore

__all__ = ["SERVICE_NAME", "BackgroundServer", "GmmServer", "serve", "serve_settings"]

_LOGGER = logging.getLogger(__name__)

# Seconds that calls other than batch streams get once every stream ended.
_DRAIN_AFTER_STREAMS_S = 1.0
_POLL_S = 0.02

# How often the idle-session sweep runs at most, in seconds.
_MAX_SWEEP_INTERVAL_S = 30.0


def _server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        # A second server on a busy port fails to bind instead of sharing it.
        ("grpc.so_reuseport", 0),
        # Keepalive pings find clients that vanished without closing their
        # connection, so their streams end and free their slots.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Larger requests fail with RESOURCE_EXHAUSTED before they are parsed.
        ("grpc.max_receive_message_length", settings.max_request_bytes),
    ]


def _read_pem(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise OSError(
            f"cannot read {setting} {str(path)!r}: {error.strerror}"
        ) from None


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """Return the TLS credentials of ``settings``, or None without TLS.

    Raises
    ------
    OSError
        When a certificate or key file cannot be read.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    chain = _read_pem(settings.tls_cert, "tls_cert")
    key = _read_pem(settings.tls_key, "tls_key")
    client_ca = None
    if settings.tls_client_ca is not None:
        client_ca = _read_pem(settings.tls_client_ca, "tls_client_ca")
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GmmService"].full_name


def _add_servicer(servicer: GmmServicer, server: grpc.aio.Server) -> None:
    """Register GmmService as the generated code does, with lenient parsers.

    Requests that fail to parse reach the servicer as MalformedRequest and
    end with INVALID_ARGUMENT, where gRPC's own parsing would end them with
    UNKNOWN.
    """
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GmmService"].methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        if method.client_streaming:
            make_handler = grpc.stream_stream_rpc_method_handler
        else:
            make_handler = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
    )


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class GmmServer:
    """One gRPC server with its store, registry and worker threads.

    Call :meth:`start` and later :meth:`stop` on one event loop.

    Parameters
    ----------
    settings : ServerSettings
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = 0
        self.registry: SessionRegistry | None = None
        self._server: grpc.aio.Server | None = None
        self._store: SQLiteStore | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._servicer: GmmServicer | None = None
        self._health = health.aio.HealthServicer()
        self._stopped = False
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Open the store, bind and start serving; return the bound port.

        Raises
        ------
        OSError
            When the address cannot be bound.
        """
        settings = self.settings
        credentials = server_credentials(settings)
        self._store = await SQLiteStore.open_in(settings.data_dir)
        authenticator = await Authenticator.from_store(
            self._store, settings.operator_token
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="gmmserve-batch"
        )
        self.registry = SessionRegistry(self._store, settings)
        server = grpc.aio.server(options=_server_options(settings))
        self._servicer = GmmServicer(
            self.registry, settings, authenticator, self._executor
        )
        _add_servicer(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = _address(settings.host, settings.port)
        # gRPC reports unusable TLS credentials as a failed bind.
        hint = ""
        if credentials is not None:
            hint = (
                "; check also that tls_cert and tls_key are a matching PEM "
                "certificate chain and private key"
            )
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as error:
            await self._store.close()
            raise OSError(f"failed to bind {address}: {error}{hint}") from None
        if self.port == 0:
            await self._store.close()
            raise OSError(f"failed to bind {address}{hint}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.ensure_future(self._sweep_idle_sessions())
        if settings.tls_client_ca is not None:
            transport = "mutual TLS"
        elif settings.tls:
            transport = "TLS"
        else:
            transport = "plaintext"
        _LOGGER.info(
            "gmmserve listening on %s (%s, operator token %s) with data in %s",
            _address(settings.host, self.port),
            transport,
            "set" if settings.operator_token else "unset",
            settings.data_dir,
        )
        return self.port

    async def _sweep_idle_sessions(self) -> None:
        assert self.registry is not None
        timeout = self.settings.idle_timeout_s
        interval = min(_MAX_SWEEP_INTERVAL_S, max(0.1, timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.registry.expire_idle()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop serving: end open streams with UNAVAILABLE, then close the store.

        New RPCs are rejected at once. Open RPCs get up to ``grace_s``
        seconds (default: the settings' grace period) before they are
        cancelled, and at most ``_DRAIN_AFTER_STREAMS_S`` once every batch
        stream has ended. Cursor writes already submitted finish before the
        store closes.
        """
        if self._stopped or self._server is None:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace_s is None else grace_s
        _LOGGER.info("gmmserve stopping with a grace period of %.1f s", grace)
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = time.monotonic() + grace
        await self._health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(self._server.stop(grace))
        assert self.registry is not None
        ended = self.registry.begin_shutdown()
        _LOGGER.info("asked %d open streams to end", ended)
        while self.registry.open_stream_count and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        # Unary calls already running (a Snapshot that is writing, say) finish
        # within the grace period, so none of them is cut off as CANCELLED.
        while (
            getattr(self._servicer, "unary_calls_in_flight", 0)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(_POLL_S)
        # Health Watch calls never end by themselves and would hold the
        # server for the whole grace period. Once the batch streams and unary
        # calls are done, other calls get a short drain, then a second stop
        # cuts them off.
        drain = max(0.0, min(_DRAIN_AFTER_STREAMS_S, deadline - time.monotonic()))
        done, _ = await asyncio.wait({stopping}, timeout=drain)
        if not done:
            await self._server.stop(0)
        await stopping
        assert self._executor is not None and self._store is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self._store.close()
        _LOGGER.info("gmmserve stopped")


async def serve_settings(
    settings: ServerSettings,
    *,
    on_started: Callable[[int], None] | None = None,
    stop_event: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM, SIGINT or ``stop_event``, then stop gracefully.

    Parameters
    ----------
    settings : ServerSettings
    on_started : callable, optional
        Called with the bound port once the server accepts RPCs.
    stop_event : asyncio.Event, optional
        Setting it stops the server as a signal would. Without it, SIGTERM
        and SIGINT handlers are installed on the running loop.
    """
    server = GmmServer(settings)
    port = await server.start()
    if on_started is not None:
        on_started(port)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if stop_event is None:
        stop_event = asyncio.Event()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop_event.set)
            handled.append(signal_number)
    try:
        await stop_event.wait()
    finally:
        for signal_number in handled:
            loop.remove_signal_handler(signal_number)
        await server.stop()


async def serve(
    host: str,
    port: int,
    data_dir: str | os.PathLike[str],
    *,
    grace_s: float = 10.0,
    on_started: Callable[[int], None] | None = None,
    **options: Any,
) -> None:
    """Serve GmmService on ``host:port`` with sessions stored in ``data_dir``.

    Runs until SIGTERM or SIGINT, then stops accepting RPCs, ends open
    streams with UNAVAILABLE and returns within about ``grace_s`` seconds.
    Port 0 binds a free port, which ``on_started`` receives and the log
    reports. ``options`` are further :class:`ServerSettings` fields.
    """
    settings = ServerSettings(
        host=host, port=port, data_dir=Path(data_dir), grace_s=grace_s, **options
    )
    await serve_settings(settings, on_started=on_started)


class BackgroundServer:
    """A server running on its own event loop in a daemon thread, for tests.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.

    Parameters
    ----------
    settings : ServerSettings
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._server: GmmServer | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: Exception | None = None

    def start(self, timeout_s: float = 30.0) -> int:
        """Start the server thread and return the bound port."""
        self._thread = threading.Thread(
            target=self._run, name="gmmserve-server", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"server did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self.port

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._server = GmmServer(self.settings)
        try:
            self.port = await self._server.start()
        except Exception as error:  # noqa: BLE001 - re-raised by start()
            self._error = error
            self._started.set()
            return
        self._started.set()
        await self._stop_event.wait()
        await self._server.stop()

    def _read_registry(self, attribute: str) -> int:
        """Read a registry count on the server's event loop, which owns it."""
        assert self._loop is not None and self._server is not None
        registry = self._server.registry
        assert registry is not None

        async def read() -> int:
            value: int = getattr(registry, attribute)
            return value

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(timeout=10)

    @property
    def open_stream_count(self) -> int:
        """Streams open on the server."""
        return self._read_registry("open_stream_count")

    @property
    def live_session_count(self) -> int:
        """Sessions whose loader is in memory."""
        return self._read_registry("live_count")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server gracefully and join its thread."""
        if self._loop is None or self._stop_event is None or self._thread is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"server did not stop within {timeout_s} s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
