"""Noise level of a mixture from an SNR, an MI target or an MI factor.

The model: a label X ~ Categorical(w) picks a center m_X, and the point is
Y = m_X + sigma * e with e ~ N(0, I_D). All logarithms are natural, so MI is
in nats.

Signal variance: s2 = (1/D) * sum_d (sum_k w_k m_kd^2 - (sum_k w_k m_kd)^2).
SNR mode sets sigma = sqrt(s2 / 10^(snr_db / 10)).

Mutual information, written per component k and per noise vector e:

    I(X; Y) = sum_k w_k E_e[ -log sum_j w_j exp(-(|d_kj|^2 + 2 sigma d_kj.e)
                                                  / (2 sigma^2)) ]

with d_kj = m_k - m_j. The expectation over e uses one fixed set of
noise vectors per dimension (antithetic pairs drawn once from a constant
key), so the estimate is a smooth, deterministic function of sigma. MI modes
solve estimate(sigma) = target by bracketing and regula falsi in log sigma;
the same config and position therefore always give the same sigma, bit for
bit, in any process.

A mixture with zero signal variance (one cluster, or one weight of exactly
1) has MI 0 at every noise level and an undefined SNR. Such an item gets
noise_std 1.0, snr_db -inf, mi 0 and mi_factor 0.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

__all__ = [
    "DEGENERATE_NOISE_STD",
    "entropy",
    "mutual_information",
    "noise_std_for_mi",
    "noise_std_for_snr",
    "signal_variance",
]

DEGENERATE_NOISE_STD = 1.0
# Noise vectors per dimension for the MI estimate, as antithetic pairs.
MI_NOISE_VECTORS = 2048
# MI targets are kept within this fraction of H(w), the MI reached as the
# noise vanishes, so that a finite positive sigma reaches every target.
MI_TARGET_MARGIN = 1e-3
_SOLVER_ITERATIONS = 60
_SOLVER_RELATIVE_TOLERANCE = 1e-12
# Key of the fixed noise vectors; changing it changes every MI-mode batch.
_NOISE_VECTOR_KEY = 0x6D695F6E6F697365

FloatArray = NDArray[np.float64]


def signal_variance(weights: FloatArray, means: FloatArray) -> FloatArray:
    """Return the mean per-dimension variance of the weighted centers.

    Parameters
    ----------
    weights : ndarray, shape (B, K)
    means : ndarray, shape (B, K, D)

    Returns
    -------
    ndarray, shape (B,)
    """
    first = np.einsum("bk,bkd->bd", weights, means)
    second = np.einsum("bk,bkd->bd", weights, means * means)
    variance = np.maximum(second - first * first, 0.0)
    return variance.mean(axis=1)


def entropy(weights: FloatArray) -> FloatArray:
    """Return H(w) = -sum_k w_k ln w_k per row, with 0 ln 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(weights > 0, -weights * np.log(weights), 0.0)
    return terms.sum(axis=-1)


def noise_std_for_snr(s2: FloatArray, snr_db: FloatArray) -> FloatArray:
    """Return sigma = sqrt(s2 / 10^(snr_db/10)); degenerate items get 1.0."""
    sigma = np.sqrt(s2 / np.power(10.0, snr_db / 10.0))
    return np.where(s2 > 0, sigma, DEGENERATE_NOISE_STD)


