"""Helpers for server tests: servers on 127.0.0.1, streams and batch decoding."""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
from gmmserve.generator import ARRAY_NAMES, Batch
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

# Generous bound for one RPC or one received message; never a timing check.
RPC_TIMEOUT_S = 30.0

# The operator token of test servers that take one.
OPERATOR_TOKEN = "test-operator-token-0123456789"


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        (
            "method",
            "timeout",
            "metadata",
            "credentials",
            "wait_for_ready",
            "compression",
        ),
    ),
    grpc.ClientCallDetails,
):
    pass


class TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor
):
    """Adds bearer tokens to a test channel's calls, as the client library does.

    It stores the token of every session that CreateSession returns and
    sends it with later calls naming that session. Calls on other sessions,
    and ListSessions, send ``operator_token`` when it is set. A call that
    already carries authorization metadata is left unchanged. The tokens
    are shared by every interceptor of the test process (session ids are
    random, so they never collide), which lets a channel opened after a
    server restart use the tokens of sessions created before it.
    """

    tokens: ClassVar[dict[str, str]] = {}

    def __init__(self, operator_token: str | None = None) -> None:
        self.operator_token = operator_token

    def _details(self, details: Any, session_id: str) -> Any:
        metadata = list(details.metadata or ())
        if any(key == "authorization" for key, _ in metadata):
            return details
        token = self.tokens.get(session_id, self.operator_token)
        if token is None:
            return details
        metadata.append(("authorization", f"Bearer {token}"))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        session_id = getattr(request, "session_id", "")
        outcome = continuation(self._details(details, session_id), request)
        if details.method.endswith("/CreateSession") and outcome.exception() is None:
            response = outcome.result()
            self.tokens[response.session.session_id] = response.session_token
        return outcome

    def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        # The first request is the StreamStart that names the session.
        if not details.method.endswith("/StreamBatches"):
            return continuation(details, request_iterator)
        first = next(request_iterator, None)
        if first is None:
            return continuation(details, iter(()))
        session_id = first.start.session_id
        requests = itertools.chain([first], request_iterator)
        return continuation(self._details(details, session_id), requests)


@dataclass(frozen=True)
class DecodedBatch:
    """A streamed batch: its position, arrays and fingerprint."""

    epoch: int
    batch_index: int
    global_index: int
    arrays: dict[str, np.ndarray]
    fingerprint: str
    part_count: int


def decode_batch(message: pb.Batch, part_count: int = 0) -> DecodedBatch:
    """Turn a Batch message into numpy arrays (views of the message bytes)."""
    arrays = {
        array.name: np.frombuffer(array.data, dtype=np.dtype(array.dtype)).reshape(
            tuple(array.shape)
        )
        for array in message.arrays
    }
    return DecodedBatch(
        epoch=message.position.epoch,
        batch_index=message.position.batch_index,
        global_index=message.position.global_index,
        arrays=arrays,
        fingerprint=message.fingerprint,
        part_count=part_count,
    )


def assert_batch_equal(received: DecodedBatch, expected: Batch) -> None:
    """Assert that a streamed batch equals a generated one bit for bit."""
    assert list(received.arrays) == list(ARRAY_NAMES)
    for name in ARRAY_NAMES:
        got = received.arrays[name]
        want = np.ascontiguousarray(expected.arrays[name])
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name
    assert received.fingerprint == expected.fingerprint()


