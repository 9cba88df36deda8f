"""One GMM batch as a pure function of its position.

``generate_batch(config, seed, loader_id, epoch, batch_index, batch_size)``
draws everything from two counter-based Philox streams keyed by those
values, one for the mixture parameters and one for the points, so:

- no random state is carried from one batch to the next, and a loader's
  whole state is its position;
- seeking to any batch costs one key derivation;
- any process computes the same batch, bit for bit, from the same inputs.

Order of the draws within a batch (parameter stream, then point stream):

1. N points per item from ``sample_count_distribution``, once per batch;
2. K clusters from ``cluster_params``, once per batch;
3. weights w ~ Dirichlet(alpha * ones(K)) per item, shape (B, K);
4. centers ~ N(0, 1) per entry, shape (B, K, D), rounded to float32;
5. the control value (SNR in dB, MI factor or MI target): one per item when
   ``vary_parameter_in_batch`` is true, else one shared by the batch;
6. on the point stream: N iid labels per item from Categorical(w), one
   float64 uniform each. Then float32 unit normal noise z of shape
   (B, N, D), and the points are float32(center) + float32(sigma) * z.

Centers are rounded to float32 before the noise level is computed, so the
float32 centers a client receives give back ``snr_db`` and ``noise_std`` in
float64 to within a few units in the last place. The noise level itself comes from :mod:`gmmserve.noise`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gmmserve import noise
from gmmserve.config import DEFAULT_LIMITS, DataConfig

__all__ = [
    "ARRAY_NAMES",
    "Batch",
    "derive_seed",
    "generate_batch",
    "loader_key",
]

# Every array of a batch, in wire and fingerprint order.
ARRAY_NAMES = (
    "data",
    "centers",
    "labels",
    "weights",
    "noise_std",
    "snr_db",
    "mi",
    "mi_factor",
    "mi_target",
)

_PARAMETER_STREAM = 0
_POINT_STREAM = 1
# Up to this many clusters, labels are found by one comparison pass per
# cluster; above it, by a binary search per item.
_LABEL_LOOP_MAX_CLUSTERS = 32
# float32 values gathered per block when adding centers to points (64 KiB).
_GATHER_BLOCK_VALUES = 16 * 1024


def loader_key(loader_id: str) -> int:
    """Return a 64-bit stream key for ``loader_id``."""
    digest = hashlib.blake2b(loader_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive_seed(
    base_seed: int | None, loader_id: str, random_seed: int | None
) -> int | None:
    """Return the effective seed of a loader.

    With a base seed: base_seed + (int(md5(loader_id), 16) mod 1000000), so
    "train" adds 197604 and "val" 304383. Without one: the config's
    ``random_seed``, which may be None (the caller then picks one).
    """
    if base_seed is None:
        return random_seed
    offset = int(hashlib.md5(loader_id.encode("utf-8")).hexdigest(), 16) % 1_000_000
    return base_seed + offset


def _stream(
    seed: int, loader_id: str, epoch: int, batch_index: int, stream: int
) -> np.random.Generator:
    sequence = np.random.SeedSequence(
        entropy=seed, spawn_key=(loader_key(loader_id), epoch, batch_index, stream)
    )
    return np.random.Generator(np.random.Philox(sequence))


@dataclass(frozen=True)
class Batch:
    """One generated batch: B datasets of N points in D dimensions.

    Attributes
    ----------
    arrays : dict of str to ndarray
        ``data`` float32 (B, N, D); ``centers`` float32 (B, K, D);
        ``labels`` int64 (B, N); ``weights`` float64 (B, K); and float64
        (B,) arrays ``noise_std``, ``snr_db``, ``mi``, ``mi_factor`` and
        ``mi_target``.
    control_mode : str
    """

    arrays: dict[str, NDArray[Any]]
    control_mode: str

    @property
    def data(self) -> NDArray[np.float32]:
        return self.arrays["data"]

    def targets(self) -> dict[str, Any]:
        """Return the targets dict the loader yields, with per-item records."""
        targets: dict[str, Any] = {
            name: self.arrays[name] for name in ARRAY_NAMES if name != "data"
        }
        targets["params"] = [self._record(i) for i in range(len(self.data))]
        return targets

    def _record(self, item: int) -> dict[str, Any]:
        arrays = self.arrays
        return {
            "dim": int(arrays["data"].shape[2]),
            "n_clusters": int(arrays["centers"].shape[1]),
            "weights": arrays["weights"][item],
            "means": arrays["centers"][item].astype(np.float64),
            "snr_db": float(arrays["snr_db"][item]),
            "mi_target": float(arrays["mi_target"][item]),
            "mi_factor": float(arrays["mi_factor"][item]),
            "noise_std": float(arrays["noise_std"][item]),
            "estimated_mi": float(arrays["mi"][item]),
            "control_mode": self.control_mode,
        }

    def fingerprint(self) -> str:
        """Return "blake2b-256:" and the digest of every array, in order."""
        return fingerprint_arrays(self.arrays)


def fingerprint_arrays(arrays: dict[str, NDArray[Any]]) -> str:
    """Hash each array's name, dtype, shape and little-endian bytes, in order."""
    digest = hashlib.blake2b(digest_size=32)
    for name in ARRAY_NAMES:
        array = np.ascontiguousarray(arrays[name])
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header = f"{name}|{little.dtype.str}|{','.join(map(str, array.shape))}|"
        digest.update(header.encode())
        digest.update(little.tobytes())
    return "blake2b-256:" + digest.hexdigest()


