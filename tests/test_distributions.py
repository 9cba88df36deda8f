"""Tests of the distribution specs, presets and integer-knob conversions.

Every law is checked with 10^5 draws from a fixed seed: Kolmogorov-Smirnov
for continuous laws and chi-square for discrete ones, at p > 0.001. The
seeds are fixed, so each test passes or fails the same way on every run.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from gmmserve.config import load_config
from gmmserve.distributions import DistributionSpec
from gmmserve.errors import ConfigError
from gmmserve.generator import _to_clusters, _to_count
from pydantic import TypeAdapter
from scipy import stats

DRAWS = 100_000
P_MIN = 1e-3
_ADAPTER: TypeAdapter[Any] = TypeAdapter(DistributionSpec)


def _draw(spec: dict[str, Any], seed: int = 1234) -> np.ndarray:
    model = _ADAPTER.validate_python(spec)
    values = model.sample(np.random.Generator(np.random.Philox(seed)), DRAWS)
    assert values.dtype == np.float64
    assert values.shape == (DRAWS,)
    return values


def _chi_square_p(values: np.ndarray, support: np.ndarray, probs: np.ndarray) -> float:
    """Return the chi-square p-value of integer draws against exact probs.

    Cells with an expected count below 5 are merged into their neighbor.
    """
    observed = np.array([np.count_nonzero(values == v) for v in support], dtype=float)
    assert observed.sum() == len(values), "draws outside the support"
    expected = probs * len(values)
    merged_observed, merged_expected = [], []
    current_observed = current_expected = 0.0
    for o, e in zip(observed, expected):
        current_observed += o
        current_expected += e
        if current_expected >= 5:
            merged_observed.append(current_observed)
            merged_expected.append(current_expected)
            current_observed = current_expected = 0.0
    merged_observed[-1] += current_observed
    merged_expected[-1] += current_expected
    return float(stats.chisquare(merged_observed, merged_expected).pvalue)


def test_distributions_fixed_value() -> None:
    values = _draw({"type": "fixed", "value": 7.25})
    assert np.all(values == 7.25)


def test_distributions_fixed_older_key() -> None:
    values = _draw({"type": "fixed", "n": 3})
    assert np.all(values == 3.0)


def test_distributions_uniform_law() -> None:
    values = _draw({"type": "uniform", "min": -2.0, "max": 5.0})
    assert values.min() >= -2.0
    assert values.max() < 5.0
    assert stats.kstest(values, stats.uniform(-2.0, 7.0).cdf).pvalue > P_MIN


def test_distributions_range_law() -> None:
    values = _draw({"type": "range", "min": -3, "max": 4})
    assert np.all(values == np.round(values))
    support = np.arange(-3, 5)
    assert _chi_square_p(values, support, np.full(8, 1 / 8)) > P_MIN


def test_distributions_normal_law() -> None:
    values = _draw({"type": "normal", "mean": 1.5, "std": 0.25})
    assert stats.kstest(values, stats.norm(1.5, 0.25).cdf).pvalue > P_MIN


@pytest.mark.parametrize(
    ("mean", "low", "high"),
    [(9.0, 7.0, 12.0), (0.0, 6.0, 6.5), (0.0, -30.0, -29.0)],
    ids=["preset", "upper-tail", "far-lower-tail"],
)
def test_distributions_truncated_normal_law(
    mean: float, low: float, high: float
) -> None:
    values = _draw(
        {
            "type": "truncated_normal",
            "mean": mean,
            "std": 1.5 if mean else 1.0,
            "min": low,
            "max": high,
        }
    )
    std = 1.5 if mean else 1.0
    law = stats.truncnorm((low - mean) / std, (high - mean) / std, loc=mean, scale=std)
    assert values.min() >= low
    assert values.max() <= high
    assert stats.kstest(values, law.cdf).pvalue > P_MIN


def test_distributions_truncated_lognormal_law() -> None:
    spec = {
        "type": "truncated_lognormal",
        "mean": 6.9,
        "sigma": 0.3,
        "min": 500,
        "max": 1500,
    }
    values = _draw(spec)
    assert values.min() >= 500
    assert values.max() <= 1500
    a = (math.log(500) - 6.9) / 0.3
    b = (math.log(1500) - 6.9) / 0.3
    law = stats.truncnorm(a, b, loc=6.9, scale=0.3)
    assert stats.kstest(np.log(values), law.cdf).pvalue > P_MIN


def test_distributions_poisson_clipped_law() -> None:
    values = _draw({"type": "poisson", "lam": 4.0, "offset": 2, "min": 4, "max": 9})
    assert np.all(values == np.round(values))
    support = np.arange(4, 10)
    probs = stats.poisson.pmf(support - 2, 4.0)
    probs[0] = stats.poisson.cdf(4 - 2, 4.0)
    probs[-1] = stats.poisson.sf(9 - 2 - 1, 4.0)
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-12)
    assert _chi_square_p(values, support, probs) > P_MIN


def test_distributions_poisson_unbounded_above() -> None:
    values = _draw({"type": "poisson", "lam": 3.0})
    support = np.arange(0, int(values.max()) + 1)
    probs = stats.poisson.pmf(support, 3.0)
    probs[-1] += stats.poisson.sf(support[-1], 3.0)
    assert _chi_square_p(values, support, probs) > P_MIN


@pytest.mark.parametrize(
    ("lam", "low", "high"), [(2.5, 2, 4), (5.0, 3, 7), (8.0, 5, 15), (0.5, 6, 8)]
)
def test_distributions_truncated_poisson_law(lam: float, low: int, high: int) -> None:
    values = _draw({"type": "truncated_poisson", "lam": lam, "min": low, "max": high})
    support = np.arange(low, high + 1)
    probs = stats.poisson.pmf(support, lam)
    probs /= probs.sum()
    assert _chi_square_p(values, support, probs) > P_MIN


def test_distributions_choice_with_probs() -> None:
    values = _draw(
        {"type": "choice", "options": [1000, 3000, 7], "probs": [0.4, 0.5, 0.1]}
    )
    support = np.array([1000.0, 3000.0, 7.0])
    assert _chi_square_p(values, support, np.array([0.4, 0.5, 0.1])) > P_MIN


def test_distributions_choice_uniform() -> None:
    values = _draw({"type": "choice", "options": [2.5, -1.0, 4.0, 8.0]})
    support = np.array([2.5, -1.0, 4.0, 8.0])
    assert _chi_square_p(values, support, np.full(4, 0.25)) > P_MIN


def test_distributions_cluster_uniform_endpoints_half_weight() -> None:
    """Uniform [2, 20) rounded half to even: 2 and 20 get half the weight."""
    values = _draw({"type": "uniform", "min": 2, "max": 20})
    clusters = np.array([_to_clusters(values[i : i + 1], 256) for i in range(DRAWS)])
    support = np.arange(2, 21)
    probs = np.full(19, 1 / 18)
    probs[0] = probs[-1] = 0.5 / 18
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-12)
    assert _chi_square_p(clusters, support, probs) > P_MIN


def test_distributions_sample_count_uniform_truncates() -> None:
    """Uniform [500, 2000) truncated: N is uniform on 500..1999."""
    values = _draw({"type": "uniform", "min": 500, "max": 2000})
    counts = np.array([_to_count(values[i : i + 1], 1, 100_000) for i in range(DRAWS)])
    assert counts.min() >= 500
    assert counts.max() <= 1999
    support = np.arange(500, 2000)
    assert _chi_square_p(counts, support, np.full(1500, 1 / 1500)) > P_MIN


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2.5, 2), (3.5, 4), (2.49, 2), (0.2, 1), (-4.0, 1), (300.0, 256)],
)
def test_distributions_cluster_conversion(value: float, expected: int) -> None:
    assert _to_clusters(np.array([value]), 256) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(999.99, 999), (1.0, 1), (0.0, 1), (-3.0, 1), (1e9, 100_000)],
)
def test_distributions_count_conversion(value: float, expected: int) -> None:
    assert _to_count(np.array([value]), 1, 100_000) == expected


PRESETS = {
    ("cluster_params", "few"): {
        "type": "truncated_poisson",
        "lam": 2.5,
        "min": 2,
        "max": 4,
        "offset": 0,
    },
    ("cluster_params", "moderate"): {
        "type": "truncated_poisson",
        "lam": 5.0,
        "min": 3,
        "max": 7,
        "offset": 0,
    },
    ("cluster_params", "many"): {
        "type": "truncated_poisson",
        "lam": 8.0,
        "min": 5,
        "max": 15,
        "offset": 0,
    },
    ("snr_db_params", "easy"): {
        "type": "truncated_normal",
        "mean": 14.0,
        "std": 1.5,
        "min": 12.0,
        "max": 17.0,
    },
    ("snr_db_params", "moderate"): {
        "type": "truncated_normal",
        "mean": 9.0,
        "std": 1.5,
        "min": 7.0,
        "max": 12.0,
    },
    ("snr_db_params", "difficult"): {
        "type": "truncated_normal",
        "mean": 5.0,
        "std": 1.5,
        "min": 3.0,
        "max": 7.0,
    },
    ("sample_count_distribution", "small"): {
        "type": "truncated_lognormal",
        "mean": 5.7,
        "sigma": 0.3,
        "min": 100.0,
        "max": 500.0,
    },
    ("sample_count_distribution", "medium"): {
        "type": "truncated_lognormal",
        "mean": 6.9,
        "sigma": 0.3,
        "min": 500.0,
        "max": 1500.0,
    },
    ("sample_count_distribution", "large"): {
        "type": "truncated_lognormal",
        "mean": 8.0,
        "sigma": 0.3,
        "min": 1500.0,
        "max": 5000.0,
    },
    ("sample_count_distribution", "variable_large"): {
        "type": "truncated_lognormal",
        "mean": 8.0,
        "sigma": 0.3,
        "min": 2000.0,
        "max": 5000.0,
    },
    ("sample_count_distribution", "fixed_moderate"): {"type": "fixed", "value": 1000.0},
    ("sample_count_distribution", "fixed_large"): {"type": "fixed", "value": 3000.0},
    ("sample_count_distribution", "variable_moderate"): {
        "type": "uniform",
        "min": 500.0,
        "max": 2000.0,
    },
}


@pytest.mark.parametrize(("key", "name"), list(PRESETS))
def test_distributions_preset_resolves(key: str, name: str) -> None:
    config = load_config({key: name})
    assert config.resolved[key] == PRESETS[(key, name)]


@pytest.mark.parametrize(
    "key", ["cluster_params", "snr_db_params", "sample_count_distribution"]
)
def test_distributions_unknown_preset_names_choices(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({key: "medium_rare"})
    assert caught.value.field == key
    assert "'medium_rare'" in caught.value.message
    for name in (n for k, n in PRESETS if k == key):
        assert name in caught.value.message


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"type": "uniform", "min": 5, "max": 2}, "snr_db_params", "min=5"),
        (
            {"type": "truncated_normal", "mean": 0, "std": 0, "min": 1, "max": 2},
            "snr_db_params.std",
            "greater than 0",
        ),
        ({"type": "gaussian", "mean": 0}, "snr_db_params", "accepted types"),
        ({"mean": 0}, "snr_db_params", "needs a 'type' key"),
        (
            {"type": "normal", "mean": 0, "std": 1, "scale": 2},
            "snr_db_params.scale",
            "accepted keys",
        ),
        (
            {"type": "choice", "options": [1, 2], "probs": [0.3, 0.3]},
            "snr_db_params",
            "sum to 1",
        ),
        (
            {"type": "truncated_poisson", "lam": 2, "min": 5, "max": 3},
            "snr_db_params",
            "min=5",
        ),
    ],
)
def test_distributions_bad_spec_names_key(
    spec: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"snr_db_params": spec})
    assert caught.value.field == field
    assert fragment in caught.value.message


def test_distributions_cluster_range_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"cluster_params": {"type": "range", "min": 2, "max": 400}})
    assert caught.value.field == "cluster_params"
    assert "[1, 256]" in caught.value.message


def test_distributions_mi_factor_range_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            {
                "control_mode": "mi_factor",
                "mi_factor_params": {"type": "uniform", "min": 0.5, "max": 1.5},
            }
        )
    assert caught.value.field == "mi_factor_params"
    assert "[0.0, 1.0]" in caught.value.message


def test_distributions_draws_need_no_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _draw(
            {
                "type": "truncated_normal",
                "mean": 0.0,
                "std": 1.0,
                "min": 30.0,
                "max": 31.0,
            }
        )
        _draw({"type": "truncated_poisson", "lam": 1000.0, "min": 0, "max": 5})


@pytest.mark.parametrize("key", ["mi_params", "mi_factor_params"])
def test_distributions_no_presets_for_mi_keys(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"control_mode": "mi", key: "high"})
    assert caught.value.field == key
    assert "unknown preset 'high'" in caught.value.message
    assert "none (give a spec object)" in caught.value.message
