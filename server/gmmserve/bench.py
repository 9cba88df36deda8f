"""``gmmserve bench``: streaming throughput beside two baselines from the same run.

Three measurements of the same batches, one after another:

1. service: a client streams batches from a ``gmmserve serve`` subprocess
   over loopback, decoding and verifying each one (the path a trainer
   takes);
2. in-process loader: ``GMMDataLoader.batch_at`` generates the same
   batches in this process, with no network;
3. bare gRPC: a minimal gRPC server in a subprocess streams byte messages
   of the same sizes as the service's messages, with no generation and no
   decoding, which bounds what the transport allows.

Each measurement stops after ``max_batches`` batches or ``max_seconds``
seconds, whichever comes first. The baselines replay the batches the
service measurement received, so the ratios compare equal work. A ratio
above 1 means the service was faster than that baseline.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.synchronize
import queue
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from gmmserve_client import Client
from rich.console import Console
from rich.table import Table

from gmmserve.demo import ServerProcess
from gmmserve.loader import GMMDataLoader

__all__ = ["BenchResult", "BenchSettings", "Measurement", "run_bench"]

_LOGGER = logging.getLogger(__name__)

_BARE_METHOD = "/gmmserve.bench.BareBytes/Stream"
_BARE_STARTUP_TIMEOUT_S = 30.0
# Batches streamed before the measured ones, so connection setup and first
# imports are not timed. They come after the measured indices, so the
# measured batches are new to the server.
_WARMUP_BATCHES = 2
_MEGABYTE = 1e6
# Added to max_seconds for each stream's deadline, so a stalled server fails
# the run instead of hanging it.
_STREAM_TIMEOUT_MARGIN_S = 60.0


@dataclass(frozen=True)
class BenchSettings:
    """Settings of a benchmark run: the stream measured and its bounds.

    Attributes
    ----------
    config : str
        Bundled experiment config name.
    batch_size : int
        Datasets per batch.
    max_batches : int
        Batches per measurement, at most.
    max_seconds : float
        Seconds per measurement, at most.
    window : int
        Stream window in batches.
    samples_per_epoch : int
        Datasets per epoch of the benchmark session.
    seed : int
        Base seed of the session.
    """

    config: str = "standard"
    batch_size: int = 64
    max_batches: int = 200
    max_seconds: float = 10.0
    window: int = 8
    samples_per_epoch: int = 100_000
    seed: int = 7

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, got {self.batch_size}")
        if self.max_batches < 1:
            raise ValueError(f"max_batches must be 1 or more, got {self.max_batches}")
        if not self.max_seconds > 0:
            raise ValueError(
                f"max_seconds must be greater than 0, got {self.max_seconds}"
            )
        if self.window < 1:
            raise ValueError(f"window must be 1 or more, got {self.window}")


@dataclass(frozen=True)
class Measurement:
    """Batches and bytes moved in a measured time."""

    name: str
    batches: int
    bytes: int
    seconds: float

    @property
    def batches_per_s(self) -> float:
        return self.batches / self.seconds

    @property
    def megabytes_per_s(self) -> float:
        return self.bytes / _MEGABYTE / self.seconds


@dataclass(frozen=True)
class BenchResult:
    """The three measurements and the service's throughput ratios."""

    service: Measurement
    loader: Measurement
    bare_grpc: Measurement
    # Fewest and most datasets in one streamed batch. They differ from the
    # batch size when an epoch holds fewer datasets than a batch, or when the
    # last batch of an epoch is short.
    datasets_per_batch: tuple[int, int] = (0, 0)

    @property
    def service_over_loader(self) -> float:
        return self.service.batches_per_s / self.loader.batches_per_s

    @property
    def service_over_bare_grpc(self) -> float:
        return self.service.batches_per_s / self.bare_grpc.batches_per_s


def _measure_service(
    settings: BenchSettings, work_dir: Path
) -> tuple[Measurement, list[int], list[int], list[int]]:
    """Stream from a server subprocess.

    Returns the measurement, and the global index, serialized size and
    dataset count of each batch received.
    """
    indices: list[int] = []
    sizes: list[int] = []
    dataset_counts: list[int] = []
    with (
        ServerProcess(work_dir / "data", work_dir / "server.log") as server,
        Client(server.target, timeout_s=60.0) as client,
    ):
        session = client.create_session(
            experiment=settings.config,
            seed=settings.seed,
            loader_id="bench",
            batch_size=settings.batch_size,
            samples_per_epoch=settings.samples_per_epoch,
        )
        warmup_start = settings.max_batches
        stream_timeout_s = settings.max_seconds + _STREAM_TIMEOUT_MARGIN_S
        with session.batches(
            start=warmup_start, max_batches=_WARMUP_BATCHES, timeout_s=stream_timeout_s
        ) as stream:
            for _ in stream:
                pass
        started = time.perf_counter()
        deadline = started + settings.max_seconds
        with session.batches(
            start=0,
            max_batches=settings.max_batches,
            window=settings.window,
            timeout_s=stream_timeout_s,
        ) as stream:
            for batch in stream:
                indices.append(batch.global_index)
                sizes.append(batch.wire_bytes)
                dataset_counts.append(int(batch.data.shape[0]))
                if time.perf_counter() >= deadline:
                    break
            elapsed = time.perf_counter() - started
        session.close()
    measurement = Measurement(
        "service stream (client decodes, verifies)", len(indices), sum(sizes), elapsed
    )
    return measurement, indices, sizes, dataset_counts


