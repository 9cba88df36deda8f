"""Tests of the gmmserve command: the demo and the operator commands."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _server import OPERATOR_TOKEN
from gmmserve.cli import main
from gmmserve.config import experiment_names
from gmmserve.demo import _check_run, _ConfigRun, _local_loader
from gmmserve.loader import GMMDataLoader
from gmmserve.service import BackgroundServer, ServerSettings
from gmmserve_client import Batch, Client


def test_cli_demo_matches_every_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    output = capsys.readouterr().out
    names = experiment_names()
    assert len(names) == 7
    for name in names:
        row = re.search(rf"│ {re.escape(name)}\s+│[^\n]*│ (yes|no)\s+│", output)
        assert row is not None, name
        assert row.group(1) == "yes", name
    assert f"all {len(names)} configs resumed bit for bit" in output
    assert "killed server pid" in output


def _received(loader: GMMDataLoader, indices: range) -> list[Batch]:
    """Build client batches from a local loader, as a server would send them."""
    batches = []
    for index in indices:
        epoch, batch_index = divmod(index, loader.batches_per_epoch)
        arrays = {
            name: array.copy()
            for name, array in loader.batch_at(epoch, batch_index).arrays.items()
        }
        batches.append(
            Batch(
                epoch=epoch,
                batch_index=batch_index,
                global_index=index,
                data=arrays.pop("data"),
                targets=arrays,
                fingerprint="",
            )
        )
    return batches


def _demo_run(seed: int) -> _ConfigRun:
    loader = _local_loader("simple", 8, 20, seed)
    snapshot = _local_loader("simple", 8, 20, seed)
    snapshot.seek(0, 2)
    return _ConfigRun(
        name="simple",
        session_id="ses_test",
        session_token=None,
        snapshot_id="snap_test",
        snapshot_at=2,
        snapshot_state=_state_json(snapshot),
        batches_per_epoch=loader.batches_per_epoch,
        cursor_before_kill=5,
        before_kill=_received(loader, range(5)),
        resumed=_received(loader, range(2, 6)),
        resumed_at=2,
    )


def _state_json(loader: GMMDataLoader) -> str:
    return json.dumps(loader.state_dict())


def test_cli_demo_check_accepts_equal_batches() -> None:
    run = _demo_run(seed=5)
    _check_run(run, 8, 20, 5)
    assert run.problems == []


def test_cli_demo_check_reports_flipped_bit() -> None:
    run = _demo_run(seed=5)
    labels = run.resumed[1].targets["labels"]
    labels.view(np.uint8)[0] ^= 1
    _check_run(run, 8, 20, 5)
    assert "batch 3: labels differs from the local loader's" in run.problems
    assert (
        "batch 3: labels differs from the batch received before the kill"
        in run.problems
    )
    assert "batch 3: labels differs from the restored local loader's" in run.problems
    assert len(run.problems) == 3


def test_cli_demo_check_reports_other_seed() -> None:
    run = _demo_run(seed=5)
    _check_run(run, 8, 20, 6)
    # Batches of seed 5 checked against seed 6: the points of every received
    # batch differ from the local loader's.
    for batch in run.before_kill + run.resumed:
        expected = f"batch {batch.global_index}: data differs from the local loader's"
        assert expected in run.problems
    assert any(
        "state does not restore a local loader" in problem for problem in run.problems
    )


def test_cli_demo_check_reports_missing_batch() -> None:
    run = _demo_run(seed=5)
    del run.resumed[2]
    _check_run(run, 8, 20, 5)
    assert "resumed batches [2, 3, 5]; expected [2, 3, 4, 5]" in run.problems


@pytest.fixture(scope="module")
def server_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path_factory.mktemp("cli-store"),
        operator_token=OPERATOR_TOKEN,
    )
    with BackgroundServer(settings) as server:
        yield f"127.0.0.1:{server.port}"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_sessions_commands(
    server_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ("--target", server_target)
    status, output, _ = _run(
        capsys,
        "sessions",
        "create",
        *target,
        "--experiment",
        "simple",
        "--seed",
        "9",
        "--loader-id",
        "ops",
        "--batch-size",
        "4",
        "--samples-per-epoch",
        "10",
    )
    assert status == 0
    created = re.search(r"session (ses_\S+)", output)
    assert created is not None
    session_id = created.group(1)
    assert re.search(r"batches per epoch\s+│ 3 ", output)
    printed_token = re.search(r"session token: (gst_\S+)", output)
    assert printed_token is not None
    token = printed_token.group(1)

    with (
        Client(server_target) as client,
        client.session(session_id, token=token).batches(max_batches=4) as stream,
    ):
        assert [batch.global_index for batch in stream] == [0, 1, 2, 3]

    operator_file = tmp_path / "operator-token"
    operator_file.write_text(OPERATOR_TOKEN + "\n")
    operator_file.chmod(0o600)
    status, output, _ = _run(
        capsys, "sessions", "list", *target, "--operator-token-file", str(operator_file)
    )
    assert status == 0
    assert re.search(rf"{session_id}\s+│ simple\s+│ ops\s+│", output)

    status, _, error = _run(capsys, "sessions", "list", *target)
    assert status == 1
    assert "UNAUTHENTICATED" in error

    status, _, error = _run(capsys, "sessions", "get", *target, session_id)
    assert status == 1
    assert "UNAUTHENTICATED" in error

    # The commands below pass the session token; the operator token would
    # work as well.
    target = (*target, "--token", token)
    status, output, _ = _run(capsys, "sessions", "get", *target, session_id)
    assert status == 0
    assert re.search(r"cursor\s+│ 4 \(epoch 1, batch 1\)", output)

    status, output, _ = _run(
        capsys, "sessions", "snapshot", *target, session_id, "--label", "four"
    )
    assert status == 0
    assert "snapshot saved" in output
    snapshot = re.search(r"(snap_\S+)\s+│ four\s+│ 4 \(epoch 1, batch 1\)", output)
    assert snapshot is not None
    snapshot_id = snapshot.group(1)

    status, output, _ = _run(capsys, "sessions", "snapshots", *target, session_id)
    assert status == 0
    assert f"1 snapshots of session {session_id}" in output
    assert snapshot_id in output

    # A state file written by a local loader at epoch 2, batch 0 (index 6).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = GMMDataLoader(
            "simple", batch_size=4, num_samples=10, base_seed=9, loader_id="ops"
        )
    loader.seek(2, 0)
    state_path = tmp_path / "state.json"
    loader.save_state(state_path)
    status, output, _ = _run(
        capsys,
        "sessions",
        "restore",
        *target,
        session_id,
        "--state-file",
        str(state_path),
    )
    assert status == 0
    assert f"session {session_id} restored; cursor at 6 (epoch 2, batch 0)" in output

    status, output, _ = _run(
        capsys, "sessions", "restore", *target, session_id, "--snapshot", snapshot_id
    )
    assert status == 0
    assert f"session {session_id} restored; cursor at 4 (epoch 1, batch 1)" in output

    status, output, _ = _run(capsys, "sessions", "close", *target, session_id)
    assert status == 0
    assert f"session {session_id} closed; cursor was at 4 (epoch 1, batch 1)" in output

    status, _, error = _run(capsys, "sessions", "get", *target, session_id)
    assert status == 1
    assert "NOT_FOUND" in error
    assert session_id in error


def test_cli_sessions_json_output(
    server_target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GMMSERVE_OPERATOR_TOKEN", OPERATOR_TOKEN)
    target = ("--target", server_target)
    status, output, _ = _run(
        capsys,
        "sessions",
        "create",
        *target,
        "--json",
        "--experiment",
        "3d",
        "--seed",
        "4",
        "--batch-size",
        "5",
        "--samples-per-epoch",
        "12",
        "--fixed-data",
    )
    assert status == 0
    created = json.loads(output)
    assert created.pop("session_token").startswith("gst_")
    session_id = created["session_id"]
    assert created["spec"]["experiment"] == "3d"
    assert created["spec"]["seed"] == 4
    assert created["spec"]["fixed_data"] is True
    assert created["batches_per_epoch"] == 3
    assert created["position"] == {"epoch": 0, "batch_index": 0, "global_index": 0}
    assert created["resolved_config"]["dim"] == 3

    status, output, _ = _run(capsys, "sessions", "list", *target, "--json")
    assert status == 0
    listed = {info["session_id"]: info for info in json.loads(output)}
    assert listed[session_id] == created

    status, output, _ = _run(
        capsys, "sessions", "snapshot", *target, "--json", session_id, "--label", "x"
    )
    assert status == 0
    snapshot = json.loads(output)
    assert snapshot["session_id"] == session_id
    assert snapshot["label"] == "x"
    assert json.loads(snapshot["state_json"])["loader_state"]["current_batch"] == 0

    status, output, _ = _run(
        capsys, "sessions", "snapshots", *target, "--json", session_id
    )
    assert status == 0
    assert [item["snapshot_id"] for item in json.loads(output)] == [
        snapshot["snapshot_id"]
    ]

    status, output, _ = _run(capsys, "sessions", "close", *target, "--json", session_id)
    assert status == 0
    assert json.loads(output) == {"epoch": 0, "batch_index": 0, "global_index": 0}


def test_cli_sessions_delete_snapshot(
    server_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(server_target) as client:
        session = client.create_session(
            experiment="simple", seed=3, batch_size=4, samples_per_epoch=10
        )
        kept = session.snapshot(label="kept")
        deleted = session.snapshot(label="deleted")
    session_id = session.id
    assert session.token is not None
    target = ("--target", server_target, "--token", session.token)

    status, output, _ = _run(
        capsys,
        "sessions",
        "delete-snapshot",
        *target,
        session_id,
        "--snapshot",
        deleted.snapshot_id,
    )
    assert status == 0
    assert "snapshot deleted" in output
    assert re.search(rf"{deleted.snapshot_id}\s+│ deleted\s+│ 0 ", output)

    status, output, _ = _run(
        capsys, "sessions", "snapshots", *target, "--json", session_id
    )
    assert status == 0
    assert [item["snapshot_id"] for item in json.loads(output)] == [kept.snapshot_id]

    status, output, _ = _run(
        capsys,
        "sessions",
        "delete-snapshot",
        *target,
        "--json",
        session_id,
        "--snapshot",
        kept.snapshot_id,
    )
    assert status == 0
    assert json.loads(output)["snapshot_id"] == kept.snapshot_id

    status, _, error = _run(
        capsys,
        "sessions",
        "delete-snapshot",
        *target,
        session_id,
        "--snapshot",
        kept.snapshot_id,
    )
    assert status == 1
    assert "NOT_FOUND" in error
    assert kept.snapshot_id in error


def test_cli_sessions_create_invalid_experiment(
    server_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, error = _run(
        capsys, "sessions", "create", "--target", server_target, "--experiment", "nope"
    )
    assert status == 1
    assert "INVALID_ARGUMENT" in error
    assert "nope" in error


def test_cli_sessions_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 on loopback (discard) has no gRPC server in the test environment.
    status, _, error = _run(
        capsys, "sessions", "list", "--target", "127.0.0.1:9", "--timeout-s", "1"
    )
    assert status == 1
    assert "127.0.0.1:9" in error
    assert "Check that the server is running at that address." in error


def test_cli_requires_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["bench", "--batches", "0"],
            "argument --batches: 0 is out of range; accepted range is [1, 1000000]",
        ),
        (
            ["serve", "--grace-s", "-1"],
            (
                "argument --grace-s/--grace: -1 is out of range; accepted range is "
                "[0, 86400] seconds"
            ),
        ),
        (
            ["demo", "--batch-size", "0"],
            "argument --batch-size: 0 is out of range; accepted range is [1, 4096]",
        ),
        (
            ["demo", "--seed", "-5"],
            (
                "argument --seed: -5 is out of range; accepted range is "
                "[0, 9007199253740991]"
            ),
        ),
        (
            ["demo", "--samples-per-epoch", "8"],
            "argument --samples-per-epoch: 8 must exceed --batch-size 8",
        ),
        (
            ["sessions", "create", "--experiment", "simple", "--seed", "-1"],
            (
                "argument --seed: -1 is out of range; accepted range is "
                "[0, 9007199253740991]"
            ),
        ),
        (
            ["sessions", "create", "--experiment", "simple", "--batch-size", "5e9"],
            (
                "argument --batch-size: '5e9' is not an integer; accepted range is "
                "[1, 4294967295]"
            ),
        ),
        (
            [
                "sessions",
                "create",
                "--experiment",
                "simple",
                "--batch-size",
                "5000000000",
            ],
            (
                "argument --batch-size: 5000000000 is out of range; accepted range is "
                "[1, 4294967295]"
            ),
        ),
        (
            ["bench", "--window", "65"],
            "argument --window: 65 is out of range; accepted range is [1, 64]",
        ),
    ],
)
def test_cli_flag_out_of_range(
    capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    assert expected in capsys.readouterr().err


def test_cli_serve_data_dir_is_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data_file = tmp_path / "afile"
    data_file.write_text("")
    status = main(["serve", "--port", "0", "--data-dir", str(data_file)])
    error = capsys.readouterr().err
    assert status == 2
    assert f"--data-dir '{data_file}' exists but is not a directory" in error
