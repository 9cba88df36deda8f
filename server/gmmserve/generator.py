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
6. on the point stream: counts ~ Multinomial(N, w) per item, labels laid
   out in cluster order and shuffled per item, then unit normal noise.

Centers are rounded to float32 before the noise level is computed, so the
float32 centers a client receives give back ``snr_db`` and ``noise_std``
exactly in float64.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gmmserve import noise
from gmmserve.config import DataConfig

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


def loader_key(loader_id: str) -> int:
    """Return a 64-bit stream key for ``loader_id``."""
    digest = hashlib.blake2b(loader_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive_seed(base_seed: int | None, loader_id: str, random_seed: int | None) -> int | None:
    """Return the effective seed of a loader.

    With a base seed: base_seed + (int(md5(loader_id), 16) mod 1000000), so
    "train" adds 197604 and "val" 304383. Without one: the config's
    ``random_seed``, which may be None (the caller then picks one).
    """
    if base_seed is None:
        return random_seed
    offset = int(hashlib.md5(loader_id.encode("utf-8")).hexdigest(), 16) % 1_000_000
    return base_seed + offset


def _stream(seed: int, loader_id: str, epoch: int, batch_index: int, stream: int) -> np.random.Generator:
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
    model = config.model
    params = _stream(seed, loader_id, epoch, batch_index, _PARAMETER_STREAM)
    points_rng = _stream(seed, loader_id, epoch, batch_index, _POINT_STREAM)
    dim = model.dim

    n_points = _to_count(model.sample_count_distribution.sample(params, 1), 1, max_points)
    n_clusters = _to_clusters(model.cluster_params.sample(params, 1), max_clusters)
    weights = params.dirichlet(np.full(n_clusters, model.alpha_dirichlet), size=batch_size)
    centers32 = params.standard_normal((batch_size, n_clusters, dim), dtype=np.float32)
    centers = centers32.astype(np.float64)

    control_spec = {
        "snr": model.snr_db_params,
        "mi_factor": model.mi_factor_params,
        "mi": model.mi_params,
    }[model.control_mode]
    assert control_spec is not None  # load_config requires mi_params in MI mode
    draws = control_spec.sample(params, batch_size if model.vary_parameter_in_batch else 1)
    control = np.broadcast_to(draws, (batch_size,)).astype(np.float64)

    s2 = noise.signal_variance(weights, centers)
    h = noise.entropy(weights)
    degenerate = s2 <= 0
    if model.control_mode == "snr":
        snr_db = control
        sigma = noise.noise_std_for_snr(s2, snr_db)
        mi = noise.mutual_information(weights, centers, sigma)
        mi_target = np.full(batch_size, np.nan)
    else:
        if model.control_mode == "mi_factor":
            mi_target = np.clip(control, 0.0, 1.0) * h
        else:
            mi_target = control
        sigma, mi = noise.noise_std_for_mi(weights, centers, mi_target)
        with np.errstate(divide="ignore"):
            snr_db = 10.0 * np.log10(s2 / (sigma * sigma))
    with np.errstate(divide="ignore", invalid="ignore"):
        mi_factor = np.where(h > 0, np.clip(mi / h, 0.0, 1.0), 0.0)
    if model.control_mode == "mi_factor":
        mi_factor = np.where(degenerate, 0.0, np.clip(control, 0.0, 1.0))
    snr_db = np.where(degenerate, -np.inf, snr_db)
    mi = np.where(degenerate, 0.0, mi)
    mi_factor = np.where(degenerate, 0.0, mi_factor)

    counts = points_rng.multinomial(n_points, weights)
    labels = np.repeat(
        np.tile(np.arange(n_clusters, dtype=np.int64), batch_size), counts.ravel()
    ).reshape(batch_size, n_points)
    labels = points_rng.permuted(labels, axis=1)
    noise_draws = points_rng.standard_normal((batch_size, n_points, dim), dtype=np.float32)
    item = np.arange(batch_size)[:, None]
    data = centers32[item, labels]
    noise_draws *= sigma.astype(np.float32)[:, None, None]
    data += noise_draws

    arrays: dict[str, NDArray[Any]] = {
        "data": data,
        "centers": centers32,
        "labels": labels,
        "weights": weights,
        "noise_std": sigma,
        "snr_db": snr_db,
        "mi": mi,
        "mi_factor": mi_factor,
        "mi_target": mi_target,
    }
    return Batch(arrays=arrays, control_mode=model.control_mode)
