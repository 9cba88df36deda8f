"""Inject faults into a loopback server and trainer and check no batch is lost.

The script starts a gmmserve server subprocess on a free 127.0.0.1 port with
a temporary data directory, and a trainer subprocess that streams batches
through the client library. The trainer appends each consumed batch's global
index and fingerprint to a log file and fsyncs it. That log is the trainer's
own checkpoint. After a restart the trainer resumes at the batch after the
last logged one, even when the server's committed cursor is elsewhere. It also
takes a snapshot every few batches.

While the trainer runs, the script injects faults at points drawn from a
seeded RNG:

- ``client_cancel``: the trainer closes its stream and opens a new one;
- ``client_kill``: SIGKILL of the trainer, which is then started again;
- ``server_kill``: SIGKILL of the server, restarted on the same data dir;
- ``server_term``: SIGTERM of the server (it must exit 0), then a restart;
- ``snapshot_crash``: SIGKILL of the server while a snapshot transaction is
  paused by the store's test hook, then a restart and a check that the
  previous snapshot of a probe session is unchanged and restorable.

At the end the logged fingerprints are compared with those of a local
``GMMDataLoader`` with the same settings. The exit status is 0 only when no
batch was lost, repeated or different and every check passed.

Every process binds and connects to 127.0.0.1 only, every wait is bounded,
and only the processes this script started are signalled, by PID.

Usage::

    .venv/bin/python scripts/fault_inject.py --faults 100 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger("fault_inject")

FAULT_KINDS = (
    "client_cancel",
    "client_kill",
    "server_kill",
    "server_term",
    "snapshot_crash",
)

# A config whose batches take about a millisecond to generate.
DEFAULT_CONFIG: dict[str, Any] = {
    "dim": 2,
    "cluster_params": "few",
    "snr_db_params": "easy",
    "sample_count_distribution": {"type": "fixed", "value": 64},
    "vary_parameter_in_batch": True,
}
# 22 datasets in batches of 4 make 6 batches per epoch, the last holding 2,
# so a run crosses many epoch boundaries and short final batches.
DEFAULT_BATCH_SIZE = 4
DEFAULT_SAMPLES_PER_EPOCH = 22
TRAINER_LOADER_ID = "train"
PROBE_LOADER_ID = "probe"
TRAINER_REQUEST_ID = "fault-inject-trainer"

# Bounds of every wait, in seconds. None of them is a timing check.
SERVER_START_TIMEOUT_S = 60.0
PROGRESS_TIMEOUT_S = 90.0
PAUSE_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 30.0


# Trainer (runs in its own process and uses only the client library).


@dataclass(frozen=True)
class TrainerSettings:
    """Settings of a trainer process, read from a JSON file."""

    target: str
    config_json: str
    seed: int
    batch_size: int
    samples_per_epoch: int
    window: int
    snapshot_every: int
    step_s: float
    max_batches: int
    max_seconds: float
    consumed_log: str
    stop_file: str
    unexpected_log: str


def read_consumed(path: Path) -> list[tuple[int, str]]:
    """Read a consumed-batch log, ignoring a last line cut short by a kill."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        index, fingerprint = line.decode().split(" ")
        entries.append((int(index), fingerprint))
    return entries


