"""Noise level of a mixture from an SNR, an MI target or an MI factor.

The model: a label X ~ Categorical(w) picks a center m_X, and the point is
Y = m_X + sigma * e with e ~ N(0, I_D). All logarithms are natural, so MI is
in nats.

Signal variance: s2 = (1/D) * sum_d (sum_k w_k m_kd^2 - (sum_k w_k m_kd)^2),
computed from centered means (see :func:`signal_variance`). SNR mode sets
sigma = sqrt(s2 / 10^(snr_db / 10)).

Mutual information, written per component k and per noise vector e:

    I(X; Y) = sum_k w_k E_e[ -log sum_j w_j exp(-(|d_kj|^2 + 2 sigma d_kj.e)
                                                  / (2 sigma^2)) ]

with d_kj = m_k - m_j. The integrand depends on e only through its
projection on the span of the differences d_kj, which has rank
r = min(D, K - 1), so the expectation is an r-dimensional integral. It is
computed with a fixed quadrature rule per rank (see ``_rule``):

- r <= 3: Gauss-Hermite product rules;
- r >= 4: scrambled Sobol points with a constant seed, mapped to normals,
  mirrored (e and -e) and whitened so their first and second moments are
  exactly those of N(0, I_r).

Every rule is exact for quadratic integrands, which is the regime of low MI.
Each rule comes in a coarse and a fine size. MI modes solve
estimate(sigma) = target by safeguarded Newton steps in log sigma with the
analytic derivative: the coarse rule finds the root, then Newton steps with
the fine rule refine it. The reported MI is the fine estimate at the returned
sigma. Each item's steps depend only on its own mixture and target, and all
of it is plain float64 numpy. The same mixture and target therefore give the
same sigma, bit for bit, in any process on the same machine and numpy build.

A mixture with zero signal variance (one cluster, or one weight of exactly
1) has MI 0 at every noise level and an undefined SNR. Such an item gets
noise_std 1.0, snr_db -inf, mi 0 and mi_factor 0. Items with
H(w) < MIN_ENTROPY are not solved either (see :func:`solvable`).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from numpy.typing import NDArray
from scipy.special import ndtri
from scipy.stats import qmc

__all__ = [
    "DEGENERATE_NOISE_STD",
    "MIN_ENTROPY",
    "MI_TARGET_MARGIN",
    "clip_mi_target",
    "entropy",
    "mutual_information",
    "mutual_information_monte_carlo",
    "noise_std_for_mi",
    "noise_std_for_snr",
    "signal_variance",
    "solvable",
]

FloatArray = NDArray[np.float64]

_LOGGER = logging.getLogger(__name__)

DEGENERATE_NOISE_STD = 1.0
# MI targets are kept within [MI_TARGET_MARGIN, 1 - MI_TARGET_MARGIN] times
# H(w). H(w) is reached only as sigma -> 0 and 0 only as sigma -> infinity,
# so the margin keeps every solved sigma finite and positive.
MI_TARGET_MARGIN = 1e-3

# Gauss-Hermite points per axis for ranks 1 to 3, as (coarse, fine).
_HERMITE_POINTS = {1: (8, 48), 2: (5, 10), 3: (4, 8)}
# log2 of the Sobol points for ranks >= 4, as (coarse, fine); the mirrored
# rule has twice as many nodes.
_SOBOL_LOG2_POINTS = (8, 13)
# Seed of the scrambled Sobol points; changing it changes every MI-mode batch
# with rank >= 4.
_SOBOL_SEED = 0x6D695F736F626F6C

_COARSE_ITERATIONS = 60
_FINE_ITERATIONS = 8
# Largest Newton step in log sigma.
_MAX_STEP = 3.0
_LOG_SIGMA_RANGE = 50.0
# An item whose H(w) is below this many nats has all but about 1e-14 of its
# mass in one cluster, so it is treated like zero signal variance.
MIN_ENTROPY = 1e-12
# The coarse stage stops once |MI - target| <= this fraction of the target;
# the fine stage stops at _FINE_TOLERANCE.
_COARSE_TOLERANCE = 1e-3
_FINE_TOLERANCE = 1e-5
# Elements of one (b, j, k, n) work array: 1 MiB of float64. On the 2-core
# development VM, evaluating 64 items at K = 5 with 256 nodes in groups of
# this size was about 4 times faster than in one 3.3 MiB array.
_WORK_ELEMENTS = 128 * 1024
# Log weight used in place of log(0) so that exp() gives exactly 0 without
# producing inf - inf.
_LOG_ZERO_WEIGHT = -1e4
_LOG_FLOOR = -600.0


def signal_variance(weights: FloatArray, means: FloatArray) -> FloatArray:
    """Return the mean per-dimension variance of the weighted centers.

    Computes (1/D) sum_k w_k |m_k - mu|^2 with mu = sum_k w_k m_k, which
    equals (1/D) sum_d (sum_k w_k m_kd^2 - (sum_k w_k m_kd)^2) but has no
    cancellation: it is exactly 0 when K = 1 or one weight is exactly 1.

    Parameters
    ----------
    weights : ndarray, shape (B, K)
    means : ndarray, shape (B, K, D)

    Returns
    -------
    ndarray, shape (B,)
    """
    weighted = weights[:, :, None]
    center = (weighted * means).sum(axis=1)
    offsets = means - center[:, None, :]
    per_cluster = (offsets * offsets).sum(axis=2)
    return (weights * per_cluster).sum(axis=1) / means.shape[2]


def entropy(weights: FloatArray) -> FloatArray:
    """Return H(w) = -sum_k w_k ln w_k per row, with 0 ln 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(weights > 0, -weights * np.log(weights), 0.0)
    return terms.sum(axis=-1)


