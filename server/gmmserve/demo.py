"""``gmmserve demo``: kill a server mid-run and check every config resumes bit for bit.

The demo starts ``gmmserve serve`` as a subprocess on a free loopback port
with a temporary data directory. For every bundled experiment config it
creates a session, streams two batches, snapshots the cursor (mid-epoch),
and streams three more batches across the epoch boundary. It then kills
the server with SIGKILL, starts a new one on the same port and data
directory, restores each snapshot and streams four batches.

Each session passes when all of these hold:

- every batch received equals, bit for bit, the batch a local
  ``GMMDataLoader`` with the same settings generates at that position;
- the resumed batches equal those received before the kill, and those a
  local loader restored from the snapshot's state document yields;
- the committed cursor survived the kill, and the restore moved it to the
  snapshot's position.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from gmmserve_client import Batch, Client, GmmServeClientError, ReconnectPolicy
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from gmmserve.config import experiment_names
from gmmserve.errors import StateError
from gmmserve.generator import ARRAY_NAMES
from gmmserve.loader import GMMDataLoader

__all__ = ["ServerProcess", "run_demo"]

_LOGGER = logging.getLogger(__name__)

_LOADER_ID = "demo"
# Batches streamed before the snapshot, after it, and after the restore.
_BEFORE_SNAPSHOT = 2
_AFTER_SNAPSHOT = 3
_AFTER_RESTORE = 4
_LOG_TAIL_LINES = 20
# Deadline of each stream call, so a stalled server cannot hang the demo.
_STREAM_TIMEOUT_S = 30.0


class ServerProcess:
    """A ``gmmserve serve`` subprocess on loopback, killed on every exit path.

    Parameters
    ----------
    data_dir : path
        The server's session store directory.
    log_path : path
        File that receives the server's stdout and stderr, appended across
        restarts.
    port : int, default 0
        TCP port; 0 lets the first start pick a free one, which later
        starts reuse.
    startup_timeout_s : float, default 30.0
        Seconds to wait for the server to report its port and accept calls.
    """

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        port: int = 0,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """The server's address as ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or None."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the server and wait until it accepts calls.

        Raises
        ------
        RuntimeError
            When the server exits or does not report its port within
            ``startup_timeout_s`` seconds; the message ends with its log.
        """
        if self._process is not None:
            raise RuntimeError(f"server pid {self._process.pid} is already running")
        port_file = self.log_path.with_name(
            f"port-{os.getpid()}-{time.monotonic_ns()}.json"
        )
        command = [
            sys.executable,
            "-m",
            "gmmserve.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--grace-s",
            "1",
            "--port-file",
            str(port_file),
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self.port = self._wait_for_port(port_file)
            with Client(self.target) as client:
                client.wait_until_ready(self.startup_timeout_s)
        except BaseException:
            self.kill()
            raise
        finally:
            port_file.unlink(missing_ok=True)
        _LOGGER.info("server pid %d listening on %s", self._process.pid, self.target)

    def _wait_for_port(self, port_file: Path) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"server exited with status {self._process.returncode} during "
                    f"startup; its log ends with:\n{self.log_tail()}"
                )
            if port_file.exists():
                port: int = json.loads(port_file.read_text())["port"]
                return port
            time.sleep(0.05)
        raise RuntimeError(
            f"server did not start within {self.startup_timeout_s} s; its log ends "
            f"with:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """Kill the server with SIGKILL and reap it; does nothing when stopped."""
        process = self._process
        self._process = None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server with SIGTERM, or SIGKILL after ``timeout_s`` seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _LOGGER.warning(
                    "server pid %d ignored SIGTERM; killing it", process.pid
                )
        self.kill()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last lines of the server's log."""
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()


def _local_loader(
    name: str, batch_size: int, samples_per_epoch: int, seed: int
) -> GMMDataLoader:
    with warnings.catch_warnings():
        # The bundled configs carry legacy keys that change nothing.
        warnings.simplefilter("ignore")
        return GMMDataLoader(
            name,
            batch_size=batch_size,
            num_samples=samples_per_epoch,
            base_seed=seed,
            loader_id=_LOADER_ID,
        )


def _array_differences(
    label: str, received: Batch, expected: dict[str, NDArray[Any]]
) -> list[str]:
    """Compare every array of a received batch with the expected arrays, bit for bit."""
    differences = []
    for name in ARRAY_NAMES:
        actual = received.arrays[name]
        expected_array = np.asarray(expected[name])
        if (
            actual.dtype != expected_array.dtype
            or actual.shape != expected_array.shape
            or actual.tobytes() != expected_array.tobytes()
        ):
            differences.append(
                f"batch {received.global_index}: {name} differs from {label}"
            )
    return differences


