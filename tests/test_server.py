"""Tests of the gRPC server through the generated stub, on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _server import (
    OPERATOR_TOKEN,
    RPC_TIMEOUT_S,
    BatchStream,
    assert_batch_equal,
    create_session,
    cursor_of,
    open_channel,
    wait_for_cursor,
)
from conftest import SMALL_CONFIG
from gmmserve.config import experiment_names
from gmmserve.loader import GMMDataLoader
from gmmserve.service import SERVICE_NAME, BackgroundServer, ServerSettings
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

# The bundled experiment configs carry legacy keys that warn on every load.
pytestmark = pytest.mark.filterwarnings("ignore::gmmserve.errors.LegacyKeyWarning")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(
        ServerSettings(
            port=0, data_dir=tmp_path, grace_s=5.0, operator_token=OPERATOR_TOKEN
        )
    ) as running:
        yield running


@pytest.fixture
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    channel = open_channel(server.port)
    yield channel
    channel.close()


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.GmmServiceStub:
    return pb_grpc.GmmServiceStub(channel)


def small_session(stub: pb_grpc.GmmServiceStub, **spec: object) -> pb.SessionInfo:
    fields: dict[str, object] = {
        "config_json": json.dumps(SMALL_CONFIG),
        "seed": 5,
        "loader_id": "train",
        "batch_size": 3,
        "samples_per_epoch": 8,
    }
    fields.update(spec)
    return create_session(stub, **fields)


def small_loader(**options: object) -> GMMDataLoader:
    arguments: dict[str, object] = {
        "batch_size": 3,
        "num_samples": 8,
        "base_seed": 5,
        "loader_id": "train",
    }
    arguments.update(options)
    return GMMDataLoader(dict(SMALL_CONFIG), **arguments)  # type: ignore[arg-type]


def wait_for_open_streams(server: BackgroundServer, expected: int) -> int:
    deadline = time.monotonic() + 20
    count = server.open_stream_count
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = server.open_stream_count
    return count


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize("experiment", experiment_names())
def test_server_streams_every_experiment(
    stub: pb_grpc.GmmServiceStub, experiment: str
) -> None:
    info = create_session(
        stub,
        experiment=experiment,
        seed=3,
        loader_id="train",
        batch_size=2,
        samples_per_epoch=5,
    )
    loader = GMMDataLoader(
        experiment, batch_size=2, num_samples=5, base_seed=3, loader_id="train"
    )
    assert info.fingerprint == loader.fingerprint
    assert info.seed == loader.seed
    assert info.batches_per_epoch == 3

    stream = BatchStream(stub, session_id=info.session_id, max_batches=4)
    positions = []
    for _ in range(4):
        batch = stream.next_batch()
        assert_batch_equal(batch, loader.batch_at(batch.epoch, batch.batch_index))
        positions.append((batch.epoch, batch.batch_index, batch.global_index))
        stream.ack(batch.global_index)
    assert stream.finish() is None
    assert positions == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3)]
    assert cursor_of(stub, info.session_id) == 4


def test_server_resumes_after_last_ack(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub, samples_per_epoch=30)
    loader = small_loader(num_samples=30)
    stream = BatchStream(stub, session_id=info.session_id, window=10)
    received = [stream.next_batch() for _ in range(10)]
    assert [batch.global_index for batch in received] == list(range(10))
    for index in range(7):
        stream.ack(index)
    assert wait_for_cursor(stub, info.session_id, 7) == 7
    stream.cancel()
    assert cursor_of(stub, info.session_id) == 7

    resumed = BatchStream(stub, session_id=info.session_id, max_batches=2)
    first = resumed.next_batch()
    assert first.global_index == 7
    assert_batch_equal(first, loader.batch_at(first.epoch, first.batch_index))
    resumed.cancel()


def test_server_start_index_overrides_cursor(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    loader = small_loader()
    stream = BatchStream(
        stub, session_id=info.session_id, start_global_index=7, max_batches=2
    )
    first = stream.next_batch()
    assert (first.epoch, first.batch_index, first.global_index) == (2, 1, 7)
    assert_batch_equal(first, loader.batch_at(2, 1))
    stream.ack(7)
    second = stream.next_batch()
    assert second.global_index == 8
    stream.ack(8)
    assert stream.finish() is None
    assert cursor_of(stub, info.session_id) == 9


def test_server_window_limits_batches_ahead(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    stream = BatchStream(stub, session_id=info.session_id, window=2, max_batches=3)
    assert stream.next_batch().global_index == 0
    assert stream.next_batch().global_index == 1
    # The third batch waits for an Ack; a half-close ends the stream with
    # OK once the window allows no more batches.
    stream.half_close()
    assert stream.finish() is None
    assert stream.skipped_responses == 0
    assert cursor_of(stub, info.session_id) == 0


def test_server_cancel_frees_stream_slots(
    server: BackgroundServer, stub: pb_grpc.GmmServiceStub
) -> None:
    # One session per stream, because a session has one open stream at a time.
    streams = [
        BatchStream(stub, session_id=small_session(stub).session_id, window=2)
        for _ in range(5)
    ]
    for stream in streams:
        stream.next_batch()
    assert server.open_stream_count == 5
    for stream in streams:
        stream.cancel()
    assert wait_for_open_streams(server, 0) == 0


def test_server_unary_calls_beside_32_streams(
    server: BackgroundServer, stub: pb_grpc.GmmServiceStub
) -> None:
    # One session per stream, because a session has one open stream at a time.
    sessions = [small_session(stub, samples_per_epoch=1000) for _ in range(32)]
    info = sessions[0]
    streams = []
    for session in sessions:
        stream = BatchStream(stub, session_id=session.session_id, window=2)
        streams.append(stream)
    # Each stream receives its whole window and then waits for an Ack.
    for stream in streams:
        assert stream.next_batch().global_index == 0
        assert stream.next_batch().global_index == 1
    assert server.open_stream_count == 32

    for _ in range(5):
        snapshot = stub.Snapshot(
            pb.SnapshotRequest(session_id=info.session_id), timeout=5
        )
        assert snapshot.position.global_index == 0
        assert cursor_of(stub, info.session_id) == 0
        session = stub.GetSession(
            pb.GetSessionRequest(session_id=info.session_id), timeout=5
        )
        assert session.session_id == info.session_id

    for stream in streams:
        stream.cancel()
    assert wait_for_open_streams(server, 0) == 0


def test_server_large_batch_streams_in_parts(stub: pb_grpc.GmmServiceStub) -> None:
    info = create_session(
        stub,
        experiment="advanced",
        loader_id="train",
        batch_size=256,
        samples_per_epoch=768,
    )
    loader = GMMDataLoader(
        "advanced", batch_size=256, num_samples=768, loader_id="train"
    )
    stream = BatchStream(stub, session_id=info.session_id, window=1, max_batches=3)
    sizes = []
    for _ in range(3):
        batch = stream.next_batch()
        assert_batch_equal(batch, loader.batch_at(batch.epoch, batch.batch_index))
        assert batch.part_count > 1
        sizes.append(sum(array.nbytes for array in batch.arrays.values()))
        stream.ack(batch.global_index)
    assert stream.finish() is None
    assert max(sizes) > 4 * 1024 * 1024


def test_server_snapshot_restore_round_trip(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    loader = small_loader()
    stream = BatchStream(stub, session_id=info.session_id, max_batches=5)
    for index in range(5):
        assert stream.next_batch().global_index == index
        stream.ack(index)
    assert stream.finish() is None

    snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=info.session_id, label="after 5"),
        timeout=RPC_TIMEOUT_S,
    )
    assert snapshot.position.global_index == 5
    assert (snapshot.position.epoch, snapshot.position.batch_index) == (1, 2)
    assert snapshot.label == "after 5"
    assert snapshot.fingerprint == loader.fingerprint
    document = json.loads(snapshot.state_json)
    assert document["loader_state"]["current_epoch"] == 1
    assert document["loader_state"]["current_batch"] == 2
    assert document["fingerprint"] == loader.fingerprint

    more = BatchStream(stub, session_id=info.session_id, max_batches=3)
    for index in range(5, 8):
        assert more.next_batch().global_index == index
        more.ack(index)
    assert more.finish() is None
    assert cursor_of(stub, info.session_id) == 8

    restored = stub.Restore(
        pb.RestoreRequest(session_id=info.session_id, snapshot_id=snapshot.snapshot_id),
        timeout=RPC_TIMEOUT_S,
    )
    assert restored.session.position.global_index == 5
    resumed = BatchStream(stub, session_id=info.session_id, max_batches=1)
    batch = resumed.next_batch()
    assert batch.global_index == 5
    assert_batch_equal(batch, loader.batch_at(1, 2))
    resumed.cancel()

    listed = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
    )
    assert [item.snapshot_id for item in listed.snapshots] == [snapshot.snapshot_id]
    assert listed.snapshots[0].state_json == snapshot.state_json


def snapshot_ids(stub: pb_grpc.GmmServiceStub, session_id: str) -> list[str]:
    listed = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=session_id), timeout=RPC_TIMEOUT_S
    )
    return [item.snapshot_id for item in listed.snapshots]


def test_server_delete_snapshot_then_restore(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    session_id = info.session_id
    loader = small_loader()
    saved = []
    for count in (2, 3):
        stream = BatchStream(stub, session_id=session_id, max_batches=count)
        first = cursor_of(stub, session_id)
        for index in range(first, first + count):
            assert stream.next_batch().global_index == index
            stream.ack(index)
        assert stream.finish() is None
        saved.append(
            stub.Snapshot(
                pb.SnapshotRequest(session_id=session_id, label=f"at {first + count}"),
                timeout=RPC_TIMEOUT_S,
            )
        )
    kept, deleted = saved
    assert kept.position.global_index == 2
    assert deleted.position.global_index == 5
    assert snapshot_ids(stub, session_id) == [kept.snapshot_id, deleted.snapshot_id]

    response = stub.DeleteSnapshot(
        pb.DeleteSnapshotRequest(
            session_id=session_id, snapshot_id=deleted.snapshot_id
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert response.snapshot == deleted
    assert snapshot_ids(stub, session_id) == [kept.snapshot_id]
    # Deleting a snapshot leaves the session's cursor where it was.
    assert cursor_of(stub, session_id) == 5

    # A second delete of the same id finds nothing.
    error = rpc_error(
        lambda: stub.DeleteSnapshot(
            pb.DeleteSnapshotRequest(
                session_id=session_id, snapshot_id=deleted.snapshot_id
            ),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert deleted.snapshot_id in error.details()
    error = rpc_error(
        lambda: stub.Restore(
            pb.RestoreRequest(session_id=session_id, snapshot_id=deleted.snapshot_id),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND

    # The remaining snapshot still resumes bit for bit.
    restored = stub.Restore(
        pb.RestoreRequest(session_id=session_id, snapshot_id=kept.snapshot_id),
        timeout=RPC_TIMEOUT_S,
    )
    assert restored.session.position.global_index == 2
    resumed = BatchStream(stub, session_id=session_id, max_batches=3)
    for index in range(2, 5):
        batch = resumed.next_batch()
        assert batch.global_index == index
        epoch, batch_index = divmod(index, loader.batches_per_epoch)
        assert_batch_equal(batch, loader.batch_at(epoch, batch_index))
        resumed.ack(index)
    assert resumed.finish() is None


def test_server_delete_snapshot_not_found(stub: pb_grpc.GmmServiceStub) -> None:
    # The stub sends the session token of sessions it created, so NOT_FOUND
    # comes from the ids, not from the token.
    ours = small_session(stub).session_id
    theirs = small_session(stub).session_id
    their_snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=theirs), timeout=RPC_TIMEOUT_S
    ).snapshot_id
    unknown_snapshot = "snap_" + "B" * 22
    for snapshot_id in (unknown_snapshot, their_snapshot):
        request = pb.DeleteSnapshotRequest(session_id=ours, snapshot_id=snapshot_id)
        with pytest.raises(grpc.RpcError) as caught:
            stub.DeleteSnapshot(request, timeout=RPC_TIMEOUT_S)
        error = caught.value
        assert error.code() == grpc.StatusCode.NOT_FOUND, snapshot_id
        # Another session's snapshot gets the message of an unknown id.
        assert error.details() == f"snapshot {snapshot_id!r} not found", snapshot_id
    assert snapshot_ids(stub, theirs) == [their_snapshot]

    unknown_session = "ses_" + "A" * 22
    error = rpc_error(
        lambda: stub.DeleteSnapshot(
            pb.DeleteSnapshotRequest(
                session_id=unknown_session, snapshot_id=their_snapshot
            ),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert unknown_session in error.details()
    assert snapshot_ids(stub, theirs) == [their_snapshot]


def test_server_snapshot_at_epoch_end(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    loader = small_loader()
    stream = BatchStream(stub, session_id=info.session_id, max_batches=3)
    for index in range(3):
        stream.ack(stream.next_batch().global_index)
    assert stream.finish() is None
    snapshot = stub.Snapshot(pb.SnapshotRequest(session_id=info.session_id), timeout=5)
    assert (snapshot.position.epoch, snapshot.position.batch_index) == (1, 0)

    stub.Restore(
        pb.RestoreRequest(session_id=info.session_id, snapshot_id=snapshot.snapshot_id),
        timeout=RPC_TIMEOUT_S,
    )
    resumed = BatchStream(stub, session_id=info.session_id, max_batches=1)
    batch = resumed.next_batch()
    assert (batch.epoch, batch.batch_index) == (1, 0)
    assert_batch_equal(batch, loader.batch_at(1, 0))
    resumed.cancel()

    # A local loader that returned the whole epoch without raising
    # StopIteration saves current_batch == batches_per_epoch.
    local = small_loader()
    for _ in range(3):
        next(local)
    assert local.current_batch == 3
    restored = stub.Restore(
        pb.RestoreRequest(
            session_id=info.session_id, state_json=json.dumps(local.state_dict())
        ),
        timeout=RPC_TIMEOUT_S,
    )
    position = restored.session.position
    assert (position.epoch, position.batch_index, position.global_index) == (1, 0, 3)


def test_server_restore_from_saved_state_file(
    stub: pb_grpc.GmmServiceStub, tmp_path: Path
) -> None:
    info = small_session(stub)
    local = small_loader()
    local.seek(1, 1)
    path = tmp_path / "train_state.json"
    local.save_state(path)
    restored = stub.Restore(
        pb.RestoreRequest(session_id=info.session_id, state_json=path.read_text()),
        timeout=RPC_TIMEOUT_S,
    )
    assert restored.session.position.global_index == 4
    stream = BatchStream(stub, session_id=info.session_id, max_batches=1)
    batch = stream.next_batch()
    data, targets = next(local)
    assert batch.global_index == 4
    assert batch.arrays["data"].tobytes() == data.tobytes()
    assert batch.arrays["labels"].tobytes() == targets["labels"].tobytes()
    stream.cancel()


def test_server_fixed_data_repeats_epochs(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub, samples_per_epoch=6, fixed_data=True)
    stream = BatchStream(stub, session_id=info.session_id, max_batches=4)
    batches = []
    for _ in range(4):
        batch = stream.next_batch()
        batches.append(batch)
        stream.ack(batch.global_index)
    assert stream.finish() is None
    assert [(batch.epoch, batch.batch_index) for batch in batches] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert batches[2].fingerprint == batches[0].fingerprint
    assert batches[3].fingerprint == batches[1].fingerprint
    assert batches[0].fingerprint != batches[1].fingerprint

    snapshot = stub.Snapshot(pb.SnapshotRequest(session_id=info.session_id), timeout=5)
    assert snapshot.position.global_index == 4
    stub.Restore(
        pb.RestoreRequest(session_id=info.session_id, state_json=snapshot.state_json),
        timeout=RPC_TIMEOUT_S,
    )
    resumed = BatchStream(stub, session_id=info.session_id, max_batches=2)
    third_epoch = [resumed.next_batch() for _ in range(2)]
    assert [batch.epoch for batch in third_epoch] == [2, 2]
    for index in range(2):
        assert third_epoch[index].arrays["data"].tobytes() == (
            batches[index].arrays["data"].tobytes()
        )
        assert third_epoch[index].fingerprint == batches[index].fingerprint
    resumed.cancel()


def test_server_chosen_seed_is_recorded(stub: pb_grpc.GmmServiceStub) -> None:
    config = dict(SMALL_CONFIG)
    del config["random_seed"]
    info = create_session(
        stub, config_json=json.dumps(config), batch_size=3, samples_per_epoch=8
    )
    assert info.spec.loader_id == "default"
    assert not info.spec.HasField("seed")
    snapshot = stub.Snapshot(pb.SnapshotRequest(session_id=info.session_id), timeout=5)
    document = json.loads(snapshot.state_json)
    assert document["loader_state"]["seed"] == info.seed

    # A local loader adopts the recorded seed from the snapshot's state.
    local = GMMDataLoader(config, batch_size=3, num_samples=8, loader_id="default")
    local.restore_state(document)
    assert local.seed == info.seed
    assert local.fingerprint == info.fingerprint
    stream = BatchStream(stub, session_id=info.session_id, max_batches=1)
    assert_batch_equal(stream.next_batch(), local.batch_at(0, 0))
    stream.cancel()


def test_server_restore_ends_open_stream(
    server: BackgroundServer, stub: pb_grpc.GmmServiceStub
) -> None:
    info = small_session(stub, samples_per_epoch=30)
    snapshot = stub.Snapshot(pb.SnapshotRequest(session_id=info.session_id), timeout=5)
    stream = BatchStream(stub, session_id=info.session_id, window=4)
    for index in range(2):
        assert stream.next_batch().global_index == index
        stream.ack(index)
    assert wait_for_cursor(stub, info.session_id, 2) == 2

    stub.Restore(
        pb.RestoreRequest(session_id=info.session_id, snapshot_id=snapshot.snapshot_id),
        timeout=RPC_TIMEOUT_S,
    )
    stream.ack(2)
    error = stream.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.ABORTED
    assert "restored to batch 0" in error.details()
    assert cursor_of(stub, info.session_id) == 0
    assert wait_for_open_streams(server, 0) == 0


def test_server_request_id_makes_create_idempotent(
    stub: pb_grpc.GmmServiceStub,
) -> None:
    spec = pb.SessionSpec(
        experiment="simple", batch_size=4, samples_per_epoch=16, seed=1
    )
    first = stub.CreateSession(
        pb.CreateSessionRequest(spec=spec, request_id="job-17"), timeout=RPC_TIMEOUT_S
    )
    again = stub.CreateSession(
        pb.CreateSessionRequest(spec=spec, request_id="job-17"), timeout=RPC_TIMEOUT_S
    )
    assert first.existing is False
    assert again.existing is True
    assert again.session.session_id == first.session.session_id

    other = pb.SessionSpec(
        experiment="simple", batch_size=8, samples_per_epoch=16, seed=1
    )
    error = rpc_error(
        lambda: stub.CreateSession(
            pb.CreateSessionRequest(spec=other, request_id="job-17"),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in error.details()
    assert first.session.session_id in error.details()


def test_server_list_and_close_sessions(stub: pb_grpc.GmmServiceStub) -> None:
    created = sorted(small_session(stub).session_id for _ in range(5))
    first = stub.ListSessions(
        pb.ListSessionsRequest(page_size=3), timeout=RPC_TIMEOUT_S
    )
    assert [info.session_id for info in first.sessions] == created[:3]
    second = stub.ListSessions(
        pb.ListSessionsRequest(page_size=3, page_token=first.next_page_token),
        timeout=RPC_TIMEOUT_S,
    )
    assert [info.session_id for info in second.sessions] == created[3:]
    assert second.next_page_token == ""

    session_id = created[0]
    stream = BatchStream(stub, session_id=session_id, window=2)
    assert stream.next_batch().global_index == 0
    stream.ack(0)
    assert wait_for_cursor(stub, session_id, 1) == 1
    stub.Snapshot(pb.SnapshotRequest(session_id=session_id), timeout=5)
    closed = stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=5)
    assert closed.position.global_index == 1
    error = stream.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.ABORTED
    assert "closed" in error.details()
    missing = rpc_error(
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=5)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    snapshots = rpc_error(
        lambda: stub.ListSnapshots(
            pb.ListSnapshotsRequest(session_id=session_id), timeout=5
        )
    )
    assert snapshots.code() == grpc.StatusCode.NOT_FOUND


def test_server_not_found_codes(stub: pb_grpc.GmmServiceStub) -> None:
    # The stub's channel sends the operator token for sessions it did not
    # create, and operators learn which ids are unknown.
    unknown = "ses_" + "A" * 22
    calls = {
        "GetSession": lambda: stub.GetSession(
            pb.GetSessionRequest(session_id=unknown), timeout=5
        ),
        "Snapshot": lambda: stub.Snapshot(
            pb.SnapshotRequest(session_id=unknown), timeout=5
        ),
        "CloseSession": lambda: stub.CloseSession(
            pb.CloseSessionRequest(session_id=unknown), timeout=5
        ),
    }
    for name, call in calls.items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, name
        assert unknown in error.details(), name

    info = small_session(stub)
    unknown_snapshot = "snap_" + "B" * 22
    error = rpc_error(
        lambda: stub.Restore(
            pb.RestoreRequest(session_id=info.session_id, snapshot_id=unknown_snapshot),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert unknown_snapshot in error.details()

    # Streams need the session token, which nobody has for an unknown id.
    stream = BatchStream(stub, session_id=unknown)
    error = stream.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"experiment": "standard", "batch_size": 0, "samples_per_epoch": 8},
            ["spec.batch_size", "0", "[1, 4096]"],
        ),
        (
            {"experiment": "standard", "batch_size": 5000, "samples_per_epoch": 8},
            ["spec.batch_size", "5000", "[1, 4096]"],
        ),
        (
            {"experiment": "standard", "batch_size": 4, "samples_per_epoch": 0},
            ["spec.samples_per_epoch", "0", "[1, 9007199254740991]"],
        ),
        (
            {
                "experiment": "standard",
                "batch_size": 4,
                "samples_per_epoch": 8,
                "seed": 2**60,
            },
            ["spec.seed", str(2**60), "[0, 9007199253740991]"],
        ),
        (
            {"experiment": "nonexistent", "batch_size": 4, "samples_per_epoch": 8},
            ["experiment", "'nonexistent'", "standard"],
        ),
        (
            {"config_json": '{"dim": 0}', "batch_size": 4, "samples_per_epoch": 8},
            ["dim", "0"],
        ),
        (
            {"config_json": "standard", "batch_size": 4, "samples_per_epoch": 8},
            ["spec.config_json", "'standard'"],
        ),
        ({"batch_size": 4, "samples_per_epoch": 8}, ["spec.config", "config_json"]),
        (
            {
                "experiment": "standard",
                "batch_size": 4,
                "samples_per_epoch": 8,
                "loader_id": "x" * 129,
            },
            ["spec.loader_id", "129", "128"],
        ),
    ],
    ids=[
        "batch-size-zero",
        "batch-size-over-limit",
        "samples-zero",
        "seed-too-large",
        "unknown-experiment",
        "invalid-config",
        "config-json-not-object",
        "config-missing",
        "loader-id-too-long",
    ],
)
def test_server_invalid_spec(
    stub: pb_grpc.GmmServiceStub, spec: dict[str, object], expected: list[str]
) -> None:
    error = rpc_error(lambda: create_session(stub, **spec))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for fragment in expected:
        assert fragment in error.details()


def test_server_invalid_stream_requests(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    too_wide = BatchStream(stub, session_id=info.session_id, window=65)
    error = too_wide.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start.window" in error.details()
    assert "65" in error.details()
    assert "[1, 64]" in error.details()

    stream = BatchStream(
        stub, session_id=info.session_id, start_global_index=4, window=2
    )
    assert stream.next_batch().global_index == 4
    assert stream.next_batch().global_index == 5
    stream.ack(9)
    error = stream.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ack.global_index" in error.details()
    assert "9" in error.details()
    assert "[3, 5]" in error.details()

    missing_id = BatchStream(stub, session_id="")
    error = missing_id.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start.session_id" in error.details()


def test_server_restore_of_other_seed_fails(stub: pb_grpc.GmmServiceStub) -> None:
    ours = small_session(stub, seed=5)
    theirs = small_session(stub, seed=6)
    snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=theirs.session_id), timeout=5
    )
    # Another session's snapshot id is unknown to this session.
    error = rpc_error(
        lambda: stub.Restore(
            pb.RestoreRequest(
                session_id=ours.session_id, snapshot_id=snapshot.snapshot_id
            ),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert snapshot.snapshot_id in error.details()

    error = rpc_error(
        lambda: stub.Restore(
            pb.RestoreRequest(
                session_id=ours.session_id, state_json=snapshot.state_json
            ),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "seed" in error.details()

    document = json.loads(snapshot.state_json)
    document["format_version"] = 2
    error = rpc_error(
        lambda: stub.Restore(
            pb.RestoreRequest(
                session_id=theirs.session_id, state_json=json.dumps(document)
            ),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "format_version" in error.details()


@pytest.mark.parametrize(
    ("state_json", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"format_version": 1}', "fingerprint"),
    ],
    ids=["not-json", "not-object", "missing-sections"],
)
def test_server_restore_of_malformed_state(
    stub: pb_grpc.GmmServiceStub, state_json: str, fragment: str
) -> None:
    info = small_session(stub)
    error = rpc_error(
        lambda: stub.Restore(
            pb.RestoreRequest(session_id=info.session_id, state_json=state_json),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()


def test_server_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in responses[0].list_services_response.service}
    assert SERVICE_NAME in names
    assert "grpc.health.v1.Health" in names


def test_server_restore_with_other_batches_per_epoch(
    stub: pb_grpc.GmmServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    info = small_session(stub)
    assert info.batches_per_epoch == 3
    # Same config and seed, but 20 samples: 7 batches per epoch.
    local = small_loader(num_samples=20)
    cases = [((2, 2), (2, 2, 8)), ((2, 5), (3, 0, 9))]
    for (epoch, batch), expected in cases:
        local.seek(epoch, batch)
        restored = stub.Restore(
            pb.RestoreRequest(
                session_id=info.session_id, state_json=json.dumps(local.state_dict())
            ),
            timeout=RPC_TIMEOUT_S,
        )
        position = restored.session.position
        assert (position.epoch, position.batch_index, position.global_index) == expected
    assert "state batches_per_epoch is 7" in caplog.text


def test_server_stream_limit_rejects_extra_stream(tmp_path: Path) -> None:
    settings = ServerSettings(port=0, data_dir=tmp_path, max_streams=2)
    with BackgroundServer(settings) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        sessions = [small_session(stub) for _ in range(3)]
        streams = [
            BatchStream(stub, session_id=info.session_id) for info in sessions[:2]
        ]
        for stream in streams:
            stream.next_batch()
        extra = BatchStream(stub, session_id=sessions[2].session_id)
        error = extra.finish()
        assert error is not None
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 open streams" in error.details()
        for stream in streams:
            stream.cancel()
        channel.close()


def test_server_list_sessions_rejects_bad_token(stub: pb_grpc.GmmServiceStub) -> None:
    error = rpc_error(
        lambda: stub.ListSessions(
            pb.ListSessionsRequest(page_token="not a token!"), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in error.details()


def test_server_accepts_ack_of_start_minus_one(
    stub: pb_grpc.GmmServiceStub,
) -> None:
    info = small_session(stub)
    stream = BatchStream(
        stub, session_id=info.session_id, start_global_index=4, window=1
    )
    assert stream.next_batch().global_index == 4
    # A reconnecting client repeats its last Ack, which is the new stream's
    # start - 1; the server commits it.
    stream.ack(3)
    assert wait_for_cursor(stub, info.session_id, 4) == 4
    stream.cancel()


def test_server_max_batches_ends_after_final_ack(
    stub: pb_grpc.GmmServiceStub,
) -> None:
    info = small_session(stub)
    stream = BatchStream(stub, session_id=info.session_id, max_batches=2, window=4)
    assert stream.next_batch().global_index == 0
    assert stream.next_batch().global_index == 1
    stream.ack(0)
    assert wait_for_cursor(stub, info.session_id, 1) == 1
    # Both batches were sent, but the call stays open for the final Ack.
    assert not stream.call.done()
    stream.ack(1)
    assert stream.finish() is None
    assert stream.skipped_responses == 0
    assert cursor_of(stub, info.session_id) == 2


def test_server_half_close_sends_rest_of_window(
    stub: pb_grpc.GmmServiceStub,
) -> None:
    info = small_session(stub)
    stream = BatchStream(stub, session_id=info.session_id, window=3)
    assert stream.next_batch().global_index == 0
    stream.ack(0)
    stream.half_close()
    # The window allows batches 1 to 3 after the Ack of batch 0; the server
    # sends those it has not sent yet, then ends with OK.
    received = []
    try:
        while True:
            received.append(stream.next_batch().global_index)
    except StopIteration:
        pass
    assert received == [1, 2, 3]
    assert stream.finish() is None
    assert cursor_of(stub, info.session_id) == 1


def test_server_rejects_decreasing_ack(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    stream = BatchStream(stub, session_id=info.session_id, window=4)
    received = [stream.next_batch().global_index for _ in range(4)]
    assert received == [0, 1, 2, 3]
    stream.ack(2)
    assert wait_for_cursor(stub, info.session_id, 3) == 3
    # A repeat of the highest Ack changes nothing and keeps the stream open.
    stream.ack(2)
    stream.ack(0)
    error = stream.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ack.global_index" in error.details()
    assert "0 is below 2" in error.details()
    assert cursor_of(stub, info.session_id) == 3


def test_server_new_stream_start_rewinds(stub: pb_grpc.GmmServiceStub) -> None:
    info = small_session(stub)
    first = BatchStream(stub, session_id=info.session_id, window=4)
    for _ in range(4):
        first.next_batch()
    first.ack(3)
    assert wait_for_cursor(stub, info.session_id, 4) == 4
    first.cancel()
    rewind = BatchStream(
        stub, session_id=info.session_id, start_global_index=1, window=1
    )
    assert rewind.next_batch().global_index == 1
    rewind.ack(1)
    assert wait_for_cursor(stub, info.session_id, 2) == 2
    rewind.cancel()


def test_server_positions_stop_below_2_pow_53(
    stub: pb_grpc.GmmServiceStub,
) -> None:
    last = 2**53 - 1
    info = small_session(stub, batch_size=8, samples_per_epoch=8)
    assert info.batches_per_epoch == 1
    too_far = BatchStream(stub, session_id=info.session_id, start_global_index=last)
    error = too_far.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start.start_global_index" in error.details()
    assert f"[0, {last - 1}]" in error.details()
    assert str(last) in error.details()

    # The stream sends batch 2^53 - 2 and then stops with OK after its Ack,
    # though the window allows more, because the cursor is then 2^53 - 1.
    stream = BatchStream(
        stub, session_id=info.session_id, start_global_index=last - 1, window=4
    )
    assert stream.next_batch().global_index == last - 1
    stream.ack(last - 1)
    assert stream.finish() is None
    assert stream.skipped_responses == 0
    assert cursor_of(stub, info.session_id) == last

    snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
    )
    assert snapshot.position.global_index == last
    restored = stub.Restore(
        pb.RestoreRequest(session_id=info.session_id, snapshot_id=snapshot.snapshot_id),
        timeout=RPC_TIMEOUT_S,
    )
    assert restored.session.position.global_index == last

    at_cursor = BatchStream(stub, session_id=info.session_id)
    error = at_cursor.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"committed cursor {last}" in error.details()

    past_end = BatchStream(
        stub, session_id=info.session_id, start_global_index=last - 2, max_batches=3
    )
    error = past_end.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start.max_batches" in error.details()
    assert "[0, 2]" in error.details()