def _open_consumed_log(path: Path) -> tuple[int, int]:
    """Open the log for appending after dropping a torn last line.

    Returns the file descriptor and the global index to resume at.
    """
    entries = read_consumed(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    complete = path.read_bytes().rfind(b"\n") + 1
    os.ftruncate(fd, complete)
    os.lseek(fd, complete, os.SEEK_SET)
    os.fsync(fd)
    return fd, entries[-1][0] + 1 if entries else 0


def run_trainer(settings: TrainerSettings) -> int:
    """Consume batches until the stop file appears; return the exit status.

    The trainer also stops after ``max_batches`` batches or ``max_seconds``
    seconds (status 4 for the latter).

    Unavailable, Aborted and DeadlineExceeded errors reopen the stream at
    the batch after the last logged one. Any other client error ends the
    trainer with status 3.
    """
    from gmmserve_client import (
        Aborted,
        Client,
        DeadlineExceeded,
        GmmServeClientError,
        ReconnectPolicy,
        Unavailable,
    )

    cancel_requested = threading.Event()
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: cancel_requested.set())
    stop_file = Path(settings.stop_file)
    fd, next_index = _open_consumed_log(Path(settings.consumed_log))
    reconnect = ReconnectPolicy(max_attempts=40, max_backoff_s=0.5, max_elapsed_s=60)
    retryable = (Unavailable, Aborted, DeadlineExceeded)
    deadline = time.monotonic() + settings.max_seconds
    with Client(settings.target, timeout_s=10, reconnect=reconnect) as client:
        session = None
        while session is None:
            try:
                # The request id makes every trainer process attach to the
                # session the first one created.
                session = client.create_session(
                    settings.config_json,
                    seed=settings.seed,
                    loader_id=TRAINER_LOADER_ID,
                    batch_size=settings.batch_size,
                    samples_per_epoch=settings.samples_per_epoch,
                    request_id=TRAINER_REQUEST_ID,
                )
            except retryable as error:
                if time.monotonic() > deadline:
                    raise
                _LOGGER.warning("create_session failed, retrying: %s", error)
                time.sleep(0.2)
        _LOGGER.info("session %s: trainer resumes at batch %d", session.id, next_index)
        while next_index < settings.max_batches and not stop_file.exists():
            if time.monotonic() > deadline:
                _LOGGER.error(
                    "trainer gave up after %.0f s at batch %d",
                    settings.max_seconds,
                    next_index,
                )
                return 4
            try:
                # The trainer's own earlier stream may still be open on the
                # server (after a kill or a cancel), so it takes the session
                # over instead of waiting for FAILED_PRECONDITION.
                with session.batches(
                    start=next_index, window=settings.window, takeover=True
                ) as stream:
                    for batch in stream:
                        if batch.global_index != next_index:
                            _LOGGER.error(
                                "received batch %d where %d was expected",
                                batch.global_index,
                                next_index,
                            )
                            return 3
                        line = f"{batch.global_index} {batch.fingerprint}\n"
                        os.write(fd, line.encode())
                        os.fsync(fd)
                        next_index += 1
                        # The training step a real trainer spends on the batch.
                        time.sleep(settings.step_s)
                        if next_index % settings.snapshot_every == 0:
                            _take_snapshot(session, retryable, settings)
                        if stop_file.exists() or next_index >= settings.max_batches:
                            break
                        if cancel_requested.is_set():
                            cancel_requested.clear()
                            _LOGGER.info(
                                "session %s: closing the stream on request at batch %d",
                                session.id,
                                batch.global_index,
                            )
                            break
            except retryable as error:
                _LOGGER.warning(
                    "session %s: stream failed at batch %d, reopening: %s",
                    session.id,
                    next_index,
                    error,
                )
                time.sleep(0.1)
            except GmmServeClientError:
                _LOGGER.exception("session %s: stream failed", session.id)
                return 3
    os.close(fd)
    _LOGGER.info("trainer stopped at batch %d", next_index)
    return 0


def _take_snapshot(
    session: Any, retryable: tuple[type[Exception], ...], settings: TrainerSettings
) -> None:
    """Take a snapshot; record a CANCELLED status, which the contract omits."""
    from gmmserve_client import GmmServeClientError

    try:
        session.snapshot(label="trainer")
    except retryable as error:
        _LOGGER.warning("session %s: snapshot failed: %s", session.id, error)
    except GmmServeClientError as error:
        if error.code is None or error.code.name != "CANCELLED":
            raise
        _LOGGER.warning("session %s: snapshot ended with %s", session.id, error)
        with open(settings.unexpected_log, "a", encoding="utf-8") as log:
            log.write(f"Snapshot ended with {error}\n")


