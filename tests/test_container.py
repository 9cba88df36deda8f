"""Build the container image with podman, run it and stream a batch from it.

The image is built by ``podman build`` after ``scripts/container_setup.sh``
has prepared podman, then started with host networking on a free loopback
port. The tests skip with a reason when podman is missing, unless the CI
variable is set: then a missing podman is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from gmmserve.config import DEFAULT_LIMITS, load_config
from gmmserve.errors import LegacyKeyWarning
from gmmserve.generator import ARRAY_NAMES, generate_batch
from gmmserve_proto.v1 import gmmserve_pb2, gmmserve_pb2_grpc
from numpy.typing import NDArray

# The first run in a clean clone debootstraps Debian and downloads every
# dependency wheel, which can exceed the suite's default 300 s timeout.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO_DIR = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_DIR / "scripts" / "container_setup.sh"
IMAGE_TAG = "localhost/gmmserve:test"
DEPS_IMAGE_TAG = "localhost/gmmserve-deps:latest"

SETUP_TIMEOUT_SECONDS = 900
BUILD_TIMEOUT_SECONDS = 900
PODMAN_TIMEOUT_SECONDS = 60
HEALTHY_TIMEOUT_SECONDS = 60
RPC_TIMEOUT_SECONDS = 30

SESSION_SEED = 20240613
SESSION_LOADER_ID = "train"
SESSION_BATCH_SIZE = 4
SESSION_SAMPLES_PER_EPOCH = 8


def _require_podman() -> str:
    """Return the podman path, or skip (fail when CI is set) without it."""
    podman = shutil.which("podman")
    if podman is not None:
        return podman
    if os.environ.get("CI"):
        pytest.fail(
            "podman is not installed but CI is set, so the container tests "
            "must run; install it with: apt-get install -y podman buildah "
            "runc debootstrap"
        )
    pytest.skip(
        "podman is not installed; install it with: apt-get install -y podman "
        "buildah runc debootstrap (set CI to turn this skip into a failure)"
    )


def _podman_env() -> dict[str, str]:
    """Run the setup script and return the environment podman needs."""
    result = subprocess.run(
        [str(SETUP_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, (
        f"{SETUP_SCRIPT.name} failed with exit code {result.returncode}:\n"
        f"{result.stderr[-4000:]}"
    )
    env = dict(os.environ)
    for line in result.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    assert "CONTAINERS_CONF" in env, f"no CONTAINERS_CONF in: {result.stdout!r}"
    assert "CONTAINERS_STORAGE_CONF" in env, (
        f"no CONTAINERS_STORAGE_CONF in: {result.stdout!r}"
    )
    return env


def _run_podman(
    podman: str,
    env: dict[str, str],
    *arguments: str,
    timeout: float = PODMAN_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [podman, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Container:
    """A running gmmserve container and the podman command line to manage it."""

    def __init__(self, podman: str, env: dict[str, str], name: str, port: int) -> None:
        self.podman = podman
        self.env = env
        self.name = name
        self.port = port

    def run(
        self, *arguments: str, timeout: float = PODMAN_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        """Run one podman command with this container's environment."""
        return _run_podman(self.podman, self.env, *arguments, timeout=timeout)

    def state(self, field: str) -> str:
        """Return one ``.State`` field of ``podman inspect``, such as Status."""
        result = self.run("inspect", "--format", f"{{{{.State.{field}}}}}", self.name)
        assert result.returncode == 0, f"podman inspect failed: {result.stderr}"
        return result.stdout.strip()

    def logs(self) -> str:
        """Return the container's stdout and stderr, for failure messages."""
        result = self.run("logs", self.name)
        return (result.stdout + result.stderr)[-4000:]

    def wait_healthy(self, timeout: float) -> None:
        """Run the image's health check until it passes or ``timeout`` elapses."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.state("Status")
            assert status == "running", (
                f"container {self.name} is {status}, expected running; logs:\n"
                f"{self.logs()}"
            )
            result = self.run("healthcheck", "run", self.name)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"container {self.name} was not healthy after {timeout} s: "
                    f"{result.stdout}{result.stderr}\nlogs:\n{self.logs()}"
                )
            time.sleep(1.0)


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    """The environment variables that point podman at the setup's config."""
    _require_podman()
    return _podman_env()