@functools.cache
def _noise_vectors(dim: int) -> FloatArray:
    """Return the fixed (MI_NOISE_VECTORS, dim) antithetic noise vectors."""
    rng = np.random.Generator(np.random.Philox(key=_NOISE_VECTOR_KEY + dim))
    half = rng.standard_normal((MI_NOISE_VECTORS // 2, dim))
    vectors = np.concatenate([half, -half])
    vectors.setflags(write=False)
    return vectors


class _MixtureGeometry:
    """Precomputed pairwise center differences of B mixtures.

    Holds |d_kj|^2 and the projections d_kj . e_n, which do not depend on
    sigma, so each MI evaluation costs one log-sum-exp over (B, K, K, n).
    """

    def __init__(self, weights: FloatArray, means: FloatArray) -> None:
        self.weights = weights
        self.log_weights = np.log(np.where(weights > 0, weights, 1.0)) + np.where(
            weights > 0, 0.0, -np.inf
        )
        diff = means[:, :, None, :] - means[:, None, :, :]
        self.squared = np.einsum("bkjd,bkjd->bkj", diff, diff)
        self.projected = np.einsum("bkjd,nd->bkjn", diff, _noise_vectors(means.shape[2]))

    def mutual_information(self, sigma: FloatArray) -> FloatArray:
        s = sigma[:, None, None, None]
        logits = (
            self.log_weights[:, None, :, None]
            - self.squared[:, :, :, None] / (2.0 * s * s)
            - self.projected / s
        )
        per_component = -logsumexp(logits, axis=2).mean(axis=-1)
        return np.einsum("bk,bk->b", self.weights, per_component)


# Items are processed in groups so the (B, K, K, n) work array stays below
# about 64 MiB.
_WORK_ELEMENTS = 8 * 1024 * 1024


def _groups(batch: int, clusters: int) -> list[slice]:
    per_item = clusters * clusters * MI_NOISE_VECTORS
    size = max(1, _WORK_ELEMENTS // per_item)
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def mutual_information(
    weights: FloatArray, means: FloatArray, sigma: FloatArray
) -> FloatArray:
    """Estimate I(X; Y) in nats for B mixtures at noise levels ``sigma``.

    Parameters
    ----------
    weights : ndarray, shape (B, K)
    means : ndarray, shape (B, K, D)
    sigma : ndarray, shape (B,)

    Returns
    -------
    ndarray, shape (B,)
        The deterministic estimate; 0 for items with zero signal variance.
    """
    result = np.zeros(len(weights))
    s2 = signal_variance(weights, means)
    for group in _groups(len(weights), weights.shape[1]):
        geometry = _MixtureGeometry(weights[group], means[group])
        result[group] = geometry.mutual_information(sigma[group])
    return np.where(s2 > 0, np.maximum(result, 0.0), 0.0)


def noise_std_for_mi(
    weights: FloatArray, means: FloatArray, target: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Solve for the sigma at which each mixture's MI estimate hits ``target``.

    Targets are first clipped to [MI_TARGET_MARGIN, 1 - MI_TARGET_MARGIN]
    times H(w), the range a positive finite sigma reaches.

    Returns
    -------
    sigma : ndarray, shape (B,)
    achieved : ndarray, shape (B,)
        The MI estimate at the returned sigma.
    """
    batch = len(weights)
    sigma = np.full(batch, DEGENERATE_NOISE_STD)
    achieved = np.zeros(batch)
    s2 = signal_variance(weights, means)
    h = entropy(weights)
    live = s2 > 0
    clipped = np.clip(target, MI_TARGET_MARGIN * h, (1.0 - MI_TARGET_MARGIN) * h)
    for group in _groups(batch, weights.shape[1]):
        index = np.arange(batch)[group][live[group]]
        if index.size == 0:
            continue
        geometry = _MixtureGeometry(weights[index], means[index])
        sigma[index], achieved[index] = _solve(
            geometry, clipped[index], np.sqrt(s2[index])
        )
    return sigma, achieved


def _solve(
    geometry: _MixtureGeometry, target: FloatArray, scale: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Find log sigma with MI(sigma) = target for every item at once.

    MI falls as sigma grows. The bracket [scale/1e3, scale*1e3] is widened
    tenfold per side until it holds the root, then Illinois regula falsi
    narrows it. Each step evaluates every item, so the loop count is fixed
    and the result does not depend on which other items share the batch.
    """
    low = np.log(scale) - np.log(1e3)
    high = np.log(scale) + np.log(1e3)
    f_low = geometry.mutual_information(np.exp(low)) - target
    f_high = geometry.mutual_information(np.exp(high)) - target
    for _ in range(30):
        need_low = f_low < 0
        need_high = f_high > 0
        if not (need_low.any() or need_high.any()):
            break
        low = np.where(need_low, low - np.log(10.0), low)
        high = np.where(need_high, high + np.log(10.0), high)
        f_low = np.where(need_low, geometry.mutual_information(np.exp(low)) - target, f_low)
        f_high = np.where(
            need_high, geometry.mutual_information(np.exp(high)) - target, f_high
        )
    if (f_low < 0).any() or (f_high > 0).any():
        raise ArithmeticError(
            "MI solver could not bracket the target; this is a bug, please report "
            f"the config (targets {target.tolist()})"
        )

    side = np.zeros(len(target))
    point = low.copy()
    f_point = f_low.copy()
    done = np.zeros(len(target), dtype=bool)
    for _ in range(_SOLVER_ITERATIONS):
        denominator = f_low - f_high
        safe = np.where(denominator != 0, denominator, 1.0)
        guess = np.where(
            denominator != 0, low + (high - low) * f_low / safe, 0.5 * (low + high)
        )
        guess = np.clip(guess, low, high)
        f_guess = geometry.mutual_information(np.exp(guess)) - target
        # Items that converged keep their point, so each item's result
        # depends only on its own mixture, not on the items beside it.
        point = np.where(done, point, guess)
        f_point = np.where(done, f_point, f_guess)
        done = done | (np.abs(f_point) <= _SOLVER_RELATIVE_TOLERANCE * target)
        done = done | (high - low <= 1e-15 * np.maximum(1.0, np.abs(low)))
        if done.all():
            break
        go_high = f_point > 0
        # Illinois step: halve the stale endpoint's value when the same side
        # moves twice, which keeps convergence superlinear.
        low_new = np.where(go_high, point, low)
        f_low_new = np.where(go_high, f_point, np.where(side == -1, f_low * 0.5, f_low))
        high_new = np.where(go_high, high, point)
        f_high_new = np.where(go_high, np.where(side == 1, f_high * 0.5, f_high), f_point)
        side = np.where(go_high, 1.0, -1.0)
        low, f_low, high, f_high = low_new, f_low_new, high_new, f_high_new
    return np.exp(point), f_point + target