def _to_count(values: NDArray[np.float64], low: int, high: int) -> int:
    """Convert a drawn point count: 1 when <= 0, else truncated, clipped."""
    value = float(values[0])
    count = 1 if value <= 0 else int(value)
    return min(max(count, low), high)


def _to_clusters(values: NDArray[np.float64], high: int) -> int:
    """Convert a drawn cluster count: round half to even, at least 1, clipped."""
    return min(max(int(np.round(values[0])), 1), high)


@dataclass(frozen=True)
class _Parameters:
    """Draws of the parameter stream for one batch."""

    n_points: int
    centers32: NDArray[np.float32]
    weights: NDArray[np.float64]
    control: NDArray[np.float64]


def _draw_parameters(
    config: DataConfig,
    params: np.random.Generator,
    batch_size: int,
    max_clusters: int,
    max_points: int,
) -> _Parameters:
    """Draw N, K, weights, centers and control values, in that order."""
    model = config.model
    n_points = _to_count(
        model.sample_count_distribution.sample(params, 1), 1, max_points
    )
    n_clusters = _to_clusters(model.cluster_params.sample(params, 1), max_clusters)
    if n_clusters == 1:
        # Dirichlet with one component is the point mass at 1, but numpy's
        # draw can return 1 - 2^-53, which would give a tiny nonzero signal.
        weights = np.ones((batch_size, 1))
    else:
        alpha = np.full(n_clusters, model.alpha_dirichlet)
        weights = params.dirichlet(alpha, size=batch_size)
    centers32 = params.standard_normal(
        (batch_size, n_clusters, model.dim), dtype=np.float32
    )
    control_spec = {
        "snr": model.snr_db_params,
        "mi_factor": model.mi_factor_params,
        "mi": model.mi_params,
    }[model.control_mode]
    if control_spec is None:
        raise ValueError("mi_params is required when control_mode is 'mi'")
    count = batch_size if model.vary_parameter_in_batch else 1
    draws = control_spec.sample(params, count)
    control = np.broadcast_to(draws, (batch_size,)).astype(np.float64)
    return _Parameters(n_points, centers32, weights, control)


def _noise_levels(
    config: DataConfig, parameters: _Parameters
) -> dict[str, NDArray[np.float64]]:
    """Compute noise_std, snr_db, mi, mi_factor and mi_target per item.

    Items with zero signal variance get noise_std 1.0, snr_db -inf, mi 0
    and mi_factor 0. Items with H(w) < noise.MIN_ENTROPY get mi 0 and
    mi_factor 0, and in MI modes noise_std 1.0 with the matching snr_db.
    In SNR mode ``mi`` and ``mi_factor`` are NaN unless the config sets
    ``estimate_mi``.
    """
    model = config.model
    weights = parameters.weights
    centers = parameters.centers32.astype(np.float64)
    control = parameters.control
    batch_size = len(weights)
    s2 = noise.signal_variance(weights, centers)
    h = noise.entropy(weights)
    degenerate = ~noise.solvable(weights, centers)

    if model.control_mode == "snr":
        # Only unbounded specs (normal) can draw outside the accepted range;
        # beyond it 10^(snr_db / 10) overflows or underflows float64.
        limit = DEFAULT_LIMITS.max_snr_db
        snr_db = np.clip(control, -limit, limit)
        sigma = noise.noise_std_for_snr(s2, snr_db)
        mi_target = np.full(batch_size, np.nan)
        if model.estimate_mi:
            mi = noise.mutual_information(weights, centers, sigma)
            mi_factor = _factor(mi, h)
        else:
            mi = np.full(batch_size, np.nan)
            mi_factor = np.full(batch_size, np.nan)
    else:
        if model.control_mode == "mi_factor":
            factor = np.clip(control, 0.0, 1.0)
            requested = factor * h
        else:
            requested = control
        mi_target = noise.clip_mi_target(requested, h)
        sigma, mi = noise.noise_std_for_mi(weights, centers, mi_target)
        with np.errstate(divide="ignore"):
            snr_db = 10.0 * np.log10(s2 / (sigma * sigma))
        mi_factor = factor if model.control_mode == "mi_factor" else _factor(mi, h)

    return {
        "noise_std": sigma,
        "snr_db": np.where(s2 > 0, snr_db, -np.inf),
        "mi": np.where(degenerate, 0.0, mi),
        "mi_factor": np.where(degenerate, 0.0, mi_factor),
        "mi_target": mi_target,
    }