def _build(podman: str, env: dict[str, str], *arguments: str) -> None:
    result = _run_podman(
        podman,
        env,
        "build",
        "--format",
        "docker",
        "--network=host",
        "--pull=never",
        *arguments,
        str(REPO_DIR),
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, (
        f"podman build {' '.join(arguments)} failed with exit code "
        f"{result.returncode}:\n{(result.stdout + result.stderr)[-6000:]}"
    )


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str]) -> str:
    """Build the image from the repository and return its tag."""
    podman = _require_podman()
    # The same steps as `make image`: podman 4.3 leaves a dangling image of
    # about 300 MB per build, and the tag keeps the deps stage's cache safe
    # from the prune that removes them.
    _build(podman, podman_env, "--target", "deps", "-t", DEPS_IMAGE_TAG)
    _build(podman, podman_env, "-t", IMAGE_TAG)
    pruned = _run_podman(podman, podman_env, "image", "prune", "--force")
    assert pruned.returncode == 0, f"podman image prune failed: {pruned.stderr}"
    return IMAGE_TAG


@pytest.fixture(scope="module")
def container(podman_env: dict[str, str], image: str) -> Iterator[_Container]:
    """Start the image on a free loopback port and remove it afterwards."""
    podman = _require_podman()
    port = _free_port()
    name = f"gmmserve-test-{uuid.uuid4().hex[:12]}"
    started = _Container(podman, podman_env, name, port)
    try:
        # There is no systemd to run health checks on a timer, so the timer is
        # disabled and the tests run the image's check with podman healthcheck.
        result = started.run(
            "run",
            "--detach",
            "--pull=never",
            "--name",
            name,
            "--network=host",
            "--health-interval=disable",
            "--env",
            "GMMSERVE_HOST=127.0.0.1",
            "--env",
            f"GMMSERVE_PORT={port}",
            image,
        )
        assert result.returncode == 0, f"podman run failed: {result.stderr}"
        started.wait_healthy(HEALTHY_TIMEOUT_SECONDS)
        yield started
    finally:
        # --volumes also removes the anonymous volume that backs /data.
        started.run("rm", "--force", "--volumes", "--time", "0", name)


def _requests_until(
    first: gmmserve_pb2.StreamBatchesRequest, done: threading.Event
) -> Iterator[gmmserve_pb2.StreamBatchesRequest]:
    # Keep the request stream open until ``done`` is set, so the server does
    # not receive the client's half-close before it has sent its batch.
    yield first
    done.wait(RPC_TIMEOUT_SECONDS)


def _stub(channel: grpc.Channel) -> Any:
    # The generated stub module has no type hints, so the stub is Any.
    stub_class: Any = gmmserve_pb2_grpc.GmmServiceStub
    return stub_class(channel)


def _create_session(stub: Any) -> gmmserve_pb2.CreateSessionResponse:
    spec = gmmserve_pb2.SessionSpec(
        experiment="simple",
        seed=SESSION_SEED,
        loader_id=SESSION_LOADER_ID,
        batch_size=SESSION_BATCH_SIZE,
        samples_per_epoch=SESSION_SAMPLES_PER_EPOCH,
    )
    created = stub.CreateSession(
        gmmserve_pb2.CreateSessionRequest(spec=spec), timeout=RPC_TIMEOUT_SECONDS
    )
    response: gmmserve_pb2.CreateSessionResponse = created
    return response


def _token_metadata(created: gmmserve_pb2.CreateSessionResponse) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {created.session_token}"),)


