"""Measure generate_batch speed against the cost of its normal draws.

For every bundled experiment config, and for ``standard`` in each control
mode, the script times ``generate_batch`` at one batch size and, in the same
round, the floor: numpy drawing the same number of float32 standard normals
(B * N * D) with a Philox bit generator. Rounds alternate generation and
floor so both see the same machine load, and each figure is the median over
rounds. The ratio is floor time / generation time, so 1.0 means generation
costs no more than its own normal draws.

Run from the repository root::

    .venv/bin/python scripts/bench_generator.py --batch-size 64 --rounds 30
    .venv/bin/python scripts/bench_generator.py --profile

``--profile`` also prints the median time of each stage of a batch (stream
setup, parameter draws, noise levels, labels, points) for every row.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gmmserve import generator
from gmmserve.config import DataConfig, experiment_config, experiment_names, load_config
from gmmserve.errors import LegacyKeyWarning

_SEED = 20240601
_LOADER_ID = "bench"


@dataclass(frozen=True)
class _Row:
    name: str
    mode: str
    points: int
    generation_s: float
    floor_s: float

    @property
    def ratio(self) -> float:
        return self.floor_s / self.generation_s


def _configs() -> list[tuple[str, DataConfig]]:
    """Return (label, config) for each bundled config and standard per mode."""
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyKeyWarning)
        for name in experiment_names():
            rows.append((name, load_config(name)))
        standard = experiment_config("standard")
        rows.append(
            ("standard", load_config({**standard, "control_mode": "mi_factor"}))
        )
        mi = {"type": "uniform", "min": 0.2, "max": 1.2}
        rows.append(
            ("standard", load_config({**standard, "control_mode": "mi", "mi_params": mi}))
        )
        rows.append(("standard", load_config({**standard, "estimate_mi": True})))
    return rows


def _time(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _measure(
    name: str, config: DataConfig, batch_size: int, rounds: int
) -> _Row:
    """Time generation and the floor in alternating rounds; return medians."""
    floor_rng = np.random.Generator(np.random.Philox(_SEED))
    generation, floor = [], []
    points = 0
    # Round 0 warms caches (quadrature rules, pmf tables) and is discarded.
    for index in range(rounds + 1):
        batch = None

        def generate() -> None:
            nonlocal batch
            batch = generator.generate_batch(
                config, _SEED, _LOADER_ID, 0, index, batch_size
            )

        elapsed = _time(generate)
        assert batch is not None
        shape = batch.data.shape
        floor_elapsed = _time(lambda: floor_rng.standard_normal(shape, dtype=np.float32))
        if index == 0:
            continue
        generation.append(elapsed)
        floor.append(floor_elapsed)
        points += shape[0] * shape[1]
    mode = config.model.control_mode
    if mode == "snr" and config.model.estimate_mi:
        mode = "snr+estimate_mi"
    return _Row(
        name=name,
        mode=mode,
        points=points // rounds,
        generation_s=statistics.median(generation),
        floor_s=statistics.median(floor),
    )


def _profile(config: DataConfig, batch_size: int, rounds: int) -> dict[str, float]:
    """Return the median seconds of each stage of a batch."""
    stages: dict[str, list[float]] = {
        "streams": [], "parameters": [], "noise levels": [], "labels": [],
        "points": [],
    }
    for index in range(rounds + 1):
        start = time.perf_counter()
        params = generator._stream(_SEED, _LOADER_ID, 0, index, generator._PARAMETER_STREAM)
        points_rng = generator._stream(_SEED, _LOADER_ID, 0, index, generator._POINT_STREAM)
        after_streams = time.perf_counter()
        parameters = generator._draw_parameters(config, params, batch_size, 256, 100_000)
        after_parameters = time.perf_counter()
        levels = generator._noise_levels(config, parameters)
        after_levels = time.perf_counter()
        labels = generator._draw_labels(
            points_rng, parameters.weights, parameters.n_points
        )
        after_labels = time.perf_counter()
        generator._place_points(points_rng, parameters, labels, levels["noise_std"])
        end = time.perf_counter()
        if index == 0:
            continue
        stages["streams"].append(after_streams - start)
        stages["parameters"].append(after_parameters - after_streams)
        stages["noise levels"].append(after_levels - after_parameters)
        stages["labels"].append(after_labels - after_levels)
        stages["points"].append(end - after_labels)
    return {stage: statistics.median(values) for stage, values in stages.items()}


def main() -> None:
    """Print one row per config and mode, then the MI-mode to SNR-mode ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-size", type=int, default=64, help="datasets per batch (B)"
    )
    parser.add_argument(
        "--rounds", type=int, default=30, help="timed batches per row"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print per-stage times in ms"
    )
    args = parser.parse_args()

    print(
        f"batch size {args.batch_size}, {args.rounds} rounds, medians; "
        "ratio = floor time / generation time"
    )
    header = (
        f"{'config':<22}{'mode':<17}{'points':>8}{'gen ms':>9}{'floor ms':>10}"
        f"{'Mpoints/s':>11}{'ratio':>8}"
    )
    print(header)
    rows = []
    for name, config in _configs():
        row = _measure(name, config, args.batch_size, args.rounds)
        rows.append(row)
        print(
            f"{row.name:<22}{row.mode:<17}{row.points:>8}"
            f"{row.generation_s * 1e3:>9.2f}{row.floor_s * 1e3:>10.2f}"
            f"{row.points / row.generation_s / 1e6:>11.2f}{row.ratio:>8.2f}"
        )
        if args.profile:
            stages = _profile(config, args.batch_size, args.rounds)
            print(
                "    stages ms: "
                + ", ".join(f"{stage} {value * 1e3:.2f}" for stage, value in stages.items())
            )

    snr = next(row for row in rows if row.name == "standard" and row.mode == "snr")
    for row in rows:
        if row.name == "standard" and row.mode != "snr":
            speed = snr.generation_s / row.generation_s
            print(f"standard {row.mode}: {speed:.2f}x the speed of standard snr")


if __name__ == "__main__":
    main()
