"""Measure generate_batch speed against the cost of its normal draws.

For every bundled experiment config, and for ``standard`` in each control
mode, the script times ``generate_batch`` at one batch size. In the same
round it times the floor: numpy drawing the same number of float32 standard
normals (B * N * D) with a Philox bit generator. Rounds alternate generation
and floor so both see the same machine load, times are process CPU time
(less sensitive than wall time to other jobs on the machine), and each
figure is the median over rounds. The ratio is floor time / generation
time, so 1.0 means generation costs no more than its own normal draws.

Run from the repository root::

    .venv/bin/python scripts/bench_generator.py --batch-size 64 --rounds 30
    .venv/bin/python scripts/bench_generator.py --profile

``--profile`` also prints the median time of each stage of a batch (stream
setup, parameter draws, noise levels, labels, points) for every row.

``--accuracy`` prints instead the MI solver's accuracy table: for K in
{2, 5, 10, 20}, D in {2, 3, 8} and targets from 0.001 to 0.999 times H(w),
the MI at the solved sigma measured independently (1-D adaptive quadrature
for K = 2, else a 2 * 10^6-point Monte Carlo estimate with its standard
error). ``--estimator`` prints the MI estimate's error and cost per rule
size against a much larger rule of the same kind.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from gmmserve import generator, noise
from gmmserve.config import DataConfig, experiment_config, experiment_names, load_config
from gmmserve.errors import LegacyKeyWarning
from scipy import integrate, stats

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
            (
                "standard",
                load_config({**standard, "control_mode": "mi", "mi_params": mi}),
            )
        )
        rows.append(("standard", load_config({**standard, "estimate_mi": True})))
    return rows


def _measure(name: str, config: DataConfig, batch_size: int, rounds: int) -> _Row:
    """Time generation and the floor in alternating rounds; return medians."""
    floor_rng = np.random.Generator(np.random.Philox(_SEED))
    generation, floor = [], []
    points = 0
    # Round 0 warms caches (quadrature rules, pmf tables) and is discarded.
    for index in range(rounds + 1):
        start = time.process_time()
        batch = generator.generate_batch(
            config, _SEED, _LOADER_ID, 0, index, batch_size
        )
        elapsed = time.process_time() - start
        shape = batch.data.shape
        del batch
        start = time.process_time()
        floor_rng.standard_normal(shape, dtype=np.float32)
        floor_elapsed = time.process_time() - start
        if index == 0:
            continue
        generation.append(elapsed)
        floor.append(floor_elapsed)
        points += shape[0] * shape[1]
    mode: str = config.model.control_mode
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
        "streams": [],
        "parameters": [],
        "noise levels": [],
        "labels": [],
        "points": [],
    }
    for index in range(rounds + 1):
        start = time.process_time()
        params = generator._stream(
            _SEED, _LOADER_ID, 0, index, generator._PARAMETER_STREAM
        )
        points_rng = generator._stream(
            _SEED, _LOADER_ID, 0, index, generator._POINT_STREAM
        )
        after_streams = time.process_time()
        parameters = generator._draw_parameters(
            config, params, batch_size, 256, 100_000
        )
        after_parameters = time.process_time()
        levels = generator._noise_levels(config, parameters)
        after_levels = time.process_time()
        labels = generator._draw_labels(
            points_rng, parameters.weights, parameters.n_points
        )
        after_labels = time.process_time()
        generator._place_points(points_rng, parameters, labels, levels["noise_std"])
        end = time.process_time()
        if index == 0:
            continue
        stages["streams"].append(after_streams - start)
        stages["parameters"].append(after_parameters - after_streams)
        stages["noise levels"].append(after_levels - after_parameters)
        stages["labels"].append(after_labels - after_levels)
        stages["points"].append(end - after_labels)
    return {stage: statistics.median(values) for stage, values in stages.items()}


_ACCURACY_FRACTIONS = (0.001, 0.05, 0.25, 0.5, 0.75, 0.95, 0.999)


def _two_cluster_mi(weights: np.ndarray, means: np.ndarray, sigma: float) -> float:
    """Return I(X; Y) of a two-cluster mixture by adaptive 1-D quadrature."""
    distance = float(np.linalg.norm(means[1] - means[0])) / sigma
    total = 0.0
    for k, j in ((0, 1), (1, 0)):

        def integrand(z: float, k: int = k, j: int = j) -> float:
            log_sum = np.logaddexp(
                np.log(weights[k]), np.log(weights[j]) - distance**2 / 2 - distance * z
            )
            return -float(log_sum) * float(stats.norm.pdf(z))

        value, _ = integrate.quad(
            integrand, -40, 40, epsabs=1e-14, epsrel=1e-12, limit=400
        )
        total += weights[k] * value
    return total


def _accuracy_table() -> None:
    """Print target, achieved MI and relative error over the (K, D) grid."""
    print(
        f"{'K':>3}{'D':>3}{'f':>7}{'target':>12}{'measured':>12}{'rel err':>10}"
        f"{'std err':>10}{'reference':>11}"
    )
    worst = 0.0
    for clusters in (2, 5, 10, 20):
        for dim in (2, 3, 8):
            rng = np.random.default_rng(10_000 + 100 * clusters + dim)
            weights = rng.dirichlet(np.ones(clusters))
            means = rng.standard_normal((clusters, dim)).astype(np.float32)
            means64 = means.astype(np.float64)
            h = float(noise.entropy(weights[None])[0])
            for fraction in _ACCURACY_FRACTIONS:
                target = np.array([fraction * h])
                sigma, _ = noise.noise_std_for_mi(weights[None], means64[None], target)
                if clusters == 2:
                    measured = _two_cluster_mi(weights, means64, float(sigma[0]))
                    error, reference = 0.0, "quad"
                else:
                    measured, error = noise.mutual_information_monte_carlo(
                        weights,
                        means64,
                        float(sigma[0]),
                        2_000_000 // clusters,
                        np.random.default_rng(rng.integers(2**63)),
                    )
                    reference = "MC 2e6"
                relative = (measured - target[0]) / target[0]
                worst = max(worst, abs(relative))
                print(
                    f"{clusters:>3}{dim:>3}{fraction:>7.3f}{target[0]:>12.6g}"
                    f"{measured:>12.6g}{relative:>10.2e}{error / target[0]:>10.1e}"
                    f"{reference:>11}"
                )
    print(f"largest |relative error|: {worst:.2e}")


def _estimator_table() -> None:
    """Print the estimate's error and cost per rule against a larger rule.

    Rows cover each rank's coarse and fine rule and, for comparison, plain
    antithetic Monte Carlo with 2048 vectors. Errors are the largest
    relative difference over 64 mixtures at SNRs of -10, 0, 10 and 20 dB.
    """
    cases = [(2, 2), (5, 2), (7, 2), (5, 3), (10, 8)]
    print(
        f"{'K':>3}{'D':>3}{'rank':>5}  {'rule':<24}{'nodes':>7}{'max rel err':>13}{'ms/eval B=64':>14}"
    )
    for clusters, dim in cases:
        rng = np.random.default_rng(300 + clusters * 10 + dim)
        weights = rng.dirichlet(np.ones(clusters), size=64)
        means = rng.standard_normal((64, clusters, dim))
        coords = noise._reduce_rank(means)
        rank = coords.shape[2]
        s2 = noise.signal_variance(weights, means)
        reference_rule = _reference_rule(rank)
        rules = [
            ("coarse", noise._rule(rank, False)),
            ("fine", noise._rule(rank, True)),
            ("antithetic MC 2048", _antithetic_rule(rank, 2048)),
        ]
        for label, rule in rules:
            worst = 0.0
            elapsed = []
            for snr_db in (-10.0, 0.0, 10.0, 20.0):
                sigma = np.sqrt(s2 / 10 ** (snr_db / 10))
                exact = _evaluate_with(reference_rule, weights, coords, sigma)
                start = time.process_time()
                estimate = _evaluate_with(rule, weights, coords, sigma)
                elapsed.append(time.process_time() - start)
                worst = max(worst, float(np.max(np.abs(estimate - exact) / exact)))
            print(
                f"{clusters:>3}{dim:>3}{rank:>5}  {label:<24}{len(rule.weights):>7}"
                f"{worst:>13.1e}{statistics.median(elapsed) * 1e3:>14.2f}"
            )


def _evaluate_with(
    rule: Any, weights: np.ndarray, coords: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    workspace = noise._Workspace()
    size = max(1, noise._WORK_ELEMENTS // (weights.shape[1] ** 2 * len(rule.weights)))
    result = np.empty(len(weights))
    for start in range(0, len(weights), size):
        group = slice(start, start + size)
        geometry = noise._Geometry(weights[group], coords[group], rule)
        result[group], _ = geometry.evaluate(sigma[group], False, workspace)
    return result


def _reference_rule(rank: int) -> Any:
    """Return a rule much larger than the fine rule of the same kind."""
    if rank <= 3:
        points = {1: 200, 2: 60, 3: 24}[rank]
        x, w = np.polynomial.hermite_e.hermegauss(points)
        w = w / w.sum()
        axes = np.meshgrid(*([x] * rank), indexing="ij")
        axis_weights = np.meshgrid(*([w] * rank), indexing="ij")
        nodes = np.stack([a.ravel() for a in axes], axis=1)
        weights = np.prod(np.stack([a.ravel() for a in axis_weights], axis=1), axis=1)
        return noise._Rule(nodes=nodes, weights=weights)
    return _antithetic_rule(rank, 2**17, sobol=True)


def _antithetic_rule(rank: int, count: int, sobol: bool = False) -> Any:
    """Return mirrored normal vectors: Sobol points (whitened) or plain draws."""
    if sobol:
        from scipy.special import ndtri
        from scipy.stats import qmc

        half = ndtri(qmc.Sobol(rank, scramble=True, seed=4242).random(count // 2))
    else:
        half = np.random.default_rng(4242).standard_normal((count // 2, rank))
    nodes = np.concatenate([half, -half])
    return noise._Rule(nodes=nodes, weights=np.full(count, 1.0 / count))


def main() -> None:
    """Print one row per config and mode, then the MI-mode to SNR-mode ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-size", type=int, default=64, help="datasets per batch (B)"
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed batches per row")
    parser.add_argument(
        "--profile", action="store_true", help="also print per-stage times in ms"
    )
    parser.add_argument(
        "--accuracy", action="store_true", help="print the MI solver accuracy table"
    )
    parser.add_argument(
        "--estimator",
        action="store_true",
        help="print MI estimate error and cost per rule",
    )
    args = parser.parse_args()
    if args.accuracy:
        _accuracy_table()
        return
    if args.estimator:
        _estimator_table()
        return

    print(
        f"batch size {args.batch_size}, {args.rounds} rounds, medians of process "
        "CPU time; ratio = floor time / generation time"
    )
    header = (
        f"{'config':<22}{'mode':<17}{'points':>8}{'gen ms':>9}{'floor ms':>10}"
        f"{'Mpts/CPU-s':>11}{'ratio':>8}"
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
                + ", ".join(
                    f"{stage} {value * 1e3:.2f}" for stage, value in stages.items()
                )
            )

    snr = next(row for row in rows if row.name == "standard" and row.mode == "snr")
    for row in rows:
        if row.name == "standard" and row.mode != "snr":
            speed = snr.generation_s / row.generation_s
            print(f"standard {row.mode}: {speed:.2f}x the speed of standard snr")


if __name__ == "__main__":
    main()