def _expected_arrays(seed: int) -> dict[str, NDArray[Any]]:
    # The bundled "simple" config contains legacy keys, which raise a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyKeyWarning)
        config = load_config("simple")
    batch = generate_batch(
        config,
        seed,
        SESSION_LOADER_ID,
        0,
        0,
        SESSION_BATCH_SIZE,
        max_clusters=DEFAULT_LIMITS.max_clusters,
        max_points=DEFAULT_LIMITS.max_points,
    )
    return batch.arrays


def test_container_image_config(podman_env: dict[str, str], image: str) -> None:
    result = _run_podman(
        _require_podman(),
        podman_env,
        "image",
        "inspect",
        "--format",
        "{{.User}}|{{json .Config.ExposedPorts}}|{{json .Config.Volumes}}"
        "|{{json .HealthCheck.Test}}",
        image,
    )
    assert result.returncode == 0, f"podman image inspect failed: {result.stderr}"
    user, ports, volumes, health = result.stdout.strip().split("|")
    assert user == "gmmserve"
    assert ports == '{"50051/tcp":{}}'
    assert volumes == '{"/data":{}}'
    assert health == ('["CMD","/opt/venv/bin/python","/opt/gmmserve/healthcheck.py"]')


def test_container_streams_batch(container: _Container) -> None:
    target = f"127.0.0.1:{container.port}"
    with grpc.insecure_channel(target) as channel:
        stub = _stub(channel)
        created = _create_session(stub)
        session = created.session
        start = gmmserve_pb2.StreamBatchesRequest(
            start=gmmserve_pb2.StreamStart(session_id=session.session_id, max_batches=1)
        )
        done = threading.Event()
        call = stub.StreamBatches(
            _requests_until(start, done),
            timeout=RPC_TIMEOUT_SECONDS,
            metadata=_token_metadata(created),
        )
        try:
            response = next(call)
        finally:
            done.set()
            call.cancel()

    assert session.session_id
    assert session.batches_per_epoch == 2
    assert response.WhichOneof("kind") == "batch"
    batch = response.batch
    assert batch.position.epoch == 0
    assert batch.position.batch_index == 0
    assert batch.position.global_index == 0
    assert [array.name for array in batch.arrays] == list(ARRAY_NAMES)

    expected = _expected_arrays(session.seed)
    for array in batch.arrays:
        reference = np.ascontiguousarray(expected[array.name])
        assert array.dtype == reference.dtype.str, array.name
        assert list(array.shape) == list(reference.shape), array.name
        assert array.data == reference.tobytes(), array.name


def test_container_runs_as_non_root(container: _Container) -> None:
    result = container.run("exec", container.name, "id", "-u")
    assert result.returncode == 0, f"podman exec failed: {result.stderr}"
    assert result.stdout.strip() != "0"


def test_container_stops_cleanly_on_sigterm(container: _Container) -> None:
    # An unbounded stream with a window of 1 and no acknowledgements is still
    # open, waiting for an Ack, when SIGTERM arrives.
    with grpc.insecure_channel(f"127.0.0.1:{container.port}") as channel:
        stub = _stub(channel)
        created = _create_session(stub)
        session = created.session
        start = gmmserve_pb2.StreamBatchesRequest(
            start=gmmserve_pb2.StreamStart(
                session_id=session.session_id, window=1, max_batches=0
            )
        )
        done = threading.Event()
        call = stub.StreamBatches(
            _requests_until(start, done),
            timeout=RPC_TIMEOUT_SECONDS,
            metadata=_token_metadata(created),
        )
        try:
            first = next(call)
            # podman stop sends SIGTERM and falls back to SIGKILL (exit code
            # 137) after 10 s, so exit code 0 means the server shut down by
            # itself.
            stopped = container.run("stop", "--time", "10", container.name, timeout=30)
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
        finally:
            done.set()
            call.cancel()

    assert first.WhichOneof("kind") == "batch"
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stopped.returncode == 0, f"podman stop failed: {stopped.stderr}"
    assert container.state("Running") == "false"
    assert container.state("ExitCode") == "0", container.logs()
