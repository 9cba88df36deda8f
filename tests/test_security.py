"""Tests of access control, identifiers and TLS, against real servers."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _certs import CertificateAuthority
from _server import OPERATOR_TOKEN, RPC_TIMEOUT_S, BatchStream, wait_for_file
from conftest import SMALL_CONFIG
from gmmserve.cli import main
from gmmserve.service import BackgroundServer, ServerSettings
from gmmserve_client import (
    Client,
    DeadlineExceeded,
    PermissionDenied,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

UNKNOWN_SESSION = "ses_" + "Q" * 22
# A failed TLS handshake surfaces as UNAVAILABLE, or as DEADLINE_EXCEEDED
# when the channel keeps retrying until the call's deadline.
CONNECTION_FAILED = (Unavailable, DeadlineExceeded)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    settings = ServerSettings(
        port=0, data_dir=tmp_path / "data", operator_token=OPERATOR_TOKEN
    )
    with BackgroundServer(settings) as running:
        yield running


@pytest.fixture
def stub(server: BackgroundServer) -> Iterator[Any]:
    # A plain channel: every call states its own metadata.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.GmmServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def create(stub: Any, request_id: str = "") -> pb.CreateSessionResponse:
    spec = pb.SessionSpec(
        config_json=json.dumps(SMALL_CONFIG),
        seed=5,
        loader_id="train",
        batch_size=3,
        samples_per_epoch=8,
    )
    return stub.CreateSession(
        pb.CreateSessionRequest(spec=spec, request_id=request_id),
        timeout=RPC_TIMEOUT_S,
    )


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def session_calls(
    stub: Any, session_id: str, metadata: Any
) -> dict[str, Callable[[], object]]:
    """Every unary call that names one session, with the given metadata."""
    options = {"timeout": RPC_TIMEOUT_S, "metadata": metadata}
    state = json.dumps({"format_version": 1})
    snapshot_id = "snap_" + "B" * 22
    return {
        "GetSession": lambda: stub.GetSession(
            pb.GetSessionRequest(session_id=session_id), **options
        ),
        "Snapshot": lambda: stub.Snapshot(
            pb.SnapshotRequest(session_id=session_id), **options
        ),
        "Restore": lambda: stub.Restore(
            pb.RestoreRequest(session_id=session_id, state_json=state), **options
        ),
        "ListSnapshots": lambda: stub.ListSnapshots(
            pb.ListSnapshotsRequest(session_id=session_id), **options
        ),
        "DeleteSnapshot": lambda: stub.DeleteSnapshot(
            pb.DeleteSnapshotRequest(session_id=session_id, snapshot_id=snapshot_id),
            **options,
        ),
        "CloseSession": lambda: stub.CloseSession(
            pb.CloseSessionRequest(session_id=session_id), **options
        ),
    }


def stream_error(stub: Any, session_id: str, metadata: Any) -> grpc.RpcError:
    start = pb.StreamBatchesRequest(start=pb.StreamStart(session_id=session_id))
    call = stub.StreamBatches(iter([start]), timeout=RPC_TIMEOUT_S, metadata=metadata)
    return rpc_error(lambda: list(call))


def test_security_create_returns_stable_token(stub: Any) -> None:
    first = create(stub, request_id="security-retry")
    again = create(stub, request_id="security-retry")
    other = create(stub)
    assert first.session_token.startswith("gst_")
    assert again.existing
    assert again.session_token == first.session_token
    assert other.session_token != first.session_token
    info = stub.GetSession(
        pb.GetSessionRequest(session_id=first.session.session_id),
        timeout=RPC_TIMEOUT_S,
        metadata=bearer(first.session_token),
    )
    assert info.session_id == first.session.session_id


def test_security_missing_token_unauthenticated(stub: Any) -> None:
    session_id = create(stub).session.session_id
    for name, call in session_calls(stub, session_id, None).items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "authorization" in error.details(), name
    error = stream_error(stub, session_id, None)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = rpc_error(
        lambda: stub.ListSessions(pb.ListSessionsRequest(), timeout=RPC_TIMEOUT_S)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "value",
    ["gst_abc", "Basic dXNlcjpwYXNz", "Bearer", "Bearer " + "x" * 1025],
    ids=["no-scheme", "basic", "empty-token", "long-token"],
)
def test_security_malformed_header_unauthenticated(stub: Any, value: str) -> None:
    session_id = create(stub).session.session_id
    error = rpc_error(
        session_calls(stub, session_id, (("authorization", value),))["GetSession"]
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer <token>" in error.details()


def test_security_wrong_token_permission_denied(stub: Any) -> None:
    ours = create(stub)
    theirs = create(stub)
    session_id = ours.session.session_id
    for token in ("gst_wrong", theirs.session_token):
        for name, call in session_calls(stub, session_id, bearer(token)).items():
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, name
        error = stream_error(stub, session_id, bearer(token))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # The session is untouched: no snapshot was taken and it is not closed.
    listed = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=session_id),
        timeout=RPC_TIMEOUT_S,
        metadata=bearer(ours.session_token),
    )
    assert list(listed.snapshots) == []


def test_security_delete_snapshot_needs_session_token(stub: Any) -> None:
    ours = create(stub)
    theirs = create(stub)
    session_id = ours.session.session_id
    own = bearer(ours.session_token)
    snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=session_id),
        timeout=RPC_TIMEOUT_S,
        metadata=own,
    )
    request = pb.DeleteSnapshotRequest(
        session_id=session_id, snapshot_id=snapshot.snapshot_id
    )
    for token in ("gst_wrong", theirs.session_token):
        with pytest.raises(grpc.RpcError) as caught:
            stub.DeleteSnapshot(request, timeout=RPC_TIMEOUT_S, metadata=bearer(token))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, token
    listed = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=session_id),
        timeout=RPC_TIMEOUT_S,
        metadata=own,
    )
    assert [item.snapshot_id for item in listed.snapshots] == [snapshot.snapshot_id]

    deleted = stub.DeleteSnapshot(request, timeout=RPC_TIMEOUT_S, metadata=own)
    assert deleted.snapshot.snapshot_id == snapshot.snapshot_id
    listed = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=session_id),
        timeout=RPC_TIMEOUT_S,
        metadata=own,
    )
    assert list(listed.snapshots) == []


def test_security_unknown_id_answers_like_wrong_token(stub: Any) -> None:
    known = create(stub).session.session_id
    token = bearer("gst_" + "z" * 43)
    known_calls = session_calls(stub, known, token)
    unknown_calls = session_calls(stub, UNKNOWN_SESSION, token)
    for name in known_calls:
        known_error = rpc_error(known_calls[name])
        unknown_error = rpc_error(unknown_calls[name])
        assert known_error.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert unknown_error.code() == known_error.code(), name
        assert unknown_error.details() == known_error.details().replace(
            known, UNKNOWN_SESSION
        ), name
    known_error = stream_error(stub, known, token)
    unknown_error = stream_error(stub, UNKNOWN_SESSION, token)
    assert unknown_error.code() == known_error.code()
    assert unknown_error.details() == known_error.details().replace(
        known, UNKNOWN_SESSION
    )


def test_security_operator_manages_any_session(stub: Any) -> None:
    created = create(stub)
    session_id = created.session.session_id
    operator = bearer(OPERATOR_TOKEN)
    options = {"timeout": RPC_TIMEOUT_S, "metadata": operator}
    listed = stub.ListSessions(pb.ListSessionsRequest(), **options)
    assert session_id in [info.session_id for info in listed.sessions]
    assert stub.GetSession(pb.GetSessionRequest(session_id=session_id), **options)
    snapshot = stub.Snapshot(
        pb.SnapshotRequest(session_id=session_id, label="operator"), **options
    )
    snapshots = stub.ListSnapshots(
        pb.ListSnapshotsRequest(session_id=session_id), **options
    )
    assert [item.snapshot_id for item in snapshots.snapshots] == [snapshot.snapshot_id]
    restored = stub.Restore(
        pb.RestoreRequest(session_id=session_id, snapshot_id=snapshot.snapshot_id),
        **options,
    )
    assert restored.session.position.global_index == 0
    deleted = stub.DeleteSnapshot(
        pb.DeleteSnapshotRequest(
            session_id=session_id, snapshot_id=snapshot.snapshot_id
        ),
        **options,
    )
    assert deleted.snapshot.snapshot_id == snapshot.snapshot_id
    closed = stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), **options)
    assert closed.position.global_index == 0

    # Operators learn that an id is unknown; session holders of a closed
    # session do too.
    for name, call in session_calls(stub, UNKNOWN_SESSION, operator).items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, name
    get_closed = session_calls(stub, session_id, bearer(created.session_token))
    error = rpc_error(get_closed["GetSession"])
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_security_operator_cannot_stream(stub: Any) -> None:
    session_id = create(stub).session.session_id
    error = stream_error(stub, session_id, bearer(OPERATOR_TOKEN))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator token cannot open streams" in error.details()


def test_security_list_sessions_needs_operator(stub: Any) -> None:
    token = create(stub).session_token
    error = rpc_error(
        lambda: stub.ListSessions(
            pb.ListSessionsRequest(), timeout=RPC_TIMEOUT_S, metadata=bearer(token)
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator token" in error.details()


def test_security_no_operator_token_configured(tmp_path: Path) -> None:
    settings = ServerSettings(port=0, data_dir=tmp_path)
    with (
        BackgroundServer(settings) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.GmmServiceStub(channel)
        error = rpc_error(
            lambda: stub.ListSessions(
                pb.ListSessionsRequest(),
                timeout=RPC_TIMEOUT_S,
                metadata=bearer(OPERATOR_TOKEN),
            )
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no operator token configured" in error.details()


def test_security_operator_token_rules() -> None:
    with pytest.raises(ValueError, match="accepted length is 16 to 1024"):
        ServerSettings(operator_token="short")
    with pytest.raises(ValueError, match="printable ASCII without spaces"):
        ServerSettings(operator_token="has a space in the middle")
    settings = ServerSettings(operator_token=OPERATOR_TOKEN)
    assert OPERATOR_TOKEN not in repr(settings)


def test_security_token_survives_restart(tmp_path: Path) -> None:
    settings = ServerSettings(port=0, data_dir=tmp_path)
    with (
        BackgroundServer(settings) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        created = create(pb_grpc.GmmServiceStub(channel))
    # A second server on the same store, as a restart or another replica.
    with (
        BackgroundServer(settings) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.GmmServiceStub(channel)
        info = stub.GetSession(
            pb.GetSessionRequest(session_id=created.session.session_id),
            timeout=RPC_TIMEOUT_S,
            metadata=bearer(created.session_token),
        )
    assert info.session_id == created.session.session_id


def test_security_store_files_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "new-data"
    with BackgroundServer(ServerSettings(port=0, data_dir=data_dir)):
        pass
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    database = data_dir / "gmmserve.sqlite3"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_security_tokens_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ServerSettings(port=0, data_dir=tmp_path, operator_token=OPERATOR_TOKEN)
    with (
        BackgroundServer(settings) as server,
        Client(f"127.0.0.1:{server.port}", operator_token=OPERATOR_TOKEN) as client,
    ):
        session = client.create_session(
            SMALL_CONFIG, seed=5, batch_size=3, samples_per_epoch=8
        )
        with session.batches(max_batches=3) as stream:
            assert len(list(stream)) == 3
        snapshot = session.snapshot(label="logged")
        session.restore(snapshot_id=snapshot.snapshot_id)
        client.list_sessions()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            rpc_error(
                session_calls(
                    pb_grpc.GmmServiceStub(channel),
                    session.id,
                    bearer("gst_a-wrong-token-that-must-not-be-logged"),
                )["GetSession"]
            )
        token = session.token
        session.close()
        secret_rows = _secret_values(tmp_path / "gmmserve.sqlite3")
    assert token is not None
    assert token not in caplog.text
    assert OPERATOR_TOKEN not in caplog.text
    assert "a-wrong-token-that-must-not-be-logged" not in caplog.text
    assert secret_rows
    for secret in secret_rows:
        assert secret not in caplog.text
    # The server did log the session's lifecycle.
    assert f"session {session.id} created" in caplog.text
    assert f"session {session.id} closed" in caplog.text


def _secret_values(database: Path) -> list[str]:
    import sqlite3

    connection = sqlite3.connect(database)
    try:
        return [row[0] for row in connection.execute("SELECT value FROM secrets")]
    finally:
        connection.close()


# Identifiers are never paths.

HOSTILE_IDS = [
    "../../etc/passwd",
    "/tmp/gmmserve-security-x",
    "%2e%2e%2fetc",
    "ses_" + "A" * 10 + "\x00" + "A" * 11,
    "ses_" + "A" * 5000,
    "ses_..%2F..%2F" + "A" * 8,
    "ses_" + "A" * 21 + "/",
]


def test_security_hostile_ids_rejected(
    server: BackgroundServer, stub: Any, tmp_path: Path
) -> None:
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    operator = bearer(OPERATOR_TOKEN)
    valid = create(stub).session.session_id
    for hostile in HOSTILE_IDS:
        for name, call in session_calls(stub, hostile, operator).items():
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, hostile)
            assert error.details().startswith("session_id: "), (name, hostile)
            assert "is not a valid id" in error.details(), (name, hostile)
            # Long values are cut in the message.
            assert len(error.details()) < 400, (name, hostile)
        error = stream_error(stub, hostile, operator)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, hostile
        assert error.details().startswith("start.session_id: "), hostile
        error = rpc_error(
            lambda hostile=hostile: stub.Restore(
                pb.RestoreRequest(session_id=valid, snapshot_id=hostile),
                timeout=RPC_TIMEOUT_S,
                metadata=operator,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, hostile
        assert error.details().startswith("snapshot_id: "), hostile
        error = rpc_error(
            lambda hostile=hostile: stub.ListSessions(
                pb.ListSessionsRequest(page_token=hostile),
                timeout=RPC_TIMEOUT_S,
                metadata=operator,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, hostile
    assert not Path("/tmp/gmmserve-security-x").exists()
    after = sorted(str(path) for path in tmp_path.rglob("*"))
    assert after == before


def test_security_hostile_request_id_rejected(stub: Any) -> None:
    for hostile in ["../x", "a/b", "x" * 129, "a\x00b"]:
        error = rpc_error(lambda hostile=hostile: create(stub, request_id=hostile))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, hostile
        assert error.details().startswith("request_id: "), hostile


# TLS and mutual TLS.


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("certs")
    authority = CertificateAuthority(directory)
    other = CertificateAuthority(directory, name="other test CA")
    return {
        "ca": authority.files.cert,
        "server": authority.issue("server", server=True),
        "client": authority.issue("client", server=False),
        "stranger": other.issue("stranger", server=False),
    }


def tls_server(
    tmp_path: Path, certificates: dict[str, Any], mutual: bool
) -> BackgroundServer:
    return BackgroundServer(
        ServerSettings(
            port=0,
            data_dir=tmp_path,
            operator_token=OPERATOR_TOKEN,
            tls_cert=certificates["server"].cert,
            tls_key=certificates["server"].key,
            tls_client_ca=certificates["ca"] if mutual else None,
        )
    )


def stream_three(client: Client) -> list[int]:
    session = client.create_session(
        SMALL_CONFIG, seed=5, batch_size=3, samples_per_epoch=8
    )
    with session.batches(max_batches=3) as stream:
        return [batch.global_index for batch in stream]


def test_security_tls_round_trip(tmp_path: Path, certificates: dict[str, Any]) -> None:
    with tls_server(tmp_path, certificates, mutual=False) as server:
        target = f"localhost:{server.port}"
        with Client(target, root_certificates=certificates["ca"]) as client:
            assert stream_three(client) == [0, 1, 2]
        # PEM contents work as well as paths.
        pem = certificates["ca"].read_bytes()
        with Client(
            f"127.0.0.1:{server.port}", root_certificates=pem, timeout_s=5
        ) as client:
            assert stream_three(client) == [0, 1, 2]
        with (
            Client(target, timeout_s=2) as plaintext,
            pytest.raises(CONNECTION_FAILED),
        ):
            plaintext.create_session(SMALL_CONFIG, seed=5)
        # The system trust store does not know the test CA.
        with (
            Client(
                target, timeout_s=2, credentials=grpc.ssl_channel_credentials()
            ) as untrusted,
            pytest.raises(CONNECTION_FAILED),
        ):
            untrusted.create_session(SMALL_CONFIG, seed=5)


def test_security_mutual_tls(tmp_path: Path, certificates: dict[str, Any]) -> None:
    client_files = certificates["client"]
    stranger = certificates["stranger"]
    with tls_server(tmp_path, certificates, mutual=True) as server:
        target = f"localhost:{server.port}"
        with Client(
            target,
            root_certificates=certificates["ca"],
            certificate_chain=client_files.cert,
            private_key=client_files.key,
        ) as client:
            assert stream_three(client) == [0, 1, 2]
        with (
            Client(target, root_certificates=certificates["ca"], timeout_s=2) as bare,
            pytest.raises(CONNECTION_FAILED),
        ):
            bare.create_session(SMALL_CONFIG, seed=5)
        with (
            Client(
                target,
                root_certificates=certificates["ca"],
                certificate_chain=stranger.cert,
                private_key=stranger.key,
                timeout_s=2,
            ) as foreign,
            pytest.raises(CONNECTION_FAILED),
        ):
            foreign.create_session(SMALL_CONFIG, seed=5)


def test_security_client_tls_arguments_checked(certificates: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be given together"):
        Client("localhost:1", certificate_chain=certificates["client"].cert)
    with pytest.raises(ValueError, match="cannot read PEM file"):
        Client("localhost:1", root_certificates="/nonexistent/ca.pem")


def test_security_health_needs_no_token(
    tmp_path: Path, certificates: dict[str, Any]
) -> None:
    with tls_server(tmp_path, certificates, mutual=False) as server:
        credentials = grpc.ssl_channel_credentials(certificates["ca"].read_bytes())
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S
            )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_security_cli_over_mutual_tls(
    tmp_path: Path,
    certificates: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "operator-token"
    token_file.write_text(OPERATOR_TOKEN + "\n")
    token_file.chmod(0o600)
    client_files = certificates["client"]
    with tls_server(tmp_path / "data", certificates, mutual=True) as server:
        tls = [
            "--target",
            f"localhost:{server.port}",
            "--tls-ca",
            str(certificates["ca"]),
            "--tls-cert",
            str(client_files.cert),
            "--tls-key",
            str(client_files.key),
        ]
        status = main(["sessions", "create", *tls, "--experiment", "simple", "--json"])
        created = json.loads(capsys.readouterr().out)
        assert status == 0
        token_path = tmp_path / "session-token"
        token_path.write_text(created["session_token"])
        status = main(
            [
                "sessions",
                "get",
                *tls,
                "--token-file",
                str(token_path),
                "--json",
                created["session_id"],
            ]
        )
        assert status == 0
        assert (
            json.loads(capsys.readouterr().out)["session_id"] == created["session_id"]
        )
        status = main(
            [
                "sessions",
                "list",
                *tls,
                "--operator-token-file",
                str(token_file),
                "--json",
            ]
        )
        assert status == 0
        listed = json.loads(capsys.readouterr().out)
        assert [item["session_id"] for item in listed] == [created["session_id"]]


def test_security_python_m_gmmserve_serve(tmp_path: Path) -> None:
    token_file = tmp_path / "operator-token"
    token_file.write_text(OPERATOR_TOKEN + "\n")
    token_file.chmod(0o600)
    port_file = tmp_path / "port.json"
    environment = {
        key: value
        for key, value in os.environ.items()
        if key != "GMMSERVE_OPERATOR_TOKEN"
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gmmserve",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--port-file",
            str(port_file),
            "--operator-token-file",
            str(token_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
    )
    try:
        wait_for_file(port_file, process)
        port = json.loads(port_file.read_text())["port"]
        with Client(f"127.0.0.1:{port}", operator_token=OPERATOR_TOKEN) as client:
            session = client.create_session(SMALL_CONFIG, seed=5)
            assert [info.session_id for info in client.list_sessions()] == [session.id]
        with Client(f"127.0.0.1:{port}") as anonymous, pytest.raises(Unauthenticated):
            anonymous.list_sessions()
        with Client(f"127.0.0.1:{port}") as anonymous, pytest.raises(PermissionDenied):
            anonymous.session(session.id, token="gst_wrong")
        with (
            Client(f"127.0.0.1:{port}", operator_token=OPERATOR_TOKEN) as client,
            pytest.raises(SessionNotFound),
        ):
            client.session(UNKNOWN_SESSION)
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()
    assert OPERATOR_TOKEN.encode() not in errors


def test_security_raw_stream_with_token(server: BackgroundServer, stub: Any) -> None:
    created = create(stub)

    class _Authorized:
        def __init__(self, token: str) -> None:
            self._metadata = bearer(token)

        def StreamBatches(self, requests: Any, timeout: float) -> Any:
            return stub.StreamBatches(
                requests, timeout=timeout, metadata=self._metadata
            )

    stream = BatchStream(
        _Authorized(created.session_token),  # type: ignore[arg-type]
        session_id=created.session.session_id,
        max_batches=2,
    )
    assert stream.next_batch().global_index == 0
    assert stream.next_batch().global_index == 1
    stream.ack(1)
    assert stream.finish() is None


def test_security_invalid_tls_files_fail_start(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    settings = ServerSettings(
        port=0, data_dir=tmp_path / "data", tls_cert=garbage, tls_key=garbage
    )
    with pytest.raises(OSError, match="matching PEM certificate chain"):
        BackgroundServer(settings).start()
    missing = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        tls_cert=tmp_path / "missing.pem",
        tls_key=garbage,
    )
    with pytest.raises(OSError, match="cannot read tls_cert"):
        BackgroundServer(missing).start()
    with pytest.raises(ValueError, match="must be given together"):
        ServerSettings(tls_cert=garbage)
    with pytest.raises(ValueError, match="tls_client_ca requires tls_cert"):
        ServerSettings(tls_client_ca=garbage)


def test_security_control_characters_escaped_in_logs(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    forged = "x\n2026-12-04 17:00:00,000 ERROR gmmserve: forged line\x00"
    spec = pb.SessionSpec(
        config_json=json.dumps({forged: 1}),
        loader_id="train",
        batch_size=2,
        samples_per_epoch=4,
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.CreateSession(pb.CreateSessionRequest(spec=spec), timeout=RPC_TIMEOUT_S)
    details = raised.value.details()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in details
    assert "\x00" not in details
    assert "x\\x0a2026-12-04" in details
    logged = [record.getMessage() for record in caplog.records]
    assert not any(line.startswith("2026-12-04 17:00:00,000 ERROR") for line in logged)
    assert not any("\n2026-12-04" in line for line in logged)
