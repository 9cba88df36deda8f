"""Tests of server limits and of input checks at the request boundary."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _server import (
    OPERATOR_TOKEN,
    RPC_TIMEOUT_S,
    BatchStream,
    TokenInterceptor,
    assert_batch_equal,
    open_channel,
    wait_for_value,
)
from conftest import SMALL_CONFIG
from gmmserve.config import DEFAULT_LIMITS, Limits
from gmmserve.loader import GMMDataLoader
from gmmserve.service import BackgroundServer, ServerSettings
from gmmserve.service._arguments import add_server_arguments, settings_from_arguments
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

pytestmark = pytest.mark.filterwarnings("ignore::gmmserve.errors.LegacyKeyWarning")


def running(tmp_path: Path, **settings: Any) -> BackgroundServer:
    return BackgroundServer(
        ServerSettings(
            port=0, data_dir=tmp_path, operator_token=OPERATOR_TOKEN, **settings
        )
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    with running(tmp_path) as background:
        yield background


@pytest.fixture
def stub(server: BackgroundServer) -> Iterator[Any]:
    channel = open_channel(server.port)
    yield pb_grpc.GmmServiceStub(channel)
    channel.close()


def spec(**fields: Any) -> pb.SessionSpec:
    values: dict[str, Any] = {
        "config_json": json.dumps(SMALL_CONFIG),
        "seed": 5,
        "loader_id": "train",
        "batch_size": 3,
        "samples_per_epoch": 8,
    }
    values.update(fields)
    return pb.SessionSpec(**values)


def create(stub: Any, **fields: Any) -> pb.SessionInfo:
    request = pb.CreateSessionRequest(spec=spec(**fields))
    return stub.CreateSession(request, timeout=RPC_TIMEOUT_S).session


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def session_count(stub: Any) -> int:
    listed = stub.ListSessions(pb.ListSessionsRequest(), timeout=RPC_TIMEOUT_S)
    return len(listed.sessions)


def snapshot_count(stub: Any, session_id: str) -> int:
    listed = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=session_id), timeout=RPC_TIMEOUT_S
    )
    return len(listed.snapshots)


# Limits.


def test_limits_max_sessions(tmp_path: Path) -> None:
    with running(tmp_path, max_sessions=3) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        first = stub.CreateSession(
            pb.CreateSessionRequest(spec=spec(), request_id="limits-first"),
            timeout=RPC_TIMEOUT_S,
        ).session
        create(stub)
        create(stub)
        error = rpc_error(lambda: create(stub))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_sessions=3" in error.details()
        assert session_count(stub) == 3
        # A retry of an existing create returns its session at the limit.
        again = stub.CreateSession(
            pb.CreateSessionRequest(spec=spec(), request_id="limits-first"),
            timeout=RPC_TIMEOUT_S,
        )
        assert again.existing
        assert again.session.session_id == first.session_id
        stub.CloseSession(
            pb.CloseSessionRequest(session_id=first.session_id), timeout=RPC_TIMEOUT_S
        )
        assert create(stub).session_id != first.session_id
        channel.close()


def test_limits_max_snapshots_per_session(tmp_path: Path) -> None:
    with running(tmp_path, max_snapshots_per_session=2) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        session_id = create(stub).session_id
        request = pb.SnapshotRequest(session_id=session_id)
        stub.Snapshot(request, timeout=RPC_TIMEOUT_S)
        stub.Snapshot(request, timeout=RPC_TIMEOUT_S)
        error = rpc_error(lambda: stub.Snapshot(request, timeout=RPC_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_snapshots_per_session=2" in error.details()
        assert snapshot_count(stub, session_id) == 2
        # Another session has its own count.
        other = create(stub).session_id
        stub.Snapshot(pb.SnapshotRequest(session_id=other), timeout=RPC_TIMEOUT_S)
        assert snapshot_count(stub, other) == 1
        channel.close()


def test_limits_delete_snapshot_frees_room(tmp_path: Path) -> None:
    with running(tmp_path, max_snapshots_per_session=2) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        session_id = create(stub).session_id
        request = pb.SnapshotRequest(session_id=session_id)
        oldest = stub.Snapshot(request, timeout=RPC_TIMEOUT_S)
        newer = stub.Snapshot(request, timeout=RPC_TIMEOUT_S)
        error = rpc_error(lambda: stub.Snapshot(request, timeout=RPC_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "DeleteSnapshot" in error.details()

        stub.DeleteSnapshot(
            pb.DeleteSnapshotRequest(
                session_id=session_id, snapshot_id=oldest.snapshot_id
            ),
            timeout=RPC_TIMEOUT_S,
        )
        latest = stub.Snapshot(request, timeout=RPC_TIMEOUT_S)
        listed = stub.ListSnapshots(
            pb.ListSnapshotsRequest(session_id=session_id), timeout=RPC_TIMEOUT_S
        )
        assert [item.snapshot_id for item in listed.snapshots] == [
            newer.snapshot_id,
            latest.snapshot_id,
        ]
        error = rpc_error(lambda: stub.Snapshot(request, timeout=RPC_TIMEOUT_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()


def test_limits_max_request_bytes(tmp_path: Path) -> None:
    with running(tmp_path, max_request_bytes=64 * 1024) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        session_id = create(stub).session_id
        large = json.dumps({"format_version": 1, "padding": "x" * 70_000})
        error = rpc_error(
            lambda: stub.Restore(
                pb.RestoreRequest(session_id=session_id, state_json=large),
                timeout=RPC_TIMEOUT_S,
            )
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = stub.GetSession(
            pb.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S
        )
        assert info.position.global_index == 0
        channel.close()


def test_limits_config_limits_apply(tmp_path: Path) -> None:
    limits = Limits(max_dim=4, max_clusters=3, max_points=30, max_batch_size=2)
    with running(tmp_path, limits=limits) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        within = {
            **SMALL_CONFIG,
            "cluster_params": {"type": "range", "min": 2, "max": 3},
            "sample_count_distribution": {"type": "range", "min": 20, "max": 30},
        }
        cases = {
            "dim": {"config_json": json.dumps({**within, "dim": 5})},
            "cluster_params": {
                "config_json": json.dumps(
                    {**within, "cluster_params": {"type": "range", "min": 2, "max": 4}}
                )
            },
            "sample_count_distribution": {
                "config_json": json.dumps(
                    {
                        **within,
                        "sample_count_distribution": {
                            "type": "range",
                            "min": 20,
                            "max": 40,
                        },
                    }
                )
            },
            "spec.batch_size": {"config_json": json.dumps(within), "batch_size": 3},
        }
        for field, fields in cases.items():
            error = rpc_error(lambda fields=fields: create(stub, **fields))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in error.details(), field
        assert session_count(stub) == 0
        # The same config within every limit is accepted.
        create(stub, config_json=json.dumps(within), batch_size=2)
        assert session_count(stub) == 1
        channel.close()


def test_limits_serve_flags_reach_settings() -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    defaults = settings_from_arguments(parser.parse_args([]))
    assert defaults.limits == DEFAULT_LIMITS
    assert defaults.max_sessions == ServerSettings().max_sessions
    assert defaults.idle_timeout_s == ServerSettings().idle_timeout_s
    flags = [
        "--max-dim=8",
        "--max-clusters=9",
        "--max-points=1000",
        "--max-batch-size=7",
        "--max-batch-elements=123456",
        "--max-sessions=11",
        "--max-snapshots-per-session=12",
        "--max-streams=13",
        "--max-window=14",
        "--max-request-bytes=70000",
        "--part-size=4096",
        "--idle-timeout-s=2.5",
    ]
    settings = settings_from_arguments(parser.parse_args(flags))
    assert settings.limits.max_dim == 8
    assert settings.limits.max_clusters == 9
    assert settings.limits.max_points == 1000
    assert settings.limits.max_batch_size == 7
    assert settings.limits.max_batch_elements == 123456
    assert settings.max_sessions == 11
    assert settings.max_snapshots_per_session == 12
    assert settings.max_streams == 13
    assert settings.max_window == 14
    assert settings.max_request_bytes == 70000
    assert settings.part_size == 4096
    assert settings.idle_timeout_s == 2.5


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (
            "--max-sessions=0",
            (
                "argument --max-sessions: 0 is out of range; accepted range is "
                "[1, 100000000]"
            ),
        ),
        (
            "--max-dim=0",
            (
                "argument --max-dim: 0 is out of range; accepted range is "
                "[1, 9007199254740991]"
            ),
        ),
        (
            "--idle-timeout-s=nan",
            (
                "argument --idle-timeout-s: nan is out of range; accepted range is "
                "[1, 2592000] seconds"
            ),
        ),
        (
            "--part-size=10",
            (
                "argument --part-size: 10 is out of range; accepted range is "
                "[1024, 3145728]"
            ),
        ),
    ],
)
def test_limits_serve_flag_out_of_range(
    capsys: pytest.CaptureFixture[str], flag: str, expected: str
) -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([flag])
    assert expected in capsys.readouterr().err


def wait_for_live_sessions(server: BackgroundServer, expected: int) -> int:
    return wait_for_value(lambda: server.live_session_count, expected)


def test_limits_idle_session_expires_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loader = GMMDataLoader(
        dict(SMALL_CONFIG), batch_size=3, num_samples=8, base_seed=5, loader_id="train"
    )
    with running(tmp_path, idle_timeout_s=1.0) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        session_id = create(stub).session_id
        stream = BatchStream(stub, session_id=session_id, max_batches=2)
        for index in range(2):
            assert_batch_equal(stream.next_batch(), loader.batch_at(0, index))
        stream.ack(1)
        assert stream.finish() is None
        assert wait_for_live_sessions(server, 0) == 0
        assert f"session {session_id} expired after" in caplog.text

        # The next stream rebuilds the loader at the stored cursor.
        stream = BatchStream(stub, session_id=session_id, max_batches=3)
        for index in (2, 3, 4):
            batch = stream.next_batch()
            assert batch.global_index == index
            epoch, batch_index = divmod(index, 3)
            assert_batch_equal(batch, loader.batch_at(epoch, batch_index))
        stream.ack(4)
        assert stream.finish() is None
        info = stub.GetSession(
            pb.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S
        )
        assert info.position.global_index == 5
        channel.close()


def test_limits_open_stream_keeps_session_live(tmp_path: Path) -> None:
    with running(tmp_path, idle_timeout_s=1.0) as server:
        channel = open_channel(server.port)
        stub = pb_grpc.GmmServiceStub(channel)
        session_id = create(stub).session_id
        stream = BatchStream(stub, session_id=session_id, window=1)
        assert stream.next_batch().global_index == 0
        # Three sweeps at least pass while the stream waits for an Ack.
        time.sleep(2.5)
        assert server.live_session_count == 1
        stream.ack(0)
        assert stream.next_batch().global_index == 1
        stream.cancel()
        assert wait_for_live_sessions(server, 0) == 0
        channel.close()


# Input checks.

# Within the 64 KiB config length limit, and far deeper than Python's
# recursion limit.
DEEP = '{"dim": ' + "[" * 30_000 + "]" * 30_000 + "}"

INVALID_SPECS = [
    ("nan", {"config_json": '{"dim": NaN}'}, "NaN"),
    ("infinity", {"config_json": '{"dim": 2, "noise_std": Infinity}'}, "Infinity"),
    ("minus-infinity", {"config_json": '{"dim": -Infinity}'}, "-Infinity"),
    ("overflow", {"config_json": '{"dim": 2, "x": 1e400}'}, "1e400"),
    ("huge-int", {"config_json": '{"dim": ' + "9" * 5000 + "}"}, "spec.config_json"),
    ("deep", {"config_json": DEEP}, "nested too deeply"),
    ("empty-config", {"config_json": ""}, "spec.config_json"),
    ("array-config", {"config_json": "[1, 2]"}, "must be a JSON object"),
    ("oversized-config", {"config_json": " " * 70_000 + "{}"}, "65536"),
    ("unknown-key", {"config_json": '{"dim": 2, "bogus": 1}'}, "bogus"),
    ("wrong-type", {"config_json": '{"dim": "two"}'}, "dim"),
    ("empty-experiment", {"experiment": ""}, "spec.experiment"),
    ("long-experiment", {"experiment": "x" * 200}, "spec.experiment"),
    ("unknown-experiment", {"experiment": "nope"}, "nope"),
    ("nul-loader-id", {"loader_id": "a\x00b"}, "spec.loader_id"),
    ("newline-loader-id", {"loader_id": "a\nb"}, "spec.loader_id"),
    ("long-loader-id", {"loader_id": "x" * 129}, "spec.loader_id"),
    ("zero-batch", {"batch_size": 0}, "spec.batch_size"),
    ("zero-samples", {"samples_per_epoch": 0}, "spec.samples_per_epoch"),
    ("huge-samples", {"samples_per_epoch": 2**64 - 1}, "spec.samples_per_epoch"),
    ("huge-seed", {"seed": 2**64 - 1}, "spec.seed"),
]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [(fields, fragment) for _, fields, fragment in INVALID_SPECS],
    ids=[name for name, _, _ in INVALID_SPECS],
)
def test_limits_invalid_spec_rejected(
    stub: Any, fields: dict[str, Any], fragment: str
) -> None:
    values = dict(fields)
    if "experiment" in values:
        values["config_json"] = None
    message = spec(**{key: value for key, value in values.items() if value is not None})
    if "experiment" in values:
        message.experiment = values["experiment"]
    error = rpc_error(
        lambda: stub.CreateSession(
            pb.CreateSessionRequest(spec=message), timeout=RPC_TIMEOUT_S
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    assert len(error.details()) < 2000
    assert session_count(stub) == 0


INVALID_STATES = [
    ("nan", '{"format_version": NaN}', "NaN"),
    ("overflow", '{"format_version": 1e999}', "1e999"),
    ("deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("empty", "", "state_json"),
    ("not-json", "{", "state_json"),
    ("array", "[]", "must be a JSON object"),
    ("oversized", '{"x": "' + "y" * (1024 * 1024) + '"}', "state_json"),
]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [(text, fragment) for _, text, fragment in INVALID_STATES],
    ids=[name for name, _, _ in INVALID_STATES],
)
def test_limits_invalid_state_rejected(stub: Any, text: str, fragment: str) -> None:
    info = create(stub)
    request = pb.RestoreRequest(session_id=info.session_id, state_json=text)
    error = rpc_error(lambda: stub.Restore(request, timeout=RPC_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()
    assert len(error.details()) < 2000
    after = stub.GetSession(
        pb.GetSessionRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
    )
    assert after.position.global_index == 0
    assert after.updated_at == info.updated_at


@pytest.mark.parametrize(
    ("label", "fragment"),
    [("x" * 257, "accepted length is 0 to 256"), ("a\x00b", "control characters")],
    ids=["long", "nul"],
)
def test_limits_invalid_label_rejected(stub: Any, label: str, fragment: str) -> None:
    info = create(stub)
    error = rpc_error(
        lambda: stub.Snapshot(
            pb.SnapshotRequest(session_id=info.session_id, label=label),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("label: ")
    assert fragment in error.details()
    assert snapshot_count(stub, info.session_id) == 0


INVALID_STARTS = [
    ("window", {"window": 65}, "start.window", "[1, 64]"),
    (
        "start",
        {"start_global_index": 2**64 - 1},
        "start.start_global_index",
        "accepted range",
    ),
    ("max-batches", {"max_batches": 2**63}, "start.max_batches", "accepted range"),
]


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [(fields, field, fragment) for _, fields, field, fragment in INVALID_STARTS],
    ids=[name for name, _, _, _ in INVALID_STARTS],
)
def test_limits_invalid_stream_start_rejected(
    stub: Any, fields: dict[str, Any], field: str, fragment: str
) -> None:
    info = create(stub)
    stream = BatchStream(stub, session_id=info.session_id, **fields)
    error = stream.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: ")
    assert fragment in error.details()


@pytest.mark.parametrize(
    "method",
    [
        "CreateSession",
        "GetSession",
        "ListSessions",
        "CloseSession",
        "Snapshot",
        "Restore",
        "ListSnapshots",
    ],
)
def test_limits_corrupt_request_bytes_rejected(
    server: BackgroundServer, method: str
) -> None:
    # A truncated length-delimited field, and a truncated field tag.
    payloads = [b"\x0a\x05ab", b"\xff\xff\xff"]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(
            f"/gmmserve.v1.GmmService/{method}",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        for payload in payloads:
            error = rpc_error(lambda payload=payload: call(payload, timeout=30))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, payload
            assert error.details().startswith("request: is not a valid "), payload


def test_limits_corrupt_stream_request_rejected(
    server: BackgroundServer, stub: Any
) -> None:
    info = create(stub)
    start = pb.StreamBatchesRequest(start=pb.StreamStart(session_id=info.session_id))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream(
            "/gmmserve.v1.GmmService/StreamBatches",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        error = rpc_error(lambda: list(call(iter([b"\xff\xff"]), timeout=30)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamBatchesRequest" in error.details()
        # A corrupt Ack after a valid start ends the stream the same way.
        token = TokenInterceptor.tokens[info.session_id]
        responses = call(
            iter([start.SerializeToString(), b"\x12\x05ab"]),
            timeout=30,
            metadata=(("authorization", f"Bearer {token}"),),
        )
        error = rpc_error(lambda: list(responses))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamBatchesRequest" in error.details()


def test_limits_restore_past_max_index_rejected(stub: Any) -> None:
    info = create(stub, batch_size=1, samples_per_epoch=2)
    snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
    )
    document = json.loads(snapshot.state_json)
    document["loader_state"]["current_epoch"] = 2**53 - 1
    request = pb.RestoreRequest(
        session_id=info.session_id, state_json=json.dumps(document)
    )
    error = rpc_error(lambda: stub.Restore(request, timeout=RPC_TIMEOUT_S))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("state_json: loader_state.current_epoch ")
    assert f"[0, {2**53 - 1}]" in error.details()
    after = stub.GetSession(
        pb.GetSessionRequest(session_id=info.session_id), timeout=RPC_TIMEOUT_S
    )
    assert after.position.global_index == 0


def test_limits_long_error_message_cut(stub: Any) -> None:
    # A key is the field path itself, so it is kept; the status message loses
    # its middle instead.
    config = {"x" * 30_000: 1}
    error = rpc_error(lambda: create(stub, config_json=json.dumps(config)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert " characters cut) ... " in error.details()
    assert len(error.details()) < 4200
    # The end of the message still says what is wrong and what is accepted.
    assert "accepted" in error.details()[-2048:]


def test_limits_long_value_cut_in_message(stub: Any) -> None:
    config = {**SMALL_CONFIG, "cluster_params": "x" * 30_000}
    error = rpc_error(lambda: create(stub, config_json=json.dumps(config)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(30002 characters); accepted presets: few" in error.details()
    assert len(error.details()) < 300
