"""The ``gmmserve`` command: run a server, inspect sessions, demo and benchmark.

Subcommands:

- ``serve``: run the gRPC server until SIGINT or SIGTERM.
- ``sessions list|get|create|snapshot|snapshots|delete-snapshot|restore|close``:
  operator commands against a running server, through the client library.
- ``demo``: kill and restart a server mid-run and check that every bundled
  experiment config resumes bit for bit.
- ``bench``: batches/s and MB/s over loopback beside two baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gmmserve_client import (
    Client,
    GmmServeClientError,
    SessionInfo,
    SnapshotInfo,
)
from rich.console import Console
from rich.table import Table

from gmmserve.config import DEFAULT_LIMITS, MAX_SEED
from gmmserve.service._arguments import (
    OPERATOR_TOKEN_ENV,
    add_server_arguments,
    float_in_range,
    int_in_range,
    read_token_file,
)
from gmmserve.service._settings import ServerSettings

__all__ = ["build_parser", "main"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:50051"

# Accepted flag values. A base seed leaves room for the loader id's offset
# of up to 10^6, and the wire format carries batch sizes as uint32. The demo
# and bench servers run with the default limits and window.
_SEED = int_in_range(0, MAX_SEED - 1_000_000)
_WIRE_BATCH_SIZE = int_in_range(1, 2**32 - 1)
_LOCAL_BATCH_SIZE = int_in_range(1, DEFAULT_LIMITS.max_batch_size)
_SAMPLES_PER_EPOCH = int_in_range(1, MAX_SEED)
_LOCAL_WINDOW = int_in_range(1, ServerSettings().max_window)
_SECONDS = float_in_range(0.001, 24 * 3600, "seconds")


def _format_time(seconds: float) -> str:
    if not seconds:
        return "-"
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _config_name(info: SessionInfo) -> str:
    if info.spec.experiment is not None:
        return info.spec.experiment
    return "custom JSON"


def _sessions_table(sessions: Sequence[SessionInfo]) -> Table:
    table = Table(title=f"{len(sessions)} sessions")
    for column in (
        "session id",
        "config",
        "loader id",
        "seed",
        "batch size",
        "batches/epoch",
        "cursor",
        "updated (UTC)",
    ):
        table.add_column(column)
    for info in sessions:
        table.add_row(
            info.session_id,
            _config_name(info),
            info.spec.loader_id,
            str(info.seed),
            str(info.spec.batch_size),
            str(info.batches_per_epoch),
            str(info.position),
            _format_time(info.updated_at),
        )
    return table


def _session_table(info: SessionInfo) -> Table:
    table = Table(title=f"session {info.session_id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows = (
        ("config", _config_name(info)),
        ("loader id", info.spec.loader_id),
        ("requested seed", "none" if info.spec.seed is None else str(info.spec.seed)),
        ("seed", str(info.seed)),
        ("batch size", str(info.spec.batch_size)),
        ("samples per epoch", str(info.spec.samples_per_epoch)),
        ("fixed data", "yes" if info.spec.fixed_data else "no"),
        ("batches per epoch", str(info.batches_per_epoch)),
        ("cursor", str(info.position)),
        ("fingerprint", info.fingerprint),
        ("created (UTC)", _format_time(info.created_at)),
        ("updated (UTC)", _format_time(info.updated_at)),
        ("resolved config", json.dumps(info.resolved_config, sort_keys=True)),
    )
    for name, value in rows:
        table.add_row(name, value)
    return table


def _snapshots_table(snapshots: Sequence[SnapshotInfo], title: str) -> Table:
    table = Table(title=title)
    for column in ("snapshot id", "label", "position", "created (UTC)", "fingerprint"):
        table.add_column(column)
    for snapshot in snapshots:
        table.add_row(
            snapshot.snapshot_id,
            snapshot.label or "-",
            str(snapshot.position),
            _format_time(snapshot.created_at),
            snapshot.fingerprint[:16],
        )
    return table


def _run_serve(args: argparse.Namespace, console: Console) -> int:
    from gmmserve.service import serve_settings
    from gmmserve.service._arguments import settings_from_arguments
    from gmmserve.state import atomic_write_json

    settings = settings_from_arguments(args)

    def report_port(port: int) -> None:
        scheme = "TLS" if settings.tls else "plaintext"
        console.print(
            f"gmmserve listening on {args.host}:{port} ({scheme})", highlight=False
        )
        if args.port_file is not None:
            atomic_write_json(args.port_file, {"port": port})

    asyncio.run(serve_settings(settings, on_started=report_port))
    return 0


def _client_from_args(args: argparse.Namespace) -> Client:
    """Build the Client of a ``sessions`` command from its flags."""
    operator_token = None
    if args.operator_token_file is not None:
        operator_token = read_token_file(
            args.operator_token_file, "--operator-token-file"
        )
    elif os.environ.get(OPERATOR_TOKEN_ENV):
        operator_token = os.environ[OPERATOR_TOKEN_ENV]
    return Client(
        args.target,
        timeout_s=args.timeout_s,
        root_certificates=args.tls_ca,
        certificate_chain=args.tls_cert,
        private_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        operator_token=operator_token,
    )


def _print_json(value: object, console: Console) -> None:
    """Print dataclasses, or lists of them, as indented JSON."""
    if isinstance(value, list):
        document: object = [dataclasses.asdict(item) for item in value]
    else:
        document = dataclasses.asdict(value)  # type: ignore[call-overload]
    # Plain print, because rich would wrap long lines and break the JSON.
    print(json.dumps(document, indent=2), file=console.file)


def _run_sessions(args: argparse.Namespace, console: Console) -> int:
    command = args.sessions_command
    with _client_from_args(args) as client:
        if command == "list":
            sessions = client.list_sessions()
            if args.json:
                _print_json(sessions, console)
            else:
                console.print(_sessions_table(sessions))
            return 0
        if command == "create":
            config = Path(args.config_file).read_text() if args.config_file else None
            created = client.create_session(
                config,
                experiment=args.experiment,
                seed=args.seed,
                loader_id=args.loader_id,
                batch_size=args.batch_size,
                samples_per_epoch=args.samples_per_epoch,
                fixed_data=args.fixed_data,
            )
            info = created.info()
            if args.json:
                document = dataclasses.asdict(info)
                document["session_token"] = created.token
                print(json.dumps(document, indent=2), file=console.file)
            else:
                console.print(_session_table(info))
                # The token is shown once, like a password; the server can
                # recompute it but never lists it.
                console.print(f"session token: {created.token}", highlight=False)
            return 0

        token = None
        if args.token_file is not None:
            token = read_token_file(args.token_file, "--token-file")
        elif args.token is not None:
            token = args.token
        session = client.session(args.session_id, token=token)
        if command == "get":
            info = session.info()
            if args.json:
                _print_json(info, console)
            else:
                console.print(_session_table(info))
        elif command == "snapshot":
            snapshot = session.snapshot(args.label)
            if args.json:
                _print_json(snapshot, console)
            else:
                console.print(_snapshots_table([snapshot], "snapshot saved"))
        elif command == "snapshots":
            snapshots = session.list_snapshots()
            title = f"{len(snapshots)} snapshots of session {args.session_id}"
            if args.json:
                _print_json(snapshots, console)
            else:
                console.print(_snapshots_table(snapshots, title))
        elif command == "delete-snapshot":
            snapshot = session.delete_snapshot(args.snapshot)
            if args.json:
                _print_json(snapshot, console)
            else:
                console.print(_snapshots_table([snapshot], "snapshot deleted"))
        elif command == "restore":
            if args.state_file is not None:
                info = session.restore(state=Path(args.state_file).read_text())
            else:
                info = session.restore(snapshot_id=args.snapshot)
            if args.json:
                _print_json(info, console)
            else:
                console.print(
                    f"session {info.session_id} restored; cursor at {info.position}"
                )
        elif command == "close":
            position = session.close()
            if args.json:
                _print_json(position, console)
            else:
                console.print(
                    f"session {args.session_id} closed; cursor was at {position}"
                )
    return 0


def _run_demo(args: argparse.Namespace, console: Console) -> int:
    from gmmserve.demo import run_demo

    return run_demo(
        console,
        batch_size=args.batch_size,
        samples_per_epoch=args.samples_per_epoch,
        seed=args.seed,
        startup_timeout_s=args.startup_timeout_s,
    )


def _run_bench(args: argparse.Namespace, console: Console) -> int:
    from gmmserve.bench import BenchSettings, run_bench

    settings = BenchSettings(
        config=args.config,
        batch_size=args.batch_size,
        max_batches=args.batches,
        max_seconds=args.seconds,
        window=args.window,
        samples_per_epoch=args.samples_per_epoch,
    )
    run_bench(settings, console)
    return 0


def _add_client_access_arguments(parser: argparse.ArgumentParser) -> None:
    access = parser.add_argument_group("access control and TLS")
    access.add_argument(
        "--operator-token-file",
        help="file whose first line is the operator token (default: the "
        "GMMSERVE_OPERATOR_TOKEN environment variable); needed by 'list' and "
        "for sessions whose token is not given",
    )
    access.add_argument(
        "--tls-ca",
        help="PEM CA certificates that sign the server's certificate; enables TLS",
    )
    access.add_argument(
        "--tls-cert", help="PEM client certificate chain, for mutual TLS"
    )
    access.add_argument("--tls-key", help="PEM private key of --tls-cert")
    access.add_argument(
        "--tls-server-name",
        help="host name to check the server certificate against, when it "
        "differs from the host in --target",
    )


def _add_sessions_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    sessions = commands.add_parser(
        "sessions", help="inspect and manage sessions of a server"
    )
    actions = sessions.add_subparsers(dest="sessions_command", required=True)

    def add_action(
        name: str, help_text: str, with_id: bool = True
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument(
            "--target",
            default=DEFAULT_TARGET,
            help=f"server address as HOST:PORT (default {DEFAULT_TARGET})",
        )
        parser.add_argument(
            "--timeout-s",
            type=_SECONDS,
            default=10.0,
            help="deadline of each call in seconds (default 10)",
        )
        parser.add_argument(
            "--json", action="store_true", help="print JSON instead of a table"
        )
        _add_client_access_arguments(parser)
        if with_id:
            parser.add_argument("session_id", help="the session id")
            tokens = parser.add_mutually_exclusive_group()
            tokens.add_argument(
                "--token",
                help="the session token that 'sessions create' printed (visible "
                "to other users in the process list; prefer --token-file)",
            )
            tokens.add_argument(
                "--token-file", help="file whose first line is the session token"
            )
        return parser

    add_action("list", "list every session", with_id=False)
    add_action("get", "show one session")

    create = add_action("create", "create a session", with_id=False)
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--experiment", help="bundled experiment config, such as standard"
    )
    source.add_argument("--config-file", help="path of a JSON data config")
    create.add_argument("--seed", type=_SEED, help="base seed (default: the config's)")
    create.add_argument(
        "--loader-id", default="default", help="loader id (default 'default')"
    )
    create.add_argument(
        "--batch-size",
        type=_WIRE_BATCH_SIZE,
        default=16,
        help="datasets per batch (default 16; the server's limit applies)",
    )
    create.add_argument(
        "--samples-per-epoch",
        type=_SAMPLES_PER_EPOCH,
        default=1000,
        help="datasets per epoch (default 1000)",
    )
    create.add_argument(
        "--fixed-data", action="store_true", help="repeat the batches of epoch 0"
    )

    snapshot = add_action("snapshot", "save the session's cursor as a snapshot")
    snapshot.add_argument("--label", default="", help="label shown in listings")
    add_action("snapshots", "list the session's snapshots")
    delete_snapshot = add_action(
        "delete-snapshot", "delete one snapshot of the session"
    )
    delete_snapshot.add_argument("--snapshot", required=True, help="snapshot id")

    restore = add_action("restore", "move the session's cursor to a snapshot or state")
    restore_source = restore.add_mutually_exclusive_group(required=True)
    restore_source.add_argument("--snapshot", help="snapshot id")
    restore_source.add_argument(
        "--state-file", help="state document written by GMMDataLoader.save_state"
    )
    add_action("close", "close the session, deleting it and its snapshots")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``gmmserve`` command."""
    parser = argparse.ArgumentParser(
        prog="gmmserve",
        description="Serve synthetic Gaussian-mixture datasets over gRPC.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO for serve, WARNING otherwise)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    add_server_arguments(serve)

    _add_sessions_parser(commands)

    demo = commands.add_parser(
        "demo",
        help="kill and restart a server and check every config resumes bit for bit",
    )
    demo.add_argument(
        "--batch-size",
        type=_LOCAL_BATCH_SIZE,
        default=8,
        help="datasets per batch (default 8)",
    )
    demo.add_argument(
        "--samples-per-epoch",
        type=_SAMPLES_PER_EPOCH,
        default=20,
        help="datasets per epoch (default 20, so 3 batches per epoch at batch size 8)",
    )
    demo.add_argument(
        "--seed", type=_SEED, default=2024, help="base seed (default 2024)"
    )
    demo.add_argument(
        "--startup-timeout-s",
        type=_SECONDS,
        default=30.0,
        help="seconds to wait for the server to accept connections (default 30)",
    )

    bench = commands.add_parser(
        "bench",
        help="measure streaming throughput beside in-process and bare gRPC baselines",
    )
    bench.add_argument(
        "--config", default="standard", help="experiment config (default standard)"
    )
    bench.add_argument(
        "--batch-size",
        type=_LOCAL_BATCH_SIZE,
        default=64,
        help="datasets per batch (default 64)",
    )
    bench.add_argument(
        "--batches",
        type=int_in_range(1, 1_000_000),
        default=200,
        help="maximum batches per measurement (default 200)",
    )
    bench.add_argument(
        "--seconds",
        type=_SECONDS,
        default=10.0,
        help="maximum seconds per measurement (default 10)",
    )
    bench.add_argument(
        "--window",
        type=_LOCAL_WINDOW,
        default=8,
        help="stream window in batches (default 8)",
    )
    bench.add_argument(
        "--samples-per-epoch",
        type=_SAMPLES_PER_EPOCH,
        default=100_000,
        help="datasets per epoch of the benchmark session (default 100000)",
    )
    return parser


_HANDLERS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "serve": _run_serve,
    "sessions": _run_sessions,
    "demo": _run_demo,
    "bench": _run_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gmmserve`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and args.samples_per_epoch <= args.batch_size:
        parser.error(
            f"argument --samples-per-epoch: {args.samples_per_epoch} must exceed "
            f"--batch-size {args.batch_size}, so that an epoch has 2 or more batches"
        )
    level = args.log_level
    if level is None:
        level = "INFO" if args.command == "serve" else "WARNING"
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console = Console(log_path=False)
    if not console.is_terminal:
        # Pipes and files get rich's 80-column default, which would cut ids
        # and fingerprints out of the tables.
        console = Console(log_path=False, width=160)
    try:
        return _HANDLERS[args.command](args, console)
    except GmmServeClientError as error:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]error:[/red] {error}", highlight=False
        )
        return 1
    except (OSError, ValueError) as error:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]error:[/red] {error}", highlight=False
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