def _local_run(loader: GMMDataLoader, count: int) -> list[dict[str, NDArray[Any]]]:
    """Iterate a loader across epoch boundaries as a training loop would."""
    arrays: list[dict[str, NDArray[Any]]] = []
    while len(arrays) < count:
        for data, targets in loader:
            arrays.append(
                {"data": data, **{name: targets[name] for name in ARRAY_NAMES[1:]}}
            )
            if len(arrays) == count:
                break
    return arrays


@dataclass
class _ConfigRun:
    """One config's session through the demo."""

    name: str
    session_id: str
    session_token: str | None
    snapshot_id: str
    snapshot_at: int
    snapshot_state: str
    batches_per_epoch: int
    cursor_before_kill: int
    before_kill: list[Batch]
    resumed: list[Batch] = field(default_factory=list)
    resumed_at: int | None = None
    problems: list[str] = field(default_factory=list)


def _stream_before_kill(
    client: Client, name: str, batch_size: int, samples_per_epoch: int, seed: int
) -> _ConfigRun:
    session = client.create_session(
        experiment=name,
        seed=seed,
        loader_id=_LOADER_ID,
        batch_size=batch_size,
        samples_per_epoch=samples_per_epoch,
    )
    with session.batches(
        max_batches=_BEFORE_SNAPSHOT, timeout_s=_STREAM_TIMEOUT_S
    ) as stream:
        first = list(stream)
    snapshot = session.snapshot(label="mid-epoch")
    with session.batches(
        max_batches=_AFTER_SNAPSHOT, timeout_s=_STREAM_TIMEOUT_S
    ) as stream:
        second = list(stream)
    info = session.info()
    return _ConfigRun(
        name=name,
        session_id=session.id,
        session_token=session.token,
        snapshot_id=snapshot.snapshot_id,
        snapshot_at=snapshot.position.global_index,
        snapshot_state=snapshot.state_json,
        batches_per_epoch=info.batches_per_epoch,
        cursor_before_kill=info.position.global_index,
        before_kill=first + second,
    )


def _resume_after_restart(client: Client, run: _ConfigRun) -> None:
    # The restarted server shares the store and so its token secret, and
    # accepts the token that the first server issued.
    session = client.session(run.session_id, token=run.session_token)
    cursor = session.info().position.global_index
    if cursor != run.cursor_before_kill:
        run.problems.append(
            f"cursor after the restart is {cursor}; before the kill it was "
            f"{run.cursor_before_kill}"
        )
    info = session.restore(snapshot_id=run.snapshot_id)
    run.resumed_at = info.position.global_index
    if run.resumed_at != run.snapshot_at:
        run.problems.append(
            f"restore moved the cursor to {run.resumed_at}, not the snapshot's "
            f"{run.snapshot_at}"
        )
    with session.batches(
        max_batches=_AFTER_RESTORE, timeout_s=_STREAM_TIMEOUT_S
    ) as stream:
        run.resumed = list(stream)
    session.close()


def _check_run(
    run: _ConfigRun, batch_size: int, samples_per_epoch: int, seed: int
) -> None:
    expected_indices = list(range(run.snapshot_at, run.snapshot_at + _AFTER_RESTORE))
    received_indices = [batch.global_index for batch in run.resumed]
    if received_indices != expected_indices:
        run.problems.append(
            f"resumed batches {received_indices}; expected {expected_indices}"
        )
    uninterrupted = _local_loader(run.name, batch_size, samples_per_epoch, seed)
    for batch in run.before_kill + run.resumed:
        epoch, batch_index = divmod(batch.global_index, run.batches_per_epoch)
        if (batch.epoch, batch.batch_index) != (epoch, batch_index):
            run.problems.append(
                f"batch {batch.global_index} reports epoch {batch.epoch} batch "
                f"{batch.batch_index}; expected epoch {epoch} batch {batch_index}"
            )
        local = uninterrupted.batch_at(epoch, batch_index)
        run.problems.extend(
            _array_differences("the local loader's", batch, local.arrays)
        )

    before = {batch.global_index: batch for batch in run.before_kill}
    for batch in run.resumed:
        earlier = before.get(batch.global_index)
        if earlier is not None:
            run.problems.extend(
                _array_differences(
                    "the batch received before the kill", batch, earlier.arrays
                )
            )

    restored = _local_loader(run.name, batch_size, samples_per_epoch, seed)
    try:
        restored.restore_state(json.loads(run.snapshot_state))
    except StateError as error:
        run.problems.append(
            f"the snapshot's state does not restore a local loader: {error}"
        )
        return
    for batch, arrays in zip(
        run.resumed, _local_run(restored, len(run.resumed)), strict=False
    ):
        run.problems.extend(
            _array_differences("the restored local loader's", batch, arrays)
        )