def _factor(mi: NDArray[np.float64], h: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return clip(mi / H(w), 0, 1), and 0 where H(w) is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(h > 0, np.clip(mi / h, 0.0, 1.0), 0.0)


def _draw_labels(
    points_rng: np.random.Generator, weights: NDArray[np.float64], n_points: int
) -> NDArray[np.int64]:
    """Draw n_points iid labels per item from Categorical(weights[item]).

    Each label comes from one float64 uniform u in [0, 1): it is the number
    of cumulative sums w_0 + ... + w_k, k < K - 1, that are <= u. So
    P(label = k) is w_k up to float64 rounding, and the largest label is
    K - 1 even when the rounded sum of the weights falls short of 1.
    """
    batch_size, n_clusters = weights.shape
    # The uniforms are drawn into the memory of the int64 labels, which is
    # the same size, so no other (B, N) array is allocated.
    labels = np.empty((batch_size, n_points), dtype=np.int64)
    uniforms = labels.view(np.float64)
    points_rng.random(out=uniforms)
    edges = np.cumsum(weights, axis=1)[:, : n_clusters - 1]
    if n_clusters <= _LABEL_LOOP_MAX_CLUSTERS:
        # int8 counts are cheaper to accumulate and cannot overflow here.
        small = np.zeros((batch_size, n_points), dtype=np.int8)
        for k in range(n_clusters - 1):
            small += uniforms >= edges[:, k, None]
    else:
        small = np.empty((batch_size, n_points), dtype=np.int16)
        for item in range(batch_size):
            small[item] = np.searchsorted(edges[item], uniforms[item], side="right")
    labels[...] = small
    return labels


def _place_points(
    points_rng: np.random.Generator,
    parameters: _Parameters,
    labels: NDArray[np.int64],
    sigma: NDArray[np.float64],
) -> NDArray[np.float32]:
    """Draw the points: float32(center) + float32(sigma) * z, in float32.

    z is float32 standard normal of shape (B, N, D). ``labels`` is modified
    during the call and restored before it returns.
    """
    batch_size, n_clusters, dim = parameters.centers32.shape
    n_points = parameters.n_points
    data = points_rng.standard_normal((batch_size, n_points, dim), dtype=np.float32)
    data *= sigma.astype(np.float32)[:, None, None]
    rows = parameters.centers32.reshape(batch_size * n_clusters, dim)
    offsets = np.arange(batch_size, dtype=np.int64)[:, None] * n_clusters
    # The labels are shifted in place to row indexes of ``rows`` and back,
    # and centers are added a block of items at a time, so no large
    # temporary is allocated: each would cost page faults on every batch.
    labels += offsets
    block = max(1, _GATHER_BLOCK_VALUES // (n_points * dim))
    for start in range(0, batch_size, block):
        stop = min(start + block, batch_size)
        data[start:stop] += np.take(rows, labels[start:stop], axis=0)
    labels -= offsets
    return data


def generate_batch(
    config: DataConfig,
    seed: int,
    loader_id: str,
    epoch: int,
    batch_index: int,
    batch_size: int,
    max_clusters: int = 256,
    max_points: int = 100_000,
) -> Batch:
    """Generate the batch at (epoch, batch_index) of a loader.

    Parameters
    ----------
    config : DataConfig
    seed : int
        The loader's effective seed.
    loader_id : str
    epoch, batch_index : int
        The position; callers with fixed data pass epoch 0.
    batch_size : int
        B, the number of datasets in this batch.
    max_clusters, max_points : int
        Clip bounds for draws of unbounded specs.

    Returns
    -------
    Batch
    """
    params = _stream(seed, loader_id, epoch, batch_index, _PARAMETER_STREAM)
    points_rng = _stream(seed, loader_id, epoch, batch_index, _POINT_STREAM)
    parameters = _draw_parameters(config, params, batch_size, max_clusters, max_points)
    levels = _noise_levels(config, parameters)
    labels = _draw_labels(points_rng, parameters.weights, parameters.n_points)
    data = _place_points(points_rng, parameters, labels, levels["noise_std"])
    arrays: dict[str, NDArray[Any]] = {
        "data": data,
        "centers": parameters.centers32,
        "labels": labels,
        "weights": parameters.weights,
        **levels,
    }
    return Batch(arrays=arrays, control_mode=config.model.control_mode)