def noise_std_for_snr(s2: FloatArray, snr_db: FloatArray) -> FloatArray:
    """Return sigma = sqrt(s2 / 10^(snr_db/10)); degenerate items get 1.0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(s2 / np.power(10.0, snr_db / 10.0))
    return np.where(s2 > 0, sigma, DEGENERATE_NOISE_STD)


def solvable(weights: FloatArray, means: FloatArray) -> NDArray[np.bool_]:
    """Return which items have signal variance > 0 and H(w) >= MIN_ENTROPY."""
    return (signal_variance(weights, means) > 0) & (entropy(weights) >= MIN_ENTROPY)


def clip_mi_target(target: FloatArray, h: FloatArray) -> FloatArray:
    """Clip MI targets to [MI_TARGET_MARGIN, 1 - MI_TARGET_MARGIN] * H(w)."""
    return np.clip(target, MI_TARGET_MARGIN * h, (1.0 - MI_TARGET_MARGIN) * h)


@dataclass(frozen=True)
class _Rule:
    """A quadrature rule for E[g(e)], e ~ N(0, I_r): sum_n weights_n g(nodes_n)."""

    nodes: FloatArray
    weights: FloatArray


@functools.cache
def _rule(rank: int, fine: bool) -> _Rule:
    """Return the coarse or fine quadrature rule for rank ``rank``."""
    if rank in _HERMITE_POINTS:
        points = _HERMITE_POINTS[rank][1 if fine else 0]
        x, w = hermegauss(points)
        w = w / w.sum()
        axes = np.meshgrid(*([x] * rank), indexing="ij")
        axis_weights = np.meshgrid(*([w] * rank), indexing="ij")
        nodes = np.stack([axis.ravel() for axis in axes], axis=1)
        weights = np.prod(np.stack([a.ravel() for a in axis_weights], axis=1), axis=1)
    else:
        log2_points = _SOBOL_LOG2_POINTS[1 if fine else 0]
        sampler = qmc.Sobol(rank, scramble=True, seed=_SOBOL_SEED + rank)
        half = ndtri(sampler.random_base2(log2_points))
        mirrored = np.concatenate([half, -half])
        # Whitening makes the second moments exactly those of N(0, I); the
        # mirroring already makes the first moments exactly 0.
        moments = mirrored.T @ mirrored / len(mirrored)
        cholesky = np.linalg.cholesky(moments)
        nodes = np.linalg.solve(cholesky, mirrored.T).T
        weights = np.full(len(nodes), 1.0 / len(nodes))
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return _Rule(nodes=np.ascontiguousarray(nodes), weights=weights)


def _reduce_rank(means: FloatArray) -> FloatArray:
    """Express the centers in an orthonormal basis of their differences.

    Returns an array of shape (B, K, r) with r = min(D, K - 1). Pairwise
    distances and the MI are unchanged because the noise is isotropic.
    """
    clusters, dim = means.shape[1], means.shape[2]
    if clusters - 1 >= dim:
        return means
    offsets = means - means[:, :1, :]
    basis, _ = np.linalg.qr(np.swapaxes(offsets[:, 1:, :], 1, 2))
    return np.matmul(offsets, basis)


class _Workspace:
    """Two flat work buffers of _WORK_ELEMENTS float64, reused by every call.

    Allocating arrays of this size anew on each evaluation costs page
    faults that take longer than the arithmetic.
    """

    def __init__(self) -> None:
        self._first = np.empty(_WORK_ELEMENTS)
        self._second = np.empty(_WORK_ELEMENTS)

    def views(self, shape: tuple[int, ...]) -> tuple[FloatArray, FloatArray]:
        size = math.prod(shape)
        return self._first[:size].reshape(shape), self._second[:size].reshape(shape)


class _Geometry:
    """Sigma-free parts of the MI integrand for a group of mixtures.

    Holds the log weights, |d_kj|^2 / 2 and the projections of the centers
    on a rule's nodes. Work arrays are laid out as (b, j, k, n) so that
    reductions over j run on contiguous blocks, and the nodes are split
    into blocks that keep one work array within _WORK_ELEMENTS.
    """

    def __init__(self, weights: FloatArray, coords: FloatArray, rule: _Rule) -> None:
        self.weights = weights
        self.rule = rule
        safe = np.where(weights > 0, weights, 1.0)
        log_weights = np.where(weights > 0, np.log(safe), _LOG_ZERO_WEIGHT)
        self.log_weights = log_weights[:, :, None, None]
        diff = coords[:, None, :, :] - coords[:, :, None, :]
        self.half_squared = 0.5 * np.einsum("bjkd,bjkd->bjk", diff, diff)[..., None]
        self.projected = np.matmul(coords, rule.nodes.T)
        clusters = weights.shape[1]
        nodes = len(rule.weights)
        block = max(
            1, min(nodes, _WORK_ELEMENTS // (len(weights) * clusters * clusters))
        )
        self.blocks = [
            slice(start, min(start + block, nodes)) for start in range(0, nodes, block)
        ]

    def evaluate(
        self, sigma: FloatArray, derivative: bool, workspace: _Workspace
    ) -> tuple[FloatArray, FloatArray | None]:
        """Return the MI estimate and, if asked, d MI / d log sigma."""
        inverse = (1.0 / sigma)[:, None, None, None]
        scaled = self.half_squared * (inverse * inverse)
        base = self.log_weights - scaled
        batch, clusters = self.weights.shape
        per_cluster = np.zeros((batch, clusters))
        per_cluster_slope = np.zeros((batch, clusters))
        for block in self.blocks:
            projected = self.projected[:, :, block]
            shape = (batch, clusters, clusters, projected.shape[2])
            dot, logits = workspace.views(shape)
            # dot[b, j, k, n] = d_kj . e_n / sigma with d_kj = m_k - m_j.
            np.subtract(projected[:, None, :, :], projected[:, :, None, :], out=dot)
            dot *= inverse
            np.subtract(base, dot, out=logits)
            peak = logits.max(axis=1, keepdims=True)
            shifted = np.subtract(logits, peak, out=logits)
            # Terms below e^-600 of the peak change no float64 sum; clamping
            # them avoids subnormal numbers, whose arithmetic is many times
            # slower.
            np.maximum(shifted, _LOG_FLOOR, out=shifted)
            np.exp(shifted, out=shifted)
            total = shifted.sum(axis=1)
            per_node = peak[:, 0] + np.log(total)
            node_weights = self.rule.weights[block]
            per_cluster += per_node @ node_weights
            if derivative:
                # d logit_kj / d log sigma = |d_kj|^2 / sigma^2 + d_kj . e / sigma.
                dot += 2.0 * scaled
                dot *= shifted
                mean_slope = dot.sum(axis=1) / total
                per_cluster_slope += mean_slope @ node_weights
        mi = -(self.weights * per_cluster).sum(axis=1)
        if not derivative:
            return mi, None
        return mi, -(self.weights * per_cluster_slope).sum(axis=1)


class _Estimator:
    """The MI estimate of B mixtures under one rule, geometry built once.

    Items are split into groups so each (b, j, k, n) work array stays near
    1 MiB and in cache. The split changes no result, because every item's
    arithmetic is independent of the others.
    """

    def __init__(
        self, weights: FloatArray, coords: FloatArray, fine: bool, workspace: _Workspace
    ) -> None:
        rule = _rule(coords.shape[2], fine)
        clusters = weights.shape[1]
        size = max(1, _WORK_ELEMENTS // (clusters * clusters * len(rule.weights)))
        self.groups = [
            slice(start, min(start + size, len(weights)))
            for start in range(0, len(weights), size)
        ]
        self.geometries = [
            _Geometry(weights[group], coords[group], rule) for group in self.groups
        ]
        self.size = len(weights)
        self.workspace = workspace

    def __call__(
        self, sigma: FloatArray, derivative: bool = True
    ) -> tuple[FloatArray, FloatArray]:
        """Return the MI estimates and d MI / d log sigma (NaN if not asked)."""
        mi = np.empty(self.size)
        slope = np.full(self.size, np.nan)
        for group, geometry in zip(self.groups, self.geometries):
            mi[group], group_slope = geometry.evaluate(
                sigma[group], derivative, self.workspace
            )
            if group_slope is not None:
                slope[group] = group_slope
        return mi, slope


def mutual_information(
    weights: FloatArray, means: FloatArray, sigma: FloatArray
) -> FloatArray:
    """Estimate I(X; Y) in nats for B mixtures at noise levels ``sigma``.

    Parameters
    ----------
    weights : ndarray, shape (B, K)
    means : ndarray, shape (B, K, D)
    sigma : ndarray, shape (B,)
        Positive noise levels.

    Returns
    -------
    ndarray, shape (B,)
        The fine-rule estimate, within [0, H(w)]; 0 for items with zero
        signal variance or H(w) < MIN_ENTROPY, whose MI lies in [0, H(w)].
    """
    result = np.zeros(len(weights))
    live = solvable(weights, means)
    if live.any():
        coords = _reduce_rank(means[live])
        estimator = _Estimator(weights[live], coords, True, _Workspace())
        mi, _ = estimator(sigma[live], derivative=False)
        result[live] = np.clip(mi, 0.0, entropy(weights[live]))
    return result


def mutual_information_monte_carlo(
    weights: FloatArray,
    means: FloatArray,
    sigma: float,
    points_per_cluster: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Estimate I(X; Y) of one mixture by Monte Carlo, with its standard error.

    An independent check of :func:`mutual_information`: it draws
    ``points_per_cluster`` points y = m_k + sigma * e from every cluster k
    and averages KL(p(. | y) || w), the information a point carries about
    its label, with weight w_k per cluster. The estimator is unbiased,
    needs no quadrature, and its terms lie in [0, ln(1 / w_min)].

    Parameters
    ----------
    weights : ndarray, shape (K,)
    means : ndarray, shape (K, D)
    sigma : float
    points_per_cluster : int
    rng : numpy.random.Generator

    Returns
    -------
    estimate : float
        In nats.
    standard_error : float
        Of the estimate, from the per-cluster sample variances.
    """
    clusters, dim = means.shape
    log_weights = np.where(
        weights > 0, np.log(np.where(weights > 0, weights, 1.0)), -np.inf
    )
    chunk = max(1, (1 << 22) // (clusters * dim))
    estimate = 0.0
    variance = 0.0
    for k in range(clusters):
        if weights[k] == 0:
            continue
        total = 0.0
        total_squares = 0.0
        for start in range(0, points_per_cluster, chunk):
            count = min(chunk, points_per_cluster - start)
            points = means[k] + sigma * rng.standard_normal((count, dim))
            offsets = points[:, None, :] - means[None, :, :]
            logits = log_weights - np.einsum("nkd,nkd->nk", offsets, offsets) / (
                2.0 * sigma * sigma
            )
            peak = logits.max(axis=1, keepdims=True)
            log_posterior = logits - (
                peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
            )
            posterior = np.exp(log_posterior)
            with np.errstate(invalid="ignore"):
                terms = np.where(
                    posterior > 0, posterior * (log_posterior - log_weights), 0.0
                )
            divergence = terms.sum(axis=1)
            total += math.fsum(divergence)
            total_squares += math.fsum(divergence * divergence)
        mean = total / points_per_cluster
        sample_variance = max(total_squares / points_per_cluster - mean * mean, 0.0)
        estimate += weights[k] * mean
        variance += weights[k] ** 2 * sample_variance / points_per_cluster
    return estimate, math.sqrt(variance)


def noise_std_for_mi(
    weights: FloatArray, means: FloatArray, target: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Solve for the sigma at which each mixture's MI estimate hits ``target``.

    Targets are first clipped with :func:`clip_mi_target`, so every item has
    a finite positive root.

    Parameters
    ----------
    weights : ndarray, shape (B, K)
    means : ndarray, shape (B, K, D)
    target : ndarray, shape (B,)
        MI targets in nats.

    Returns
    -------
    sigma : ndarray, shape (B,)
        Finite and positive, within a factor e^50 of the signal's standard
        deviation. DEGENERATE_NOISE_STD for items with zero signal variance
        or H(w) < MIN_ENTROPY.
    achieved : ndarray, shape (B,)
        The fine-rule MI estimate at the returned sigma; 0 for the items
        above. Its distance from the clipped target is at most
        _FINE_TOLERANCE relative unless a warning was logged.

    Raises
    ------
    ArithmeticError
        When a solved sigma is not finite and positive. The bounded search
        rules this out; the check guards the invariant.
    """
    batch = len(weights)
    sigma = np.full(batch, DEGENERATE_NOISE_STD)
    achieved = np.zeros(batch)
    s2 = signal_variance(weights, means)
    live = solvable(weights, means)
    if not live.any():
        return sigma, achieved
    h = entropy(weights[live])
    goal = clip_mi_target(target[live], h)
    coords = _reduce_rank(means[live])
    solved, reached = _solve(weights[live], coords, means.shape[2], s2[live], h, goal)
    if not np.all(np.isfinite(solved) & (solved > 0)):
        raise ArithmeticError(
            f"MI solver returned a noise level outside (0, inf) for targets "
            f"{goal.tolist()}"
        )
    missed = np.abs(reached - goal) > _FINE_TOLERANCE * goal
    if missed.any():
        _LOGGER.warning(
            "MI solver missed %d of %d targets by more than %g relative; "
            "largest miss %.3g relative",
            int(missed.sum()),
            len(goal),
            _FINE_TOLERANCE,
            float(np.max(np.abs(reached - goal) / goal)),
        )
    sigma[live] = solved
    achieved[live] = np.clip(reached, 0.0, h)
    return sigma, achieved


def _capacity_log_sigma(
    s2: FloatArray, dim: int, rank: int, target: FloatArray
) -> FloatArray:
    """Return log sigma at which the Gaussian-channel bound equals ``target``.

    I(X; Y) <= (r / 2) ln(1 + D s2 / (r sigma^2)) because a Gaussian input of
    the same covariance maximizes MI. The exact MI at this sigma is therefore
    at most the target, so the root lies at or below it.
    """
    growth = np.expm1(2.0 * target / rank)
    return 0.5 * (np.log(dim * s2 / rank) - np.log(growth))


class _Residual:
    """phi(t) = logit(MI(e^t) / H) - logit(target / H) and its derivative.

    phi decreases in t = log sigma and is close to linear for large sigma,
    where MI falls like 1 / sigma^2, so Newton steps on it behave well.
    Evaluations can be restricted to the items still iterating.
    """

    def __init__(
        self,
        weights: FloatArray,
        coords: FloatArray,
        h: FloatArray,
        target: FloatArray,
    ) -> None:
        self.weights = weights
        self.coords = coords
        self.h = h
        self.goal = np.log(target) - np.log(h - target)
        self.workspace = _Workspace()

    def __call__(
        self,
        t: FloatArray,
        items: NDArray[np.intp],
        fine: bool,
        derivative: bool = True,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Return phi, d phi / dt (NaN unless asked) and MI at e^t for ``items``.

        ``t`` has one value per listed item.
        """
        estimator = _Estimator(
            self.weights[items], self.coords[items], fine, self.workspace
        )
        mi, dmi = estimator(np.exp(t), derivative)
        h = self.h[items]
        bounded = np.clip(mi, 1e-300, h * (1.0 - 1e-15))
        phi = np.log(bounded) - np.log(h - bounded) - self.goal[items]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            dphi = dmi * h / (bounded * (h - bounded))
        return phi, dphi, mi


def _solve(
    weights: FloatArray,
    coords: FloatArray,
    dim: int,
    s2: FloatArray,
    h: FloatArray,
    target: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Find sigma with MI(sigma) = target for every item at once.

    Newton steps on the coarse estimate, started from the Gaussian-channel
    bound, find the coarse root. Newton steps on the fine estimate then move
    it to the fine root, which lies within a fraction of a percent of it.
    Returns sigma and the fine MI estimate there.
    """
    residual = _Residual(weights, coords, h, target)
    guess = _capacity_log_sigma(s2, dim, coords.shape[2], target)
    # The root lies within a factor e^50 of the signal's standard deviation
    # for every accepted target: MI there is within 1e-40 nats of H(w) or
    # of 0. Bounding t also keeps 1 / sigma^2 finite.
    scale = 0.5 * np.log(s2)
    low = scale - _LOG_SIGMA_RANGE
    high = scale + _LOG_SIGMA_RANGE
    t, _, _ = _newton(
        residual,
        np.clip(guess, low, high),
        low,
        high,
        target,
        fine=False,
        iterations=_COARSE_ITERATIONS,
        tolerance=_COARSE_TOLERANCE,
    )
    # The fine root lies close to the coarse one; a bracket of a factor e
    # either way only stops a runaway step.
    t, mi, _ = _newton(
        residual,
        t,
        t - 1.0,
        t + 1.0,
        target,
        fine=True,
        iterations=_FINE_ITERATIONS,
        tolerance=_FINE_TOLERANCE,
        second_without_slope=True,
    )
    return np.exp(t), mi


def _newton(
    residual: _Residual,
    t: FloatArray,
    low: FloatArray,
    high: FloatArray,
    target: FloatArray,
    fine: bool,
    iterations: int,
    tolerance: float,
    second_without_slope: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run safeguarded Newton steps on phi; return t, MI and d phi / dt at t.

    Each evaluation narrows the bracket (low, high) of the root. A step
    longer than _MAX_STEP is cut to that length, and a step that leaves the
    bracket or follows a non-negative slope is replaced by bisection. An
    item stops once |MI - target| <= tolerance * target, and only the items
    still moving are evaluated, so an item's result does not depend on the
    other items. An item that has not converged after ``iterations``
    evaluations keeps its last t. Every item's last evaluation is at its
    returned t, so the returned MI is the value there.

    With ``second_without_slope``, the second evaluation skips the slope
    and the step after it reuses the first one. That suits a start within a
    fraction of a percent of the root: one Newton step converges most items,
    so the second evaluation mostly only confirms it. The returned slope is
    the last one computed.
    """
    t = t.copy()
    estimate = np.empty(len(t))
    slope = np.empty(len(t))
    low = low.copy()
    high = high.copy()
    active = np.arange(len(t))
    for iteration in range(iterations):
        derivative = iteration != 1 or not second_without_slope
        phi, dphi, mi = residual(t[active], active, fine, derivative)
        estimate[active] = mi
        if derivative:
            slope[active] = dphi
        moving = np.abs(mi - target[active]) > tolerance * target[active]
        if not moving.any() or iteration == iterations - 1:
            break
        active, phi = active[moving], phi[moving]
        dphi = slope[active]
        position = t[active]
        low[active] = np.where(phi > 0, position, low[active])
        high[active] = np.where(phi > 0, high[active], position)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = np.clip(-phi / dphi, -_MAX_STEP, _MAX_STEP)
        newton = position + step
        bracket_low, bracket_high = low[active], high[active]
        usable = (
            np.isfinite(newton)
            & (dphi < 0)
            & (newton > bracket_low)
            & (newton < bracket_high)
        )
        t[active] = np.where(usable, newton, 0.5 * (bracket_low + bracket_high))
    return t, estimate, slope