def _measure_loader(settings: BenchSettings, indices: list[int]) -> Measurement:
    with warnings.catch_warnings():
        # The bundled configs carry legacy keys that change nothing.
        warnings.simplefilter("ignore")
        loader = GMMDataLoader(
            settings.config,
            batch_size=settings.batch_size,
            num_samples=settings.samples_per_epoch,
            base_seed=settings.seed,
            loader_id="bench",
        )
    loader.batch_at(0, (settings.max_batches + 1) % loader.batches_per_epoch)
    total_bytes = 0
    started = time.perf_counter()
    for index in indices:
        epoch, batch_index = divmod(index, loader.batches_per_epoch)
        batch = loader.batch_at(epoch, batch_index)
        total_bytes += sum(array.nbytes for array in batch.arrays.values())
    elapsed = time.perf_counter() - started
    return Measurement(
        "in-process loader (no network)", len(indices), total_bytes, elapsed
    )


async def _serve_bare_bytes(
    port_queue: multiprocessing.Queue[int], stop: multiprocessing.synchronize.Event
) -> None:
    payloads: dict[int, bytes] = {}

    async def stream(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for size in np.frombuffer(request, dtype="<u4").tolist():
            payload = payloads.get(size)
            if payload is None:
                payload = payloads[size] = bytes(size)
            yield payload

    handler = grpc.method_handlers_generic_handler(
        "gmmserve.bench.BareBytes",
        {"Stream": grpc.unary_stream_rpc_method_handler(stream)},
    )
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_queue.put(port)
    while not stop.is_set():
        await asyncio.sleep(0.05)
    await server.stop(0)


def _bare_bytes_server_main(
    port_queue: multiprocessing.Queue[int], stop: multiprocessing.synchronize.Event
) -> None:
    asyncio.run(_serve_bare_bytes(port_queue, stop))


def _measure_bare_grpc(sizes: list[int]) -> Measurement:
    """Stream byte messages of the given sizes from a bare gRPC subprocess."""
    context = multiprocessing.get_context("spawn")
    port_queue: multiprocessing.Queue[int] = context.Queue()
    stop = context.Event()
    process = context.Process(
        target=_bare_bytes_server_main, args=(port_queue, stop), daemon=True
    )
    process.start()
    try:
        try:
            port = port_queue.get(timeout=_BARE_STARTUP_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(
                f"bare gRPC server did not start within {_BARE_STARTUP_TIMEOUT_S} s"
            ) from None
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                _BARE_METHOD
            )
            warmup = np.full(_WARMUP_BATCHES, sizes[0], dtype="<u4").tobytes()
            for _ in call(warmup, timeout=60.0):
                pass
            request = np.asarray(sizes, dtype="<u4").tobytes()
            received = 0
            count = 0
            started = time.perf_counter()
            for message in call(request, timeout=600.0):
                received += len(message)
                count += 1
            elapsed = time.perf_counter() - started
    finally:
        stop.set()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
    return Measurement("bare gRPC byte stream (same sizes)", count, received, elapsed)


def _batch_label(settings: BenchSettings, result: BenchResult) -> str:
    """Describe the batches measured, naming the batch size when they differ."""
    low, high = result.datasets_per_batch
    unit = "dataset" if high == 1 else "datasets"
    counted = f"{low} {unit}" if low == high else f"{low} to {high} {unit}"
    label = f"{counted} per batch"
    if low != settings.batch_size or high != settings.batch_size:
        epoch = settings.samples_per_epoch
        epoch_unit = "dataset" if epoch == 1 else "datasets"
        label += f" (batch size {settings.batch_size}, {epoch} {epoch_unit} per epoch)"
    return label


def _results_table(settings: BenchSettings, result: BenchResult) -> Table:
    table = Table(
        title=(
            f"{settings.config}: {_batch_label(settings, result)}, window "
            f"{settings.window}, loopback"
        )
    )
    for column in ("measurement", "batches", "MB", "seconds", "batches/s", "MB/s"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for measurement in (result.service, result.loader, result.bare_grpc):
        table.add_row(
            measurement.name,
            str(measurement.batches),
            f"{measurement.bytes / _MEGABYTE:.2f}",
            f"{measurement.seconds:.3f}",
            f"{measurement.batches_per_s:.1f}",
            f"{measurement.megabytes_per_s:.1f}",
        )
    return table


def run_bench(settings: BenchSettings, console: Console) -> BenchResult:
    """Run the three measurements and print a table and the two ratios.

    Raises
    ------
    RuntimeError
        When a server subprocess does not start.
    """
    with tempfile.TemporaryDirectory(prefix="gmmserve-bench-") as temporary:
        console.log("measuring the service stream")
        service, indices, sizes, dataset_counts = _measure_service(
            settings, Path(temporary)
        )
    console.log("measuring the in-process loader")
    loader = _measure_loader(settings, indices)
    console.log("measuring the bare gRPC byte stream")
    bare = _measure_bare_grpc(sizes)
    result = BenchResult(
        service=service,
        loader=loader,
        bare_grpc=bare,
        datasets_per_batch=(min(dataset_counts), max(dataset_counts)),
    )
    console.print(_results_table(settings, result))
    console.print(
        "MB counts serialized messages for the streams and array bytes for the loader."
    )
    console.print(
        f"ratio service / in-process loader: {result.service_over_loader:.3f}",
        highlight=False,
    )
    console.print(
        f"ratio service / bare gRPC: {result.service_over_bare_grpc:.3f}",
        highlight=False,
    )
    return result
