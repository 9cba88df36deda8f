"""Crash, kill and shutdown tests of the server in a subprocess on 127.0.0.1."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest
from _server import (
    OPERATOR_TOKEN,
    RPC_TIMEOUT_S,
    BatchStream,
    DecodedBatch,
    assert_batch_equal,
    create_session,
    cursor_of,
    open_channel,
    running_server,
    wait_for_cursor,
)
from gmmserve.loader import GMMDataLoader
from gmmserve.service import BackgroundServer, ServerSettings
from gmmserve.store.sqlite import DATABASE_NAME, SNAPSHOT_PAUSE_ENV
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::gmmserve.errors.LegacyKeyWarning"),
]

SPEC = {
    "experiment": "standard",
    "seed": 9,
    "loader_id": "train",
    "batch_size": 2,
    "samples_per_epoch": 8,
}


def standard_loader() -> GMMDataLoader:
    return GMMDataLoader(
        "standard", batch_size=2, num_samples=8, base_seed=9, loader_id="train"
    )


def stream_and_ack(
    stub: pb_grpc.GmmServiceStub, session_id: str, count: int
) -> list[DecodedBatch]:
    """Stream ``count`` batches from the cursor, acknowledging each, to an OK end."""
    stream = BatchStream(stub, session_id=session_id, max_batches=count)
    batches = []
    for _ in range(count):
        batch = stream.next_batch()
        batches.append(batch)
        stream.ack(batch.global_index)
    assert stream.finish() is None
    return batches


def test_server_cursor_survives_kill(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, stub):
        info = create_session(stub, **SPEC)
        stream = BatchStream(stub, session_id=info.session_id, window=8)
        received = [stream.next_batch() for _ in range(8)]
        for batch in received[:6]:
            stream.ack(batch.global_index)
        assert wait_for_cursor(stub, info.session_id, 6) == 6
        server.kill()
        stream.cancel()

    with running_server(tmp_path) as (_, stub):
        assert cursor_of(stub, info.session_id) == 6
        resumed = stream_and_ack(stub, info.session_id, 4)
    assert [batch.global_index for batch in resumed] == [6, 7, 8, 9]
    loader = standard_loader()
    for batch in resumed:
        assert_batch_equal(batch, loader.batch_at(batch.epoch, batch.batch_index))
    for before, after in zip(received[6:], resumed[:2]):
        assert before.fingerprint == after.fingerprint


def test_server_restore_after_kill_matches_uninterrupted(tmp_path: Path) -> None:
    with running_server(tmp_path) as (_, stub):
        reference = create_session(stub, **SPEC)
        uninterrupted = stream_and_ack(stub, reference.session_id, 12)

        info = create_session(stub, **SPEC)
        stream_and_ack(stub, info.session_id, 5)
        snapshot = stub.Snapshot(
            pb.SnapshotRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
        )
        assert snapshot.position.global_index == 5
        stream_and_ack(stub, info.session_id, 3)
        assert cursor_of(stub, info.session_id) == 8

    with running_server(tmp_path) as (_, stub):
        assert cursor_of(stub, info.session_id) == 8
        restored = stub.Restore(
            pb.RestoreRequest(
                session_id=info.session_id, snapshot_id=snapshot.snapshot_id
            ),
            timeout=RPC_TIMEOUT_S,
        )
        assert restored.session.position.global_index == 5
        resumed = stream_and_ack(stub, info.session_id, 7)
    assert [batch.global_index for batch in resumed] == list(range(5, 12))
    for expected, batch in zip(uninterrupted[5:], resumed):
        assert batch.fingerprint == expected.fingerprint
        for name, array in expected.arrays.items():
            assert batch.arrays[name].tobytes() == array.tobytes(), name


def start_paused_snapshot(
    stub: pb_grpc.GmmServiceStub, session_id: str, trigger: Path, label: str
) -> tuple[threading.Thread, list[grpc.StatusCode | str]]:
    """Call Snapshot in a thread and return once the store pauses inside it.

    The outcome list receives "returned" or the call's status code.
    """
    trigger.touch()
    outcome: list[grpc.StatusCode | str] = []

    def take_snapshot() -> None:
        try:
            stub.Snapshot(
                pb.SnapshotRequest(session_id=session_id, label=label),
                timeout=RPC_TIMEOUT_S,
            )
            outcome.append("returned")
        except grpc.RpcError as error:
            outcome.append(error.code())

    caller = threading.Thread(target=take_snapshot)
    caller.start()
    paused = Path(f"{trigger}.paused")
    deadline = time.monotonic() + 30
    while not paused.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.exists()
    return caller, outcome


def test_server_crash_during_snapshot_keeps_previous(tmp_path: Path) -> None:
    trigger = tmp_path / "pause-snapshot"
    with running_server(tmp_path, env={SNAPSHOT_PAUSE_ENV: str(trigger)}) as (
        server,
        stub,
    ):
        info = create_session(stub, **SPEC)
        stream_and_ack(stub, info.session_id, 3)
        first = stub.Snapshot(
            pb.SnapshotRequest(session_id=info.session_id, label="first"),
            timeout=RPC_TIMEOUT_S,
        )
        stream_and_ack(stub, info.session_id, 2)

        # The store pauses inside the next snapshot transaction.
        caller, outcome = start_paused_snapshot(
            stub, info.session_id, trigger, "second"
        )
        server.kill()
        caller.join(timeout=RPC_TIMEOUT_S)
        # The caller sees the connection drop, not a saved snapshot.
        assert len(outcome) == 1
        assert outcome[0] != "returned"

    # The database file contains the first snapshot and not the second.
    connection = sqlite3.connect(tmp_path / DATABASE_NAME)
    try:
        labels = [row[0] for row in connection.execute("SELECT label FROM snapshots")]
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()
    assert labels == ["first"]
    assert integrity == "ok"

    trigger.unlink()
    with running_server(tmp_path) as (_, stub):
        listed = stub.ListSnapshots(
            pb.ListSnapshotsRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
        )
        assert [item.snapshot_id for item in listed.snapshots] == [first.snapshot_id]
        assert listed.snapshots[0].state_json == first.state_json
        assert cursor_of(stub, info.session_id) == 5
        restored = stub.Restore(
            pb.RestoreRequest(
                session_id=info.session_id, snapshot_id=first.snapshot_id
            ),
            timeout=RPC_TIMEOUT_S,
        )
        assert restored.session.position.global_index == 3


def test_server_sigterm_ends_streams_unavailable(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, stub):
        info = create_session(stub, **SPEC)
        stream = BatchStream(stub, session_id=info.session_id, window=6)
        received = [stream.next_batch() for _ in range(6)]
        for batch in received[:4]:
            stream.ack(batch.global_index)
        assert wait_for_cursor(stub, info.session_id, 4) == 4

        exit_code = server.terminate()
        error = stream.finish()
        assert exit_code == 0
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "server shutting down; reconnect to resume at batch 4" in error.details()
    log = server.log_text()
    # The window moved on with each Ack, so how many batches were sent
    # depends on timing; the acknowledged count and the cursor do not.
    assert "stream 1 closed (UNAVAILABLE)" in log
    assert "4 acknowledged, cursor at batch 4" in log

    with running_server(tmp_path) as (_, stub):
        assert cursor_of(stub, info.session_id) == 4
        resumed = stream_and_ack(stub, info.session_id, 1)
    assert resumed[0].global_index == 4
    assert resumed[0].fingerprint == received[4].fingerprint


def test_server_sigterm_reports_not_serving(tmp_path: Path) -> None:
    with running_server(tmp_path) as (server, _):
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        statuses = []
        try:
            for response in watch:
                statuses.append(response.status)
        except grpc.RpcError:
            pass
        assert server.process.wait(timeout=30) == 0
        assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
        channel.close()


def test_server_client_leaving_at_shutdown_logs_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gmmserve")
    server = BackgroundServer(
        ServerSettings(
            port=0, data_dir=tmp_path, grace_s=10.0, operator_token=OPERATOR_TOKEN
        )
    )
    server.start()
    stopper: threading.Thread | None = None
    channel = open_channel(server.port)
    try:
        stub = pb_grpc.GmmServiceStub(channel)
        info = create_session(
            stub,
            experiment="standard",
            seed=5,
            batch_size=512,
            samples_per_epoch=100_000,
        )
        # The client reads one batch and then stops reading, so flow control
        # blocks the server's next write of a batch of several MB.
        stream = BatchStream(stub, session_id=info.session_id, window=16)
        assert stream.next_batch().global_index == 0
        time.sleep(3.0)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.5)
        stream.cancel()
    finally:
        channel.close()
        if stopper is None:
            server.stop()
        else:
            stopper.join()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == []
    closed = [
        record.getMessage()
        for record in caplog.records
        if f"session {info.session_id} stream 1 closed" in record.getMessage()
    ]
    assert len(closed) == 1
    assert closed[0].split(" closed ")[1].startswith(("(client left)", "(UNAVAILABLE)"))


def test_server_sigterm_lets_running_snapshot_finish(tmp_path: Path) -> None:
    trigger = tmp_path / "pause-snapshot"
    with running_server(tmp_path, env={SNAPSHOT_PAUSE_ENV: str(trigger)}) as (
        server,
        stub,
    ):
        info = create_session(stub, **SPEC)
        stream_and_ack(stub, info.session_id, 2)
        caller, outcome = start_paused_snapshot(stub, info.session_id, trigger, "late")
        # SIGTERM while the snapshot is inside its transaction. The pause
        # outlasts the short drain that ends health Watch calls, so the
        # server must wait for the running call, not cut it off as CANCELLED.
        server.process.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        trigger.unlink()
        caller.join(timeout=RPC_TIMEOUT_S)
        exit_code = server.process.wait(timeout=30)
    assert outcome == ["returned"]
    assert exit_code == 0
    connection = sqlite3.connect(tmp_path / DATABASE_NAME)
    try:
        labels = [row[0] for row in connection.execute("SELECT label FROM snapshots")]
    finally:
        connection.close()
    assert labels == ["late"]