class BatchStream:
    """A StreamBatches call driven from the test thread.

    Requests go through a queue that gRPC's request thread drains, so the
    test decides when each Ack is sent.
    """

    def __init__(self, stub: pb_grpc.GmmServiceStub, **start: Any) -> None:
        self._requests: queue.Queue[pb.StreamBatchesRequest | None] = queue.Queue()
        self._requests.put(pb.StreamBatchesRequest(start=pb.StreamStart(**start)))
        self.call = stub.StreamBatches(iter(self._requests.get, None), timeout=120)
        self._responses = iter(self.call)
        self.skipped_responses = 0

    def next_batch(self) -> DecodedBatch:
        """Receive one batch, joining its parts when it was split."""
        response = next(self._responses)
        if response.WhichOneof("kind") == "batch":
            return decode_batch(response.batch)
        part = response.part
        payloads = [part.payload]
        assert part.part_index == 0
        for index in range(1, part.part_count):
            following = next(self._responses).part
            assert following.part_index == index
            assert following.part_count == part.part_count
            assert following.position == part.position
            payloads.append(following.payload)
        return decode_batch(pb.Batch.FromString(b"".join(payloads)), part.part_count)

    def ack(self, global_index: int) -> None:
        self._requests.put(
            pb.StreamBatchesRequest(ack=pb.Ack(global_index=global_index))
        )

    def half_close(self) -> None:
        self._requests.put(None)

    def cancel(self) -> None:
        self.call.cancel()
        self._requests.put(None)

    def finish(self) -> grpc.RpcError | None:
        """Read to the end of the stream; return its error, or None on OK.

        Responses read here are counted in ``skipped_responses``.
        """
        try:
            for _ in self._responses:
                self.skipped_responses += 1
        except grpc.RpcError as error:
            self._requests.put(None)
            return error
        self._requests.put(None)
        return None


def open_channel(
    port: int, operator_token: str | None = OPERATOR_TOKEN
) -> grpc.Channel:
    """Connect to 127.0.0.1:``port`` through a :class:`TokenInterceptor`."""
    raw = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(raw).result(timeout=RPC_TIMEOUT_S)
    return grpc.intercept_channel(raw, TokenInterceptor(operator_token))


def create_session(stub: pb_grpc.GmmServiceStub, **spec: Any) -> pb.SessionInfo:
    response = stub.CreateSession(
        pb.CreateSessionRequest(spec=pb.SessionSpec(**spec)), timeout=RPC_TIMEOUT_S
    )
    return response.session


def cursor_of(stub: pb_grpc.GmmServiceStub, session_id: str) -> int:
    """Return the committed cursor of a session."""
    info = stub.GetSession(
        pb.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S
    )
    return info.position.global_index


def wait_for_cursor(
    stub: pb_grpc.GmmServiceStub, session_id: str, expected: int
) -> int:
    """Poll the committed cursor until it equals ``expected`` or 20 s pass.

    Acks are persisted asynchronously to the client, so a test that sent an
    Ack waits for it here; the caller asserts on the value returned.
    """
    deadline = time.monotonic() + 20
    cursor = cursor_of(stub, session_id)
    while cursor != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        cursor = cursor_of(stub, session_id)
    return cursor


def wait_for_value(read: Callable[[], int], expected: int) -> int:
    """Poll ``read()`` until it returns ``expected`` or 20 s pass; return it.

    The caller asserts on the value returned, so a timeout shows the last
    value read.
    """
    deadline = time.monotonic() + 20
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> None:
    """Wait up to 60 s for a server process to write ``path``.

    Raises
    ------
    RuntimeError
        When the process exits first.
    TimeoutError
        When 60 s pass.
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            return
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"server did not write {path} within 60 s")


class ServerProcess:
    """``python -m gmmserve.service`` on 127.0.0.1, port 0, in a subprocess.

    Parameters
    ----------
    data_dir : Path
    env : dict, optional
        Extra environment variables for the server. The operator token is
        OPERATOR_TOKEN unless ``env`` sets GMMSERVE_OPERATOR_TOKEN.
    """

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port_file = data_dir / f"port-{time.monotonic_ns()}.json"
        self.log_path = data_dir / "server.log"
        environment = dict(os.environ)
        environment["GMMSERVE_OPERATOR_TOKEN"] = OPERATOR_TOKEN
        environment.update(env or {})
        # The server writes to this file until kill() or terminate() closes it.
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gmmserve.service",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                "--grace",
                "10",
                "--port-file",
                str(self.port_file),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.port_file.exists():
                return int(json.loads(self.port_file.read_text())["port"])
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError("server did not report its port within 60 s")

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the server and return its exit code."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        self._log.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text()


@contextmanager
def running_server(
    data_dir: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, pb_grpc.GmmServiceStub]]:
    """Run a ServerProcess with a connected stub, and SIGKILL it at the end."""
    server = ServerProcess(data_dir, env)
    try:
        channel = open_channel(server.port)
        try:
            yield server, pb_grpc.GmmServiceStub(channel)
        finally:
            channel.close()
    finally:
        server.kill()
