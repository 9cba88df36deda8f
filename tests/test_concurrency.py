"""Tests of concurrent streams, snapshots, restores and creates on one server."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _server import OPERATOR_TOKEN, BatchStream, assert_batch_equal, open_channel
from conftest import SMALL_CONFIG
from gmmserve.loader import GMMDataLoader
from gmmserve.service import BackgroundServer, ServerSettings
from gmmserve_client import (
    Aborted,
    Batch,
    Client,
    FailedPrecondition,
    Session,
)
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from gmmserve_proto.v1 import gmmserve_pb2_grpc as pb_grpc

BATCH_SIZE = 3
SAMPLES_PER_EPOCH = 30  # 10 batches per epoch
SEED = 5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    settings = ServerSettings(port=0, data_dir=tmp_path, operator_token=OPERATOR_TOKEN)
    with BackgroundServer(settings) as running:
        yield running


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[Client]:
    with Client(
        f"127.0.0.1:{server.port}", timeout_s=30.0, operator_token=OPERATOR_TOKEN
    ) as connection:
        yield connection


@pytest.fixture
def stub(server: BackgroundServer) -> Iterator[Any]:
    channel = open_channel(server.port)
    yield pb_grpc.GmmServiceStub(channel)
    channel.close()


def local_loader() -> GMMDataLoader:
    return GMMDataLoader(
        dict(SMALL_CONFIG),
        batch_size=BATCH_SIZE,
        num_samples=SAMPLES_PER_EPOCH,
        base_seed=SEED,
        loader_id="train",
    )


def create(client: Client) -> Session:
    return client.create_session(
        SMALL_CONFIG,
        seed=SEED,
        loader_id="train",
        batch_size=BATCH_SIZE,
        samples_per_epoch=SAMPLES_PER_EPOCH,
    )


def create_raw(stub: Any) -> pb.SessionInfo:
    spec = pb.SessionSpec(
        config_json=json.dumps(SMALL_CONFIG),
        seed=SEED,
        loader_id="train",
        batch_size=BATCH_SIZE,
        samples_per_epoch=SAMPLES_PER_EPOCH,
    )
    request = pb.CreateSessionRequest(spec=spec)
    session: pb.SessionInfo = stub.CreateSession(request, timeout=30).session
    return session


def assert_matches_loader(batches: list[Batch], loader: GMMDataLoader) -> None:
    for batch in batches:
        epoch, index = divmod(batch.global_index, loader.batches_per_epoch)
        expected = loader.batch_at(epoch, index)
        for name, array in expected.arrays.items():
            got = batch.arrays[name]
            assert got.dtype == array.dtype, name
            assert got.tobytes() == np.ascontiguousarray(array).tobytes(), name


def test_concurrency_second_stream_refused(stub: Any) -> None:
    info = create_raw(stub)
    first = BatchStream(stub, session_id=info.session_id, window=1)
    assert first.next_batch().global_index == 0

    second = BatchStream(stub, session_id=info.session_id)
    error = second.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has open stream" in error.details()
    assert "takeover=true" in error.details()

    # The first stream carries on.
    first.ack(0)
    batch = first.next_batch()
    assert batch.global_index == 1
    assert_batch_equal(batch, local_loader().batch_at(0, 1))
    first.cancel()


def test_concurrency_takeover_aborts_first(stub: Any) -> None:
    info = create_raw(stub)
    first = BatchStream(stub, session_id=info.session_id, window=2)
    assert first.next_batch().global_index == 0
    assert first.next_batch().global_index == 1
    first.ack(0)

    # StreamStart with takeover ends the first stream once its Ack is
    # committed, then starts at the committed cursor.
    second = BatchStream(stub, session_id=info.session_id, takeover=True, window=1)
    batch = second.next_batch()
    error = first.finish()
    assert error is not None
    assert error.code() == grpc.StatusCode.ABORTED
    assert "taken over by stream" in error.details()
    assert error.details().endswith("the committed cursor is at batch 1")
    # The second stream started after the Ack of batch 0 was committed.
    assert batch.global_index == 1
    assert_batch_equal(batch, local_loader().batch_at(0, 1))
    second.cancel()


def test_concurrency_client_takeover(client: Client) -> None:
    session = create(client)
    first = session.batches(window=1)
    assert next(first).global_index == 0
    with pytest.raises(FailedPrecondition, match="already has open stream"):
        next(session.batches())
    with session.batches(takeover=True, max_batches=2) as second:
        batches = list(second)
    # In auto mode the first stream acknowledges batch 0 only on its next
    # request, so the takeover starts at the committed cursor 0.
    assert [batch.global_index for batch in batches] == [0, 1]
    assert_matches_loader(batches, local_loader())
    with pytest.raises(Aborted, match="taken over"):
        next(first)
    assert session.position.global_index == 2


def test_concurrency_hammer_one_session(client: Client) -> None:
    session = create(client)
    info = session.info()
    loader = local_loader()
    errors: list[BaseException] = []
    received: list[Batch] = []
    lock = threading.Lock()
    tolerated = (Aborted, FailedPrecondition)

    def guarded(work: Callable[[random.Random], None], seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            try:
                work(rng)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        return run

    def stream(rng: random.Random) -> None:
        handle = client.session(session.id)
        for _ in range(12):
            try:
                with handle.batches(
                    max_batches=rng.randint(1, 4), window=2, takeover=rng.random() < 0.5
                ) as batches:
                    for batch in batches:
                        with lock:
                            received.append(batch)
            except tolerated:
                pass

    def snapshot(rng: random.Random) -> None:
        handle = client.session(session.id)
        for index in range(15):
            handle.snapshot(label=f"hammer-{index}")

    def restore(rng: random.Random) -> None:
        handle = client.session(session.id)
        for _ in range(10):
            snapshots = handle.list_snapshots()
            if snapshots and rng.random() < 0.7:
                handle.restore(snapshot_id=rng.choice(snapshots).snapshot_id)
            else:
                local = local_loader()
                local.seek(rng.randrange(3), rng.randrange(10))
                handle.restore(state=local.state_dict())

    workers = [
        threading.Thread(target=guarded(stream, 1)),
        threading.Thread(target=guarded(stream, 2)),
        threading.Thread(target=guarded(snapshot, 3)),
        threading.Thread(target=guarded(restore, 4)),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []

    # Every batch received, whichever stream and position it came from,
    # equals the local loader's batch at its index.
    assert received
    assert_matches_loader(received, loader)

    # Every snapshot is a consistent state of this session.
    snapshots = session.list_snapshots()
    assert len(snapshots) == 15
    for snapshot in snapshots:
        document = json.loads(snapshot.state_json)
        state = document["loader_state"]
        index = state["current_epoch"] * 10 + state["current_batch"]
        assert index == snapshot.position.global_index
        assert snapshot.fingerprint == info.fingerprint
        check = local_loader()
        check.restore_state(document)
        assert check.current_epoch * 10 + check.current_batch == index

    # The final cursor is where a new stream starts, and that stream
    # returns the loader's batches from there.
    cursor = session.position.global_index
    with session.batches(max_batches=4) as final:
        batches = list(final)
    assert [batch.global_index for batch in batches] == list(range(cursor, cursor + 4))
    assert_matches_loader(batches, loader)
    assert session.position.global_index == cursor + 4

    # Restoring any snapshot moves the cursor exactly there.
    chosen = snapshots[len(snapshots) // 2]
    restored = session.restore(snapshot_id=chosen.snapshot_id)
    assert restored.position.global_index == chosen.position.global_index


def test_concurrency_creates_get_distinct_seeds(client: Client) -> None:
    config = {**SMALL_CONFIG, "random_seed": None}

    def create_unseeded(_: int) -> tuple[str, int, str, str | None]:
        session = client.create_session(config, batch_size=2, samples_per_epoch=4)
        info = session.info()
        return session.id, info.seed, info.fingerprint, session.token

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(create_unseeded, range(48)))
    ids = {result[0] for result in results}
    seeds = {result[1] for result in results}
    fingerprints = {result[2] for result in results}
    tokens = {result[3] for result in results}
    assert len(ids) == 48
    assert len(seeds) == 48
    assert len(fingerprints) == 48
    assert len(tokens) == 48
    assert None not in tokens
