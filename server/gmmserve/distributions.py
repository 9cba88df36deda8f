"""Distribution specs: their validation, support and vectorized sampling.

A spec is a JSON object with a ``"type"`` key. Each type's law:

================== =========================== ===============================
type               keys                        law
================== =========================== ===============================
fixed              value (or n)                the value itself
uniform            min, max                    continuous uniform on [min, max)
range              min, max                    discrete uniform on min..max
normal             mean, std                   N(mean, std^2)
truncated_normal   mean, std, min, max         N(mean, std^2) conditioned on
                                               [min, max]
truncated_lognormal mean, sigma, min, max      exp(N(mean, sigma^2))
                                               conditioned on [min, max]
poisson            lam; offset, min, max       offset + Poisson(lam), clipped
                                               to [min, max]
truncated_poisson  lam, min, max; offset       offset + Poisson(lam)
                                               conditioned on [min, max]
choice             options; probs              options[i] with probability
                                               probs[i] (uniform when absent)
================== =========================== ===============================

Bounds are inclusive except the upper bound of ``uniform``. The truncated
laws are sampled exactly by inverting the truncated CDF, so they hold even
when the interval lies far in a tail.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import special, stats

__all__ = [
    "ChoiceSpec",
    "DistributionSpec",
    "FixedSpec",
    "NormalSpec",
    "PoissonSpec",
    "RangeSpec",
    "TruncatedLognormalSpec",
    "TruncatedNormalSpec",
    "TruncatedPoissonSpec",
    "UniformSpec",
]

# Largest finite bound a spec may carry. Larger magnitudes overflow the
# float64 arithmetic of the samplers without changing any useful law.
MAX_ABS_BOUND = 1e12


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        """Draw ``size`` values as float64."""
        raise NotImplementedError(f"{type(self).__name__} has no sampler")

    def support(self) -> tuple[float, float]:
        """Return the smallest interval [low, high] that contains every draw."""
        raise NotImplementedError(f"{type(self).__name__} has no support")


Number = Annotated[float, Field(ge=-MAX_ABS_BOUND, le=MAX_ABS_BOUND)]
Scale = Annotated[float, Field(gt=0.0, le=MAX_ABS_BOUND)]


class FixedSpec(_Spec):
    type: Literal["fixed"]
    value: Number

    @model_validator(mode="before")
    @classmethod
    def _accept_older_key(cls, data: Any) -> Any:
        # Older configs name the value "n"; "value" wins when both are given.
        if isinstance(data, dict) and "n" in data:
            data = dict(data)
            older = data.pop("n")
            data.setdefault("value", older)
        return data

    @property
    def constant(self) -> float:
        return float(self.value)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        return np.full(size, self.constant)

    def support(self) -> tuple[float, float]:
        return (self.constant, self.constant)


class UniformSpec(_Spec):
    type: Literal["uniform"]
    min: Number
    max: Number

    @model_validator(mode="after")
    def _check_order(self) -> UniformSpec:
        if not self.min < self.max:
            raise ValueError(
                f"min must be less than max, got min={self.min!r}, max={self.max!r}"
            )
        return self

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        return rng.uniform(self.min, self.max, size)

    def support(self) -> tuple[float, float]:
        return (self.min, self.max)


class RangeSpec(_Spec):
    type: Literal["range"]
    min: Annotated[int, Field(ge=-(2**40), le=2**40)]
    max: Annotated[int, Field(ge=-(2**40), le=2**40)]

    @model_validator(mode="after")
    def _check_order(self) -> RangeSpec:
        if self.min > self.max:
            raise ValueError(
                f"min must not exceed max, got min={self.min!r}, max={self.max!r}"
            )
        return self

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        return rng.integers(self.min, self.max, size, endpoint=True).astype(np.float64)

    def support(self) -> tuple[float, float]:
        return (float(self.min), float(self.max))


class NormalSpec(_Spec):
    type: Literal["normal"]
    mean: Number
    std: Scale

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        return rng.normal(self.mean, self.std, size)

    def support(self) -> tuple[float, float]:
        return (-math.inf, math.inf)


def _truncated_standard_normal(
    rng: np.random.Generator, a: float, b: float, size: int
) -> NDArray[np.float64]:
    """Draw N(0, 1) conditioned on [a, b] by inverting its CDF.

    The interval is mirrored onto the negative half-axis first, where
    ``ndtr`` keeps full relative precision, so tails far from 0 stay exact.
    """
    flip = a > 0
    if flip:
        a, b = -b, -a
    lower, upper = special.ndtr(a), special.ndtr(b)
    u = rng.random(size)
    z = special.ndtri(lower + u * (upper - lower))
    z = np.clip(z, a, b)
    return -z if flip else z


class TruncatedNormalSpec(_Spec):
    type: Literal["truncated_normal"]
    mean: Number
    std: Scale
    min: Number
    max: Number

    @model_validator(mode="after")
    def _check_bounds(self) -> TruncatedNormalSpec:
        if not self.min < self.max:
            raise ValueError(
                f"min must be less than max, got min={self.min!r}, max={self.max!r}"
            )
        a, b = self._standard_bounds()
        mass = (
            stats.norm.sf(a) - stats.norm.sf(b)
            if a > 0
            else (stats.norm.cdf(b) - stats.norm.cdf(a))
        )
        if not mass > 0.0:
            raise ValueError(
                f"[min, max] = [{self.min!r}, {self.max!r}] lies more than 37 std "
                f"from the mean {self.mean!r}, so it has no probability mass"
            )
        return self

    def _standard_bounds(self) -> tuple[float, float]:
        return ((self.min - self.mean) / self.std, (self.max - self.mean) / self.std)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        a, b = self._standard_bounds()
        z = _truncated_standard_normal(rng, a, b, size)
        return np.clip(self.mean + self.std * z, self.min, self.max)

    def support(self) -> tuple[float, float]:
        return (self.min, self.max)


class TruncatedLognormalSpec(_Spec):
    """Lognormal whose logarithm has ``mean`` and ``sigma``, truncated."""

    type: Literal["truncated_lognormal"]
    mean: Number
    sigma: Scale
    min: Annotated[float, Field(gt=0.0, le=MAX_ABS_BOUND)]
    max: Annotated[float, Field(gt=0.0, le=MAX_ABS_BOUND)]

    @model_validator(mode="after")
    def _check_bounds(self) -> TruncatedLognormalSpec:
        if not self.min < self.max:
            raise ValueError(
                f"min must be less than max, got min={self.min!r}, max={self.max!r}"
            )
        a, b = self._standard_bounds()
        mass = (
            stats.norm.cdf(b) - stats.norm.cdf(a)
            if a <= 0
            else (stats.norm.sf(a) - stats.norm.sf(b))
        )
        if not mass > 0.0:
            raise ValueError(
                f"[min, max] = [{self.min!r}, {self.max!r}] has no probability "
                f"mass under a lognormal with log-mean {self.mean!r} and "
                f"sigma {self.sigma!r}"
            )
        return self

    def _standard_bounds(self) -> tuple[float, float]:
        return (
            (math.log(self.min) - self.mean) / self.sigma,
            (math.log(self.max) - self.mean) / self.sigma,
        )

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        a, b = self._standard_bounds()
        z = _truncated_standard_normal(rng, a, b, size)
        return np.clip(np.exp(self.mean + self.sigma * z), self.min, self.max)

    def support(self) -> tuple[float, float]:
        return (self.min, self.max)


Rate = Annotated[float, Field(gt=0.0, le=1e6)]
IntBound = Annotated[int, Field(ge=-(2**40), le=2**40)]


class PoissonSpec(_Spec):
    type: Literal["poisson"]
    lam: Rate
    offset: IntBound = 0
    min: IntBound = 0
    max: IntBound | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> PoissonSpec:
        if self.max is not None and self.min > self.max:
            raise ValueError(
                f"min must not exceed max, got min={self.min!r}, max={self.max!r}"
            )
        return self

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        draws = self.offset + rng.poisson(self.lam, size).astype(np.float64)
        upper = math.inf if self.max is None else self.max
        return np.clip(draws, self.min, upper)

    def support(self) -> tuple[float, float]:
        return (float(self.min), math.inf if self.max is None else float(self.max))


class TruncatedPoissonSpec(_Spec):
    type: Literal["truncated_poisson"]
    lam: Rate
    min: IntBound
    max: IntBound
    offset: IntBound = 0

    @model_validator(mode="after")
    def _check_bounds(self) -> TruncatedPoissonSpec:
        if self.min > self.max:
            raise ValueError(
                f"min must not exceed max, got min={self.min!r}, max={self.max!r}"
            )
        if self.max - self.min > 10_000_000:
            raise ValueError(
                f"max - min must be at most 10000000, got {self.max - self.min}"
            )
        if not self.max - self.offset >= 0:
            raise ValueError(
                f"offset + Poisson({self.lam!r}) has no probability mass in "
                f"[{self.min!r}, {self.max!r}]: every value is below offset "
                f"{self.offset!r}"
            )
        return self

    def _cdf(self) -> NDArray[np.float64]:
        """Return the cumulative conditioned pmf over min..max."""
        low, high = self.min - self.offset, self.max - self.offset
        if high - low <= _CACHED_CDF_MAX_LENGTH:
            return _cached_truncated_poisson_cdf(self.lam, low, high)
        return _truncated_poisson_cdf(self.lam, low, high)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        cdf = self._cdf()
        u = rng.random(size) * cdf[-1]
        index = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
        return (self.min + index).astype(np.float64)

    def support(self) -> tuple[float, float]:
        return (float(self.min), float(self.max))


def _truncated_poisson_cdf(lam: float, low: int, high: int) -> NDArray[np.float64]:
    """Return the CDF of Poisson(lam) conditioned on low..high.

    The pmf is computed in log space and scaled by its largest term, so an
    interval far in either tail keeps its shape instead of underflowing to 0.
    """
    log_pmf = stats.poisson.logpmf(np.arange(low, high + 1), lam)
    weights = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf.setflags(write=False)
    return cdf


# CDF tables up to this length (at most 32 KiB each) are cached per process,
# which makes a draw from a preset cost microseconds instead of a scipy call.
_CACHED_CDF_MAX_LENGTH = 4096
_cached_truncated_poisson_cdf = functools.lru_cache(maxsize=256)(_truncated_poisson_cdf)


class ChoiceSpec(_Spec):
    type: Literal["choice"]
    options: Annotated[list[Number], Field(min_length=1, max_length=10_000)]
    probs: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = None

    @model_validator(mode="after")
    def _check_probs(self) -> ChoiceSpec:
        if self.probs is None:
            return self
        if len(self.probs) != len(self.options):
            raise ValueError(
                f"probs must have one entry per option: {len(self.options)} "
                f"options but {len(self.probs)} probs"
            )
        total = math.fsum(self.probs)
        if not math.isclose(total, 1.0, rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"probs must sum to 1 within 1e-9, got sum {total!r}")
        return self

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
        options = np.asarray(self.options, dtype=np.float64)
        if self.probs is None:
            return options[rng.integers(0, len(options), size)]
        cdf = np.cumsum(self.probs)
        u = rng.random(size) * cdf[-1]
        index = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
        return options[index]

    def support(self) -> tuple[float, float]:
        return (min(self.options), max(self.options))


SPEC_CLASSES = (
    FixedSpec,
    UniformSpec,
    RangeSpec,
    NormalSpec,
    TruncatedNormalSpec,
    TruncatedLognormalSpec,
    PoissonSpec,
    TruncatedPoissonSpec,
    ChoiceSpec,
)

DistributionSpec = Annotated[
    FixedSpec
    | UniformSpec
    | RangeSpec
    | NormalSpec
    | TruncatedNormalSpec
    | TruncatedLognormalSpec
    | PoissonSpec
    | TruncatedPoissonSpec
    | ChoiceSpec,
    Field(discriminator="type"),
]

DISTRIBUTION_TYPES = (
    "fixed",
    "uniform",
    "range",
    "normal",
    "truncated_normal",
    "truncated_lognormal",
    "poisson",
    "truncated_poisson",
    "choice",
)