# Orchestrator.


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A server subprocess on a fixed 127.0.0.1 port, restartable in place.

    The port stays the same across restarts, so the trainer's client
    reconnects to the new process by itself.
    """

    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = env
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it reports its port."""
        port_file = self.data_dir / "port.json"
        port_file.unlink(missing_ok=True)
        environment = {**os.environ, **self.env}
        with open(self.data_dir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gmmserve.service",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--grace",
                    "5",
                    "--port-file",
                    str(port_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        self.starts += 1
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with status {self.process.returncode} at start; "
                    f"see {self.data_dir / 'server.log'}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"server did not start within {SERVER_START_TIMEOUT_S} s"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=EXIT_TIMEOUT_S)

    def terminate(self) -> int:
        """SIGTERM the server and return its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=EXIT_TIMEOUT_S)


class TrainerProcess:
    """A trainer subprocess running this script with ``--trainer``."""

    def __init__(self, settings_path: Path, log_path: Path) -> None:
        self.settings_path = settings_path
        self.log_path = log_path
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--trainer", str(self.settings_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def exit_status(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL the trainer and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=EXIT_TIMEOUT_S)

    def request_cancel(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)


@dataclass
class Report:
    """The outcome of a run, printed at the end and optionally saved as JSON."""

    faults: dict[str, int] = field(default_factory=dict)
    faults_requested: int = 0
    batches_consumed: int = 0
    batches_lost: int = 0
    batches_repeated: int = 0
    fingerprint_mismatches: int = 0
    snapshot_checks: int = 0
    failures: list[str] = field(default_factory=list)
    # Statuses outside the RPC contract that the trainer survived; they are
    # reported but do not fail the run.
    unexpected_statuses: list[str] = field(default_factory=list)
    server_starts: int = 0
    trainer_starts: int = 0
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.batches_lost == 0
            and self.batches_repeated == 0
            and self.fingerprint_mismatches == 0
            and not self.failures
            and sum(self.faults.values()) == self.faults_requested
        )


def compare_consumed(
    consumed: list[tuple[int, str]], expected: Callable[[int], str]
) -> tuple[int, int, int]:
    """Compare a consumed-batch log with an uninterrupted run.

    Parameters
    ----------
    consumed : list of (int, str)
        Global index and fingerprint of each consumed batch, in log order.
    expected : callable
        Returns the fingerprint of the batch at a global index.

    Returns
    -------
    tuple of int
        Lost batches (indices below the highest consumed one that never
        appear), repeated batches (entries whose index appeared before) and
        fingerprint mismatches (entries that differ from ``expected``).
    """
    seen: set[int] = set()
    repeated = 0
    mismatches = 0
    for index, fingerprint in consumed:
        if index in seen:
            repeated += 1
        seen.add(index)
        if fingerprint != expected(index):
            mismatches += 1
    highest = max(seen, default=-1)
    lost = highest + 1 - len(seen)
    return lost, repeated, mismatches


def fault_schedule(count: int, rng: random.Random) -> list[str]:
    """Return ``count`` fault kinds that include every kind when count >= 5."""
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    schedule = kinds[:count]
    schedule += [rng.choice(FAULT_KINDS) for _ in range(count - len(schedule))]
    return schedule


class FaultRun:
    """One fault-injection run: the processes, the probe session, the faults."""

    def __init__(
        self,
        work_dir: Path,
        config: dict[str, Any],
        seed: int,
        faults: int,
        max_seconds: float,
    ) -> None:
        self.work_dir = work_dir
        self.config = config
        self.rng = random.Random(seed)
        self.schedule = fault_schedule(faults, self.rng)
        self.deadline = time.monotonic() + max_seconds
        self.report = Report(
            faults={kind: 0 for kind in FAULT_KINDS}, faults_requested=faults
        )
        self.data_seed = 1000 + seed

        data_dir = work_dir / "data"
        data_dir.mkdir()
        self.pause_file = work_dir / "snapshot-pause"
        self.paused_marker = Path(f"{self.pause_file}.paused")
        self.server = ServerProcess(
            data_dir,
            free_port(),
            {"GMMSERVE_TEST_SNAPSHOT_PAUSE_FILE": str(self.pause_file)},
        )

        self.consumed_log = work_dir / "consumed.log"
        self.stop_file = work_dir / "stop"
        self.unexpected_log = work_dir / "unexpected.log"
        settings = TrainerSettings(
            target=self.server.target,
            config_json=json.dumps(config),
            seed=self.data_seed,
            batch_size=DEFAULT_BATCH_SIZE,
            samples_per_epoch=DEFAULT_SAMPLES_PER_EPOCH,
            window=4,
            snapshot_every=7,
            step_s=0.02,
            max_batches=1_000_000,
            max_seconds=max_seconds + 120,
            consumed_log=str(self.consumed_log),
            stop_file=str(self.stop_file),
            unexpected_log=str(self.unexpected_log),
        )
        settings_path = work_dir / "trainer.json"
        settings_path.write_text(json.dumps(asdict(settings)))
        self.trainer = TrainerProcess(settings_path, work_dir / "trainer.log")
        self.probe: Any = None

    def consumed_count(self) -> int:
        return len(read_consumed(self.consumed_log))

    def wait_for_batches(self, count: int) -> None:
        """Wait until the trainer has logged ``count`` batches.

        Raises
        ------
        RuntimeError
            When the trainer exits or logs nothing new for 90 s.
        """
        last = self.consumed_count()
        progress_at = time.monotonic()
        while last < count:
            status = self.trainer.exit_status()
            if status is not None:
                raise RuntimeError(
                    f"trainer exited with status {status} after {last} batches; "
                    f"see {self.trainer.log_path}"
                )
            if time.monotonic() - progress_at > PROGRESS_TIMEOUT_S:
                raise RuntimeError(
                    f"trainer logged no batch for {PROGRESS_TIMEOUT_S} s after "
                    f"batch {last - 1}"
                )
            time.sleep(0.01)
            current = self.consumed_count()
            if current > last:
                last = current
                progress_at = time.monotonic()

    def run(self) -> Report:
        """Start the processes, inject every scheduled fault and verify."""
        from gmmserve_client import Client, RetryPolicy

        started = time.monotonic()
        try:
            self.server.start()
            # No automatic retries: a retried Snapshot could reach the
            # restarted server after a crash and save a snapshot that the
            # checks would count as a leftover of the killed transaction.
            no_retry = RetryPolicy(max_attempts=1)
            with Client(self.server.target, timeout_s=10, retry=no_retry) as client:
                self.probe = client.create_session(
                    self.config,
                    seed=self.data_seed,
                    loader_id=PROBE_LOADER_ID,
                    batch_size=DEFAULT_BATCH_SIZE,
                    samples_per_epoch=DEFAULT_SAMPLES_PER_EPOCH,
                )
                self.trainer.start()
                self._inject_all()
            self.stop_file.touch()
            status = self.trainer.process.wait(timeout=EXIT_TIMEOUT_S)
            if status != 0:
                self.report.failures.append(
                    f"trainer exited with status {status}; see {self.trainer.log_path}"
                )
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
            self.report.failures.append(str(error))
        finally:
            self.trainer.kill()
            self.server.kill()
        self._verify()
        if self.unexpected_log.exists():
            lines = self.unexpected_log.read_text().splitlines()
            self.report.unexpected_statuses = lines
        self.report.server_starts = self.server.starts
        self.report.trainer_starts = self.trainer.starts
        self.report.wall_time_s = time.monotonic() - started
        return self.report

    def _inject_all(self) -> None:
        for number, kind in enumerate(self.schedule, start=1):
            if time.monotonic() > self.deadline:
                self.report.failures.append(
                    f"--max-seconds reached after {number - 1} faults"
                )
                return
            # Each fault waits for 1 to 5 new batches, so the trainer has
            # resumed after the previous one.
            self.wait_for_batches(self.consumed_count() + self.rng.randint(1, 5))
            time.sleep(self.rng.uniform(0.0, 0.05))
            _LOGGER.info("fault %d: %s", number, kind)
            getattr(self, f"_inject_{kind}")()
            self.report.faults[kind] += 1
        self.wait_for_batches(self.consumed_count() + 3)

    def _inject_client_cancel(self) -> None:
        self.trainer.request_cancel()

    def _inject_client_kill(self) -> None:
        self.trainer.kill()
        self.trainer.start()

    def _inject_server_kill(self) -> None:
        self.server.kill()
        self.server.start()

    def _inject_server_term(self) -> None:
        status = self.server.terminate()
        if status != 0:
            self.report.failures.append(
                f"server exited with status {status} on SIGTERM"
            )
        self.server.start()

    def _inject_snapshot_crash(self) -> None:
        """Kill the server inside a snapshot transaction and check the last one."""
        from gmmserve_client import GmmServeClientError

        probe = self.probe
        position = self.rng.randrange(0, 200)
        self._retry_unavailable(
            lambda: probe.restore(state=self._probe_state(position))
        )
        previous = self._retry_unavailable(
            lambda: probe.snapshot(label=f"before-crash-{position}")
        )
        listed = self._retry_unavailable(probe.list_snapshots)

        self.pause_file.touch()
        outcome: list[Any] = []

        def snapshot_in_pause() -> None:
            try:
                outcome.append(probe.snapshot(label="paused"))
            except GmmServeClientError as error:
                outcome.append(error)

        writer = threading.Thread(target=snapshot_in_pause, daemon=True)
        writer.start()
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not self.paused_marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        paused = self.paused_marker.exists()
        self.server.kill()
        self.pause_file.unlink()
        self.paused_marker.unlink(missing_ok=True)
        writer.join(timeout=EXIT_TIMEOUT_S)
        self.server.start()
        if not paused:
            self.report.failures.append(
                f"snapshot transaction did not pause within {PAUSE_TIMEOUT_S} s"
            )
            return
        if outcome and not isinstance(outcome[0], Exception):
            self.report.failures.append(
                f"snapshot {outcome[0].snapshot_id} succeeded although the server "
                "was killed inside its transaction"
            )
        self._check_snapshots_after_crash(listed, previous)

    def _probe_state(self, position: int) -> dict[str, Any]:
        loader = self._local_loader(PROBE_LOADER_ID)
        loader.seek(*divmod(position, loader.batches_per_epoch))
        return loader.state_dict()

    def _check_snapshots_after_crash(self, listed: list[Any], previous: Any) -> None:
        from gmmserve.state import parse_state_json

        self.report.snapshot_checks += 1
        after = self._retry_unavailable(self.probe.list_snapshots)
        if after != listed:
            self.report.failures.append(
                f"probe snapshots changed across the crash: {len(listed)} before, "
                f"{len(after)} after"
            )
            return
        document = parse_state_json(previous.state_json)
        loader = self._local_loader(PROBE_LOADER_ID)
        loader.restore_state(document)
        local = loader.current_epoch * loader.batches_per_epoch + loader.current_batch
        expected = previous.position.global_index
        if local != expected:
            self.report.failures.append(
                f"snapshot {previous.snapshot_id} restores a local loader to batch "
                f"{local}, not {expected}"
            )
        info = self._retry_unavailable(
            lambda: self.probe.restore(snapshot_id=previous.snapshot_id)
        )
        if info.position.global_index != expected:
            self.report.failures.append(
                f"restoring snapshot {previous.snapshot_id} moved the probe session to "
                f"batch {info.position.global_index}, not {expected}"
            )

    def _retry_unavailable(self, call: Callable[[], Any]) -> Any:
        from gmmserve_client import Unavailable

        for _ in range(20):
            try:
                return call()
            except Unavailable:
                time.sleep(0.2)
        return call()

    def _local_loader(self, loader_id: str) -> Any:
        from gmmserve.loader import GMMDataLoader

        return GMMDataLoader(
            self.config,
            batch_size=DEFAULT_BATCH_SIZE,
            num_samples=DEFAULT_SAMPLES_PER_EPOCH,
            base_seed=self.data_seed,
            loader_id=loader_id,
        )

    def _verify(self) -> None:
        from gmmserve.generator import fingerprint_arrays

        loader = self._local_loader(TRAINER_LOADER_ID)

        def expected(index: int) -> str:
            epoch, batch_index = divmod(index, loader.batches_per_epoch)
            return fingerprint_arrays(loader.batch_at(epoch, batch_index).arrays)

        consumed = read_consumed(self.consumed_log)
        lost, repeated, mismatches = compare_consumed(consumed, expected)
        self.report.batches_consumed = len(consumed)
        self.report.batches_lost = lost
        self.report.batches_repeated = repeated
        self.report.fingerprint_mismatches = mismatches


def load_config_option(value: str | None) -> dict[str, Any]:
    """Return the config of ``--config``: a JSON file, JSON text or an experiment."""
    if value is None:
        return dict(DEFAULT_CONFIG)
    if value.lstrip().startswith("{"):
        return dict(json.loads(value))
    if Path(value).is_file():
        return dict(json.loads(Path(value).read_text()))
    from gmmserve.config import experiment_config

    return experiment_config(value)


def print_report(report: Report) -> None:
    faults = ", ".join(f"{kind} {count}" for kind, count in report.faults.items())
    print(f"faults injected: {sum(report.faults.values())} ({faults})")
    print(f"batches consumed: {report.batches_consumed}")
    print(f"batches lost: {report.batches_lost}")
    print(f"batches repeated: {report.batches_repeated}")
    print(f"fingerprint mismatches: {report.fingerprint_mismatches}")
    print(f"snapshot crash checks: {report.snapshot_checks}")
    print(f"server starts: {report.server_starts}")
    print(f"trainer starts: {report.trainer_starts}")
    print(f"wall time: {report.wall_time_s:.1f} s")
    for status in report.unexpected_statuses:
        print(f"unexpected status (the trainer continued): {status}")
    for failure in report.failures:
        print(f"FAILURE: {failure}")
    print("result: " + ("OK" if report.ok else "FAILED"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=100, help="faults to inject")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    parser.add_argument(
        "--config",
        help="data config: a JSON file, JSON text or a bundled experiment name "
        "(default: a small 2-D config)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=1200.0,
        help="stop injecting faults after this many seconds (default 1200)",
    )
    parser.add_argument("--json", help="also write the report to this JSON file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and its logs"
    )
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if options.trainer:
        settings = TrainerSettings(**json.loads(Path(options.trainer).read_text()))
        return run_trainer(settings)
    if not 0 <= options.faults <= 100_000:
        parser.error(f"--faults must be in [0, 100000], got {options.faults}")
    if not options.max_seconds > 0:
        parser.error(f"--max-seconds must be greater than 0, got {options.max_seconds}")

    work_dir = Path(tempfile.mkdtemp(prefix="gmmserve-faults-"))
    run = FaultRun(
        work_dir,
        load_config_option(options.config),
        options.seed,
        options.faults,
        options.max_seconds,
    )
    report = run.run()
    print_report(report)
    if options.json:
        Path(options.json).write_text(json.dumps(asdict(report), indent=2))
    if options.keep or not report.ok:
        print(f"work directory: {work_dir}")
    else:
        _remove_tree(work_dir)
    return 0 if report.ok else 1


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