def _position_text(global_index: int | None, batches_per_epoch: int) -> str:
    if global_index is None:
        return "-"
    epoch, batch_index = divmod(global_index, batches_per_epoch)
    return f"{global_index} ({epoch}, {batch_index})"


def _results_table(runs: Sequence[_ConfigRun]) -> Table:
    table = Table(
        title="resume after SIGKILL, bit for bit",
        caption="positions: global index (epoch, batch); fingerprint of the first "
        "resumed batch",
    )
    for column in (
        "config",
        "batches",
        "snapshot at",
        "resumed at",
        "match",
        "fingerprint",
    ):
        table.add_column(column, no_wrap=True)
    for run in runs:
        first = (
            run.resumed[0].fingerprint.split(":", 1)[-1][:12] if run.resumed else "-"
        )
        table.add_row(
            run.name,
            str(len(run.before_kill) + len(run.resumed)),
            _position_text(run.snapshot_at, run.batches_per_epoch),
            _position_text(run.resumed_at, run.batches_per_epoch),
            "[red]no[/red]" if run.problems else "[green]yes[/green]",
            first,
        )
    return table


def run_demo(
    console: Console,
    *,
    batch_size: int = 8,
    samples_per_epoch: int = 20,
    seed: int = 2024,
    startup_timeout_s: float = 30.0,
) -> int:
    """Run the demo and print its progress and results.

    Returns
    -------
    int
        0 when every config resumed bit for bit, else 1.
    """
    if samples_per_epoch <= batch_size:
        raise ValueError(
            f"samples_per_epoch must exceed batch_size ({batch_size}) so an epoch "
            f"has 2 or more batches, got {samples_per_epoch}"
        )
    names = experiment_names()
    reconnect = ReconnectPolicy(max_attempts=5, max_elapsed_s=15.0)
    with tempfile.TemporaryDirectory(prefix="gmmserve-demo-") as temporary:
        root = Path(temporary)
        server = ServerProcess(
            root / "data", root / "server.log", startup_timeout_s=startup_timeout_s
        )
        try:
            runs = _run_with_server(
                console, server, names, reconnect, batch_size, samples_per_epoch, seed
            )
        except (GmmServeClientError, RuntimeError) as error:
            console.print(f"[red]demo failed:[/red] {error}", highlight=False)
            console.print(
                f"server log:\n{server.log_tail()}", highlight=False, markup=False
            )
            return 1
        finally:
            server.kill()

    for run in runs:
        _check_run(run, batch_size, samples_per_epoch, seed)
    console.print(_results_table(runs))
    failed = [run for run in runs if run.problems]
    for run in failed:
        for problem in run.problems:
            console.print(f"[red]{run.name}:[/red] {problem}", highlight=False)
    if failed:
        console.print(f"[red]{len(failed)} of {len(runs)} configs did not match[/red]")
        return 1
    console.print(f"[green]all {len(runs)} configs resumed bit for bit[/green]")
    return 0


def _run_with_server(
    console: Console,
    server: ServerProcess,
    names: Sequence[str],
    reconnect: ReconnectPolicy,
    batch_size: int,
    samples_per_epoch: int,
    seed: int,
) -> list[_ConfigRun]:
    started = time.monotonic()
    server.start()
    console.log(f"server pid {server.pid} listening on {server.target}")
    runs = []
    with Client(server.target, reconnect=reconnect) as client:
        for name in names:
            run = _stream_before_kill(client, name, batch_size, samples_per_epoch, seed)
            runs.append(run)
            console.log(
                f"{name}: streamed {len(run.before_kill)} batches, snapshot at batch "
                f"{run.snapshot_at}, cursor at {run.cursor_before_kill}"
            )
    pid = server.pid
    server.kill()
    console.log(f"killed server pid {pid} with SIGKILL")
    server.start()
    console.log(
        f"restarted: server pid {server.pid} on {server.target}, same data directory"
    )
    with Client(server.target, reconnect=reconnect) as client:
        for run in runs:
            _resume_after_restart(client, run)
            console.log(
                f"{run.name}: restored to batch {run.resumed_at}, streamed "
                f"{len(run.resumed)} batches"
            )
    server.stop()
    console.log(f"server stopped; {time.monotonic() - started:.1f} s with the server")
    return runs
