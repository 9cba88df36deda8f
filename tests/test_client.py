"""Tests of the client library: decoding, verification, streams and errors."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _server import OPERATOR_TOKEN
from gmmserve.demo import ServerProcess
from gmmserve.generator import ARRAY_NAMES as SERVER_ARRAY_NAMES
from gmmserve.generator import fingerprint_arrays as server_fingerprint
from gmmserve.loader import GMMDataLoader
from gmmserve.service import BackgroundServer, ServerSettings
from gmmserve_client import (
    ARRAY_NAMES,
    Aborted,
    Batch,
    BatchIntegrityError,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    GmmServeClientError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReconnectPolicy,
    RetryPolicy,
    Session,
    SessionNotFound,
    StreamInterrupted,
    decode_batch,
    fingerprint_arrays,
)
from gmmserve_client._batch import PartAssembler
from gmmserve_proto.v1 import gmmserve_pb2 as pb


def _loader(name: str | dict[str, Any] = "standard", **kwargs: Any) -> GMMDataLoader:
    settings: dict[str, Any] = {"batch_size": 4, "num_samples": 10, "loader_id": "test"}
    settings.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GMMDataLoader(name, **settings)


def _encode(loader: GMMDataLoader, epoch: int, batch_index: int) -> pb.Batch:
    """Build the Batch message of a loader batch as the wire contract describes."""
    batch = loader.batch_at(epoch, batch_index)
    message = pb.Batch(
        position=pb.Position(
            epoch=epoch,
            batch_index=batch_index,
            global_index=epoch * loader.batches_per_epoch + batch_index,
        ),
        fingerprint=batch.fingerprint(),
    )
    for name in SERVER_ARRAY_NAMES:
        array = batch.arrays[name]
        message.arrays.add(
            name=name,
            dtype=array.dtype.str,
            shape=list(array.shape),
            data=np.ascontiguousarray(array).tobytes(),
        )
    return message


def test_client_imports_no_server_code() -> None:
    script = (
        "import sys, gmmserve_client; "
        "print(sorted(name for name in sys.modules "
        "if name.split('.')[0] in ('gmmserve', 'scipy', 'pydantic', 'rich')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_client_array_names_match_server() -> None:
    assert ARRAY_NAMES == SERVER_ARRAY_NAMES


@pytest.mark.parametrize("name", ["standard", "3d", "advanced"])
def test_client_fingerprint_matches_generator(name: str) -> None:
    batch = _loader(name).batch_at(1, 2)
    assert fingerprint_arrays(batch.arrays) == server_fingerprint(batch.arrays)


def test_client_decode_round_trip_bit_for_bit() -> None:
    loader = _loader("advanced")
    expected = loader.batch_at(1, 1)
    decoded = decode_batch(_encode(loader, 1, 1))
    assert decoded.epoch == 1
    assert decoded.batch_index == 1
    assert decoded.global_index == loader.batches_per_epoch + 1
    assert decoded.fingerprint == expected.fingerprint()
    assert decoded.data.dtype == np.float32
    assert decoded.data.tobytes() == expected.data.tobytes()
    targets = expected.targets()
    assert set(decoded.targets) == set(targets) - {"params"}
    for name, array in decoded.targets.items():
        assert array.dtype == targets[name].dtype, name
        assert array.shape == targets[name].shape, name
        assert array.tobytes() == targets[name].tobytes(), name


def test_client_decoded_arrays_are_writable() -> None:
    decoded = decode_batch(_encode(_loader(), 0, 0))
    assert decoded.data.flags.writeable
    assert decoded.targets["labels"].flags.writeable


def test_client_decode_tampered_byte_raises() -> None:
    message = _encode(_loader(), 0, 1)
    data = bytearray(message.arrays[0].data)
    data[17] ^= 0x01
    message.arrays[0].data = bytes(data)
    with pytest.raises(BatchIntegrityError, match="corrupt"):
        decode_batch(message)


def test_client_decode_tampered_fingerprint_raises() -> None:
    message = _encode(_loader(), 0, 1)
    message.fingerprint = "blake2b-256:" + "0" * 64
    with pytest.raises(BatchIntegrityError, match="corrupt"):
        decode_batch(message)


def test_client_decode_tampered_shape_raises() -> None:
    message = _encode(_loader(), 0, 0)
    # Same byte count, another shape: only the fingerprint header catches it.
    weights = message.arrays[3]
    rows, columns = weights.shape
    weights.ClearField("shape")
    weights.shape.extend([columns, rows])
    with pytest.raises(BatchIntegrityError, match="corrupt"):
        decode_batch(message)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("name", "points", "array name is 'points'"),
        ("dtype", "<f8", "dtype '<f8'"),
        ("data", b"\x00" * 3, "needs"),
    ],
)
def test_client_decode_malformed_array_raises(
    field: str, value: Any, match: str
) -> None:
    message = _encode(_loader(), 0, 0)
    setattr(message.arrays[0], field, value)
    with pytest.raises(BatchIntegrityError, match=match):
        decode_batch(message)


def test_client_decode_missing_array_raises() -> None:
    message = _encode(_loader(), 0, 0)
    del message.arrays[-1]
    with pytest.raises(BatchIntegrityError, match="has 8 arrays; expected 9"):
        decode_batch(message)


def _split(message: pb.Batch, part_count: int) -> list[pb.BatchPart]:
    payload = message.SerializeToString()
    size = -(-len(payload) // part_count)
    return [
        pb.BatchPart(
            position=message.position,
            part_index=index,
            part_count=part_count,
            payload=payload[index * size : (index + 1) * size],
        )
        for index in range(part_count)
    ]


def test_client_parts_reassemble_bit_for_bit() -> None:
    message = _encode(_loader("advanced"), 0, 2)
    assembler = PartAssembler()
    parts = _split(message, 4)
    for part in parts[:-1]:
        assert assembler.add(part) is None
        assert assembler.pending
    assembled = assembler.add(parts[-1])
    assert not assembler.pending
    assert assembled == message
    assert assembled is not None
    assert decode_batch(assembled).fingerprint == message.fingerprint


def test_client_parts_single_part() -> None:
    message = _encode(_loader(), 0, 0)
    assert PartAssembler().add(_split(message, 1)[0]) == message


def test_client_parts_out_of_order_raises() -> None:
    parts = _split(_encode(_loader(), 0, 0), 3)
    assembler = PartAssembler()
    assembler.add(parts[0])
    with pytest.raises(BatchIntegrityError, match="arrived where part 1 was expected"):
        assembler.add(parts[2])


def test_client_parts_mixed_batches_raise() -> None:
    loader = _loader()
    first = _split(_encode(loader, 0, 0), 2)
    second = _split(_encode(loader, 0, 1), 2)
    assembler = PartAssembler()
    assembler.add(first[0])
    with pytest.raises(BatchIntegrityError, match="part 0 had position 0"):
        assembler.add(second[1])


def test_client_parts_truncated_payload_raises() -> None:
    parts = _split(_encode(_loader(), 0, 0), 2)
    parts[1].payload = parts[1].payload[:-5]
    assembler = PartAssembler()
    assembler.add(parts[0])
    with pytest.raises(BatchIntegrityError):
        decode_batch(assembler.add(parts[1]) or pb.Batch())


def test_client_retry_policy_service_config() -> None:
    config = json.loads(RetryPolicy(max_attempts=3).service_config())
    method = config["methodConfig"][0]
    assert method["retryPolicy"]["maxAttempts"] == 3
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    names = {entry["method"] for entry in method["name"]}
    assert "StreamBatches" not in names
    assert "CreateSession" in names


def test_client_retry_policy_rejects_six_attempts() -> None:
    with pytest.raises(
        ValueError, match=r"max_attempts must be an integer in \[1, 5\]"
    ):
        RetryPolicy(max_attempts=6)


# Tests against a real server: an in-process BackgroundServer for most, and a
# `gmmserve serve` subprocess where the server must die with SIGKILL.

_SEED = 321
_BATCH_SIZE = 4
_SAMPLES_PER_EPOCH = 10  # 3 batches per epoch: 4, 4 and 2 datasets


@pytest.fixture(scope="module")
def background_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackgroundServer]:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path_factory.mktemp("client-store"),
        operator_token=OPERATOR_TOKEN,
    )
    with BackgroundServer(settings) as server:
        yield server


@pytest.fixture
def server_target(background_server: BackgroundServer) -> str:
    return f"127.0.0.1:{background_server.port}"


@pytest.fixture
def client(server_target: str) -> Iterator[Client]:
    with Client(
        server_target, timeout_s=30.0, operator_token=OPERATOR_TOKEN
    ) as connection:
        yield connection


def _create(client: Client, config: dict[str, Any], **kwargs: Any) -> Session:
    settings: dict[str, Any] = {
        "seed": _SEED,
        "loader_id": "train",
        "batch_size": _BATCH_SIZE,
        "samples_per_epoch": _SAMPLES_PER_EPOCH,
    }
    settings.update(kwargs)
    return client.create_session(config, **settings)


def _local(config: dict[str, Any] | str, **kwargs: Any) -> GMMDataLoader:
    settings: dict[str, Any] = {
        "base_seed": _SEED,
        "loader_id": "train",
        "batch_size": _BATCH_SIZE,
        "num_samples": _SAMPLES_PER_EPOCH,
    }
    settings.update(kwargs)
    return _loader(config, **settings)


def _assert_matches_loader(batches: list[Batch], loader: GMMDataLoader) -> None:
    for batch in batches:
        epoch, batch_index = divmod(batch.global_index, loader.batches_per_epoch)
        assert (batch.epoch, batch.batch_index) == (epoch, batch_index)
        expected = loader.batch_at(epoch, batch_index)
        assert batch.fingerprint == expected.fingerprint()
        for name, array in batch.arrays.items():
            assert array.dtype == expected.arrays[name].dtype, name
            assert array.shape == expected.arrays[name].shape, name
            assert array.tobytes() == expected.arrays[name].tobytes(), name


def test_client_stream_matches_local_loader(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    with session.batches(max_batches=7, window=2) as stream:
        batches = list(stream)
    assert [batch.global_index for batch in batches] == list(range(7))
    assert [len(batch.data) for batch in batches] == [4, 4, 2, 4, 4, 2, 4]
    _assert_matches_loader(batches, _local(small_config))
    assert session.position.global_index == 7
    assert stream.batches_received == 7
    assert stream.bytes_received > sum(batch.data.nbytes for batch in batches)


def test_client_stream_start_index(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    with session.batches(start=4, max_batches=2) as stream:
        batches = list(stream)
    assert [batch.global_index for batch in batches] == [4, 5]
    _assert_matches_loader(batches, _local(small_config))
    assert session.position.global_index == 6


def test_client_stream_large_batches_in_parts(client: Client) -> None:
    # 64 datasets of up to 3000 two-dimensional points: over the server's
    # 1 MiB part size, so batches arrive as BatchParts.
    session = client.create_session(
        experiment="advanced", seed=_SEED, batch_size=64, samples_per_epoch=128
    )
    with session.batches(max_batches=2) as stream:
        batches = list(stream)
    assert max(batch.wire_bytes for batch in batches) > 1024 * 1024
    loader = _loader(
        "advanced", batch_size=64, num_samples=128, base_seed=_SEED, loader_id="default"
    )
    _assert_matches_loader(batches, loader)


def test_client_auto_ack_on_close(client: Client, small_config: dict[str, Any]) -> None:
    session = _create(client, small_config)
    with session.batches(window=4) as stream:
        for batch in stream:
            if batch.global_index == 2:
                break
    # Batch 2 was consumed before close, so the cursor is past it.
    assert session.position.global_index == 3
    with session.batches(max_batches=1) as stream:
        assert [batch.global_index for batch in stream] == [3]


def test_client_auto_ack_when_next_requested(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    stream = session.batches(window=8)
    first = next(stream)
    second = next(stream)
    assert (first.global_index, second.global_index) == (0, 1)
    # Requesting batch 1 acknowledged batch 0; batch 1 is not consumed yet.
    deadline = 50
    while session.position.global_index != 1 and deadline:
        deadline -= 1
        time.sleep(0.05)
    assert session.position.global_index == 1
    stream.close()
    assert session.position.global_index == 2


def test_client_manual_ack(client: Client, small_config: dict[str, Any]) -> None:
    session = _create(client, small_config)
    with session.batches(window=8, ack="manual") as stream:
        batches = [next(stream) for _ in range(4)]
        with pytest.raises(ValueError, match="last batch yielded is 3"):
            stream.ack(5)
        session.ack(batches[1])
        # An older batch than the last acknowledgement changes nothing.
        stream.ack(batches[0])
    assert session.position.global_index == 2
    with pytest.raises(GmmServeClientError, match="no open stream"):
        session.ack(batches[3])


def test_client_manual_ack_without_ack_keeps_cursor(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    with session.batches(max_batches=3, ack="manual") as stream:
        assert [batch.global_index for batch in stream] == [0, 1, 2]
    assert session.position.global_index == 0


def test_client_stream_deadline_exceeded(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    # With window 1 the server sends one batch and waits for its Ack, which
    # the consumer sends only after the call's deadline has passed.
    stream = session.batches(window=1, ack="manual", timeout_s=0.5)
    assert next(stream).global_index == 0
    time.sleep(1.0)
    stream.ack(0)
    with pytest.raises(DeadlineExceeded) as caught:
        next(stream)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stream.closed


def test_client_dropped_stream_ends_call(
    background_server: BackgroundServer, client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    stream = session.batches(window=1)
    assert next(stream).global_index == 0
    assert background_server.open_stream_count == 1
    del stream
    gc.collect()
    for _ in range(100):
        if background_server.open_stream_count == 0:
            break
        time.sleep(0.05)
    assert background_server.open_stream_count == 0


def test_client_stream_aborted_by_restore(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    snapshot = session.snapshot()
    with session.batches(window=2) as stream:
        assert next(stream).global_index == 0
        session.restore(snapshot_id=snapshot.snapshot_id)
        with pytest.raises(Aborted) as caught:
            for _ in range(10):
                next(stream)
    assert caught.value.code == grpc.StatusCode.ABORTED
    assert "restored" in caught.value.details
    assert session.position.global_index == 0


def test_client_attach_existing_session(
    server_target: str, client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    with session.batches(max_batches=2) as stream:
        list(stream)
    with Client(server_target) as other:
        attached = other.session(session.id, token=session.token)
        info = attached.info()
        assert info.session_id == session.id
        assert info.seed == session.info().seed
        assert info.position.global_index == 2
        assert info.spec.loader_id == "train"
        assert info.spec.seed == _SEED
        with attached.batches(max_batches=2) as stream:
            batches = list(stream)
    assert [batch.global_index for batch in batches] == [2, 3]
    _assert_matches_loader(batches, _local(small_config))
    assert session.id in {info.session_id for info in client.list_sessions(page_size=1)}


def test_client_request_id_returns_same_session(
    client: Client, small_config: dict[str, Any]
) -> None:
    first = _create(client, small_config, request_id="client-test-request-1")
    second = _create(client, small_config, request_id="client-test-request-1")
    assert first.id == second.id


def test_client_snapshot_restore(client: Client, small_config: dict[str, Any]) -> None:
    session = _create(client, small_config)
    with session.batches(max_batches=4) as stream:
        list(stream)
    snapshot = session.snapshot(label="after four")
    assert snapshot.position.global_index == 4
    assert (snapshot.position.epoch, snapshot.position.batch_index) == (1, 1)
    assert snapshot.label == "after four"
    with session.batches(max_batches=3) as stream:
        list(stream)
    assert session.position.global_index == 7
    info = session.restore(snapshot_id=snapshot.snapshot_id)
    assert info.position.global_index == 4
    assert [item.snapshot_id for item in session.list_snapshots()] == [
        snapshot.snapshot_id
    ]

    local = _local(small_config)
    local.restore_state(json.loads(snapshot.state_json))
    assert (local.current_epoch, local.current_batch) == (1, 1)
    local.seek(2, 0)
    assert session.restore(state=local.state_dict()).position.global_index == 6
    assert (
        session.restore(state=json.dumps(local.state_dict())).position.global_index == 6
    )
    assert session.close().global_index == 6
    with pytest.raises(SessionNotFound):
        session.info()


def test_client_delete_snapshot(client: Client, small_config: dict[str, Any]) -> None:
    session = _create(client, small_config)
    first = session.snapshot(label="first")
    with session.batches(max_batches=2) as stream:
        list(stream)
    second = session.snapshot(label="second")
    assert session.delete_snapshot(first.snapshot_id) == first
    assert [item.snapshot_id for item in session.list_snapshots()] == [
        second.snapshot_id
    ]
    assert session.position.global_index == 2
    with pytest.raises(NotFound) as caught:
        session.delete_snapshot(first.snapshot_id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert first.snapshot_id in caught.value.details
    assert session.restore(snapshot_id=second.snapshot_id).position.global_index == 2


def test_client_error_not_found(client: Client) -> None:
    # The client sends the operator token for a session it did not create,
    # and operators learn which ids are unknown.
    unknown = "ses_" + "A" * 22
    with pytest.raises(SessionNotFound) as caught:
        client.session(unknown)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert unknown in caught.value.details
    # Streams need the session token, which nobody has for an unknown id.
    stream = Session(client, unknown).batches()
    with pytest.raises(PermissionDenied):
        next(stream)
    assert stream.closed


def test_client_error_snapshot_not_found(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    with pytest.raises(NotFound) as caught:
        session.restore(snapshot_id="snap_" + "B" * 22)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        # Above the server's default max_batch_size of 4096; the client
        # itself rejects values outside the wire range.
        ({"batch_size": 100_000}, "batch_size"),
        ({"config": '{"dim": 0}'}, "dim"),
        ({"config": '{"unknown_key": 1}'}, "unknown_key"),
        ({"config": None, "experiment": "no_such_experiment"}, "experiment"),
    ],
)
def test_client_error_invalid_argument(
    client: Client, small_config: dict[str, Any], settings: dict[str, Any], field: str
) -> None:
    config = settings.pop("config", small_config)
    with pytest.raises(InvalidArgument) as caught:
        _create(client, config, **settings)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details


def test_client_error_failed_precondition(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    other_seed = _local(small_config, base_seed=_SEED + 1)
    with pytest.raises(FailedPrecondition) as caught:
        session.restore(state=other_seed.state_dict())
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_client_create_requires_one_config(client: Client) -> None:
    with pytest.raises(ValueError, match="exactly one of config and experiment"):
        client.create_session()
    with pytest.raises(ValueError, match="exactly one of config and experiment"):
        client.create_session({"dim": 2}, experiment="standard")


@pytest.mark.parametrize("shutdown", ["sigkill", "sigterm"])
def test_client_resume_after_restart(
    tmp_path: Path, small_config: dict[str, Any], shutdown: str
) -> None:
    reconnect = ReconnectPolicy(
        max_attempts=20, initial_backoff_s=0.05, max_elapsed_s=60.0
    )
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    restarter: threading.Thread | None = None
    try:
        server.start()
        with Client(server.target, reconnect=reconnect) as connection:
            session = _create(connection, small_config)
            received: list[Batch] = []
            with session.batches(max_batches=12, window=3) as stream:
                for batch in stream:
                    received.append(batch)
                    if len(received) == 4:
                        # SIGKILL drops the connection; SIGTERM makes the
                        # server end the stream with UNAVAILABLE.
                        if shutdown == "sigkill":
                            server.kill()
                        else:
                            server.stop()
                        # The stream reconnects with backoff while the new
                        # server starts on the same port and data directory.
                        restarter = threading.Thread(target=server.start)
                        restarter.start()
            restarter_thread = restarter
            assert restarter_thread is not None
            restarter_thread.join()
            assert stream.reconnects >= 1
            assert [batch.global_index for batch in received] == list(range(12))
            _assert_matches_loader(received, _local(small_config))
            assert session.position.global_index == 12
    finally:
        if restarter is not None:
            restarter.join()
        server.kill()


def test_client_stream_gives_up_when_server_gone(
    tmp_path: Path, small_config: dict[str, Any]
) -> None:
    reconnect = ReconnectPolicy(
        max_attempts=2, initial_backoff_s=0.05, max_elapsed_s=10.0
    )
    with (
        ServerProcess(tmp_path / "data", tmp_path / "server.log") as server,
        Client(server.target, reconnect=reconnect) as connection,
    ):
        session = _create(connection, small_config)
        stream = session.batches(window=1)
        assert next(stream).global_index == 0
        server.kill()
        with pytest.raises(StreamInterrupted, match="2 reconnect attempts") as caught:
            for _ in range(10):
                next(stream)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert stream.closed
        # Asking for batch 1 consumed batch 0, whose Ack may be lost.
        assert caught.value.last_consumed == 0
        assert caught.value.resume_start == 1
        assert "The last batch consumed was 0" in str(caught.value)
        assert "session.batches(start=1)" in str(caught.value)


def test_client_stream_gives_up_after_elapsed_time(
    tmp_path: Path, small_config: dict[str, Any]
) -> None:
    # No attempt limit: only max_elapsed_s ends the reconnects.
    reconnect = ReconnectPolicy(
        max_attempts=None, initial_backoff_s=0.05, max_elapsed_s=1.0
    )
    with (
        ServerProcess(tmp_path / "data", tmp_path / "server.log") as server,
        Client(server.target, reconnect=reconnect) as connection,
    ):
        session = _create(connection, small_config)
        stream = session.batches(window=4, ack="manual")
        batches = [next(stream) for _ in range(3)]
        stream.ack(batches[1])
        server.kill()
        with pytest.raises(StreamInterrupted) as caught:
            for _ in range(10):
                next(stream)
        assert "max_attempts None, max_elapsed_s 1.0" in str(caught.value)
        assert caught.value.last_consumed == 1
        assert caught.value.resume_start == 2
        assert "session.batches(start=2)" in str(caught.value)


def test_client_manual_ack_full_window(
    client: Client, small_config: dict[str, Any]
) -> None:
    session = _create(client, small_config)
    with session.batches(window=3, ack="manual") as stream:
        batches = [next(stream) for _ in range(3)]
        assert [batch.global_index for batch in batches] == [0, 1, 2]
        with pytest.raises(GmmServeClientError) as caught:
            next(stream)
        message = str(caught.value)
        assert "batches 0 to 2 were yielded but not acknowledged" in message
        assert "window of 3" in message
        assert "stream.ack(batch)" in message
        # The stream stays open: an acknowledgement lets it go on.
        assert not stream.closed
        stream.ack(batches[0])
        assert next(stream).global_index == 3
        with pytest.raises(GmmServeClientError, match="batches 1 to 3"):
            next(stream)
        stream.ack(3)
    assert session.position.global_index == 4


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"seed": -1}, "seed: -1 is out of range; the accepted range is [0, "),
        (
            {"batch_size": -1},
            "batch_size: -1 is out of range; the accepted range is [1, 4294967295]",
        ),
        (
            {"batch_size": 5_000_000_000},
            (
                "batch_size: 5000000000 is out of range; the accepted range is "
                "[1, 4294967295]"
            ),
        ),
        (
            {"samples_per_epoch": 0},
            (
                "samples_per_epoch: 0 is out of range; the accepted range is "
                "[1, 9007199254740991]"
            ),
        ),
    ],
)
def test_client_create_rejects_out_of_range(
    client: Client, arguments: dict[str, int], expected: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_session(experiment="simple", **arguments)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(caught.value, ValueError)
    assert expected in str(caught.value)


def test_client_create_rejects_float_seed(client: Client) -> None:
    with pytest.raises(TypeError, match=r"seed must be an integer in \[0, "):
        client.create_session(experiment="simple", seed=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"start": -1}, "start: -1 is out of range"),
        ({"start": 2**53 - 1}, "[0, 9007199254740990]"),
        ({"max_batches": 0}, "max_batches: 0 is out of range"),
        (
            {"start": 2**53 - 3, "max_batches": 3},
            "max_batches: 3 is out of range; the accepted range is [1, 2]",
        ),
        ({"window": 0}, "window: 0 is out of range; the accepted range is [1, "),
    ],
)
def test_client_batches_rejects_out_of_range(
    client: Client,
    small_config: dict[str, Any],
    arguments: dict[str, int],
    expected: str,
) -> None:
    session = _create(client, small_config)
    with pytest.raises(InvalidArgument) as caught:
        session.batches(**arguments)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(caught.value, ValueError)
    assert expected in str(caught.value)


def test_client_reconnect_default_is_15_minutes() -> None:
    policy = ReconnectPolicy()
    assert policy.max_elapsed_s == 900.0
    assert policy.max_attempts is None
