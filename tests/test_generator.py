"""Tests of generate_batch: laws of its outputs, reports, modes, determinism."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from gmmserve import noise
from gmmserve.config import experiment_names, load_config
from gmmserve.errors import ConfigError, LegacyKeyWarning
from gmmserve.generator import ARRAY_NAMES, Batch, generate_batch
from gmmserve.loader import GMMDataLoader
from scipy import stats

P_MIN = 1e-3


def _config(**overrides: Any) -> Any:
    raw: dict[str, Any] = {
        "dim": 2,
        "cluster_params": {"type": "fixed", "value": 4},
        "snr_db_params": {"type": "uniform", "min": 0.0, "max": 15.0},
        "sample_count_distribution": {"type": "fixed", "value": 50},
        "vary_parameter_in_batch": True,
    }
    raw.update(overrides)
    return load_config(raw)


def _batches(config: Any, count: int, batch_size: int, seed: int = 5) -> list[Batch]:
    return [
        generate_batch(config, seed, "test", 0, index, batch_size)
        for index in range(count)
    ]


def _stack(batches: list[Batch], name: str) -> np.ndarray:
    return np.concatenate([batch.arrays[name] for batch in batches])


def test_generator_output_dtypes_and_shapes() -> None:
    batch = generate_batch(_config(dim=3), 1, "test", 0, 0, 6)
    expected = {
        "data": (np.float32, (6, 50, 3)),
        "centers": (np.float32, (6, 4, 3)),
        "labels": (np.int64, (6, 50)),
        "weights": (np.float64, (6, 4)),
        "noise_std": (np.float64, (6,)),
        "snr_db": (np.float64, (6,)),
        "mi": (np.float64, (6,)),
        "mi_factor": (np.float64, (6,)),
        "mi_target": (np.float64, (6,)),
    }
    assert tuple(batch.arrays) == ARRAY_NAMES
    for name, (dtype, shape) in expected.items():
        assert batch.arrays[name].dtype == dtype, name
        assert batch.arrays[name].shape == shape, name


def test_generator_weights_follow_dirichlet() -> None:
    """Each weight of Dirichlet(alpha 1_K) is Beta(alpha, (K - 1) alpha)."""
    config = _config(alpha_dirichlet=0.5)
    weights = _stack(_batches(config, 10, 2000), "weights")
    assert np.allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    for k in range(4):
        result = stats.kstest(weights[:, k], stats.beta(0.5, 1.5).cdf)
        assert result.pvalue > P_MIN, k


def test_generator_centers_standard_normal() -> None:
    centers = _stack(_batches(_config(), 10, 2000), "centers").ravel()
    assert stats.kstest(centers.astype(np.float64), stats.norm.cdf).pvalue > P_MIN


def test_generator_points_given_label_normal() -> None:
    """(point - center[label]) / sigma is N(0, 1) in every coordinate."""
    batches = _batches(_config(dim=3), 20, 200)
    residuals = []
    for batch in batches:
        arrays = batch.arrays
        item = np.arange(len(arrays["labels"]))[:, None]
        centers = arrays["centers"][item, arrays["labels"]].astype(np.float64)
        offset = arrays["data"].astype(np.float64) - centers
        residuals.append((offset / arrays["noise_std"][:, None, None]).ravel())
    standardized = np.concatenate(residuals)
    assert len(standardized) == 20 * 200 * 50 * 3
    assert stats.kstest(standardized, stats.norm.cdf).pvalue > P_MIN


def test_generator_labels_follow_weights() -> None:
    config = _config(sample_count_distribution={"type": "fixed", "value": 100_000})
    batch = generate_batch(config, 3, "test", 0, 0, 2)
    for item in range(2):
        observed = np.bincount(batch.arrays["labels"][item], minlength=4)
        expected = batch.arrays["weights"][item] * 100_000
        assert stats.chisquare(observed, expected).pvalue > P_MIN


def test_generator_cluster_count_rounds_half_even() -> None:
    for value, expected in ((2.5, 2), (3.5, 4)):
        config = _config(cluster_params={"type": "fixed", "value": value})
        assert (
            generate_batch(config, 1, "test", 0, 0, 1).arrays["centers"].shape[1]
            == expected
        )


def test_generator_point_count_truncates() -> None:
    config = _config(sample_count_distribution={"type": "fixed", "value": 99.9})
    assert generate_batch(config, 1, "test", 0, 0, 1).data.shape[1] == 99


def _signal_variance_fsum(weights: np.ndarray, centers: np.ndarray) -> float:
    dim = centers.shape[1]
    total = []
    for d in range(dim):
        first = math.fsum(weights * centers[:, d])
        second = math.fsum(weights * centers[:, d] ** 2)
        total.append(second - first * first)
    return float(math.fsum(total) / dim)


@pytest.mark.parametrize("name", experiment_names())
def test_generator_snr_report_recomputes(name: str) -> None:
    """noise_std follows from snr_db, the float32 centers and the weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyKeyWarning)
        config = load_config(name)
    batch = generate_batch(config, 42, "train", 0, 3, 16)
    arrays = batch.arrays
    for item in range(16):
        centers = arrays["centers"][item].astype(np.float64)
        s2 = _signal_variance_fsum(arrays["weights"][item], centers)
        expected = math.sqrt(s2 / 10 ** (arrays["snr_db"][item] / 10))
        assert arrays["noise_std"][item] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mode", ["mi", "mi_factor"])
def test_generator_mi_modes_report_consistent_snr(mode: str) -> None:
    config = _config(
        control_mode=mode,
        mi_params={"type": "uniform", "min": 0.1, "max": 1.0},
        mi_factor_params={"type": "uniform", "min": 0.1, "max": 0.9},
    )
    arrays = generate_batch(config, 2, "test", 0, 0, 12).arrays
    for item in range(12):
        centers = arrays["centers"][item].astype(np.float64)
        s2 = _signal_variance_fsum(arrays["weights"][item], centers)
        snr_db = 10 * math.log10(s2 / arrays["noise_std"][item] ** 2)
        assert arrays["snr_db"][item] == pytest.approx(snr_db, rel=1e-9)


def test_generator_mi_mode_from_config() -> None:
    config = load_config(
        json.dumps(
            {
                "dim": 3,
                "cluster_params": {"type": "fixed", "value": 5},
                "sample_count_distribution": {"type": "fixed", "value": 20},
                "control_mode": "mi",
                "mi_params": {"type": "uniform", "min": 0.2, "max": 1.2},
                "vary_parameter_in_batch": True,
            }
        )
    )
    arrays = generate_batch(config, 9, "test", 0, 0, 32).arrays
    h = noise.entropy(arrays["weights"])
    expected_target = np.clip(arrays["mi_target"], 1e-3 * h, 0.999 * h)
    assert np.array_equal(arrays["mi_target"], expected_target)
    assert np.all(arrays["mi_target"] >= 1e-3 * h)
    assert np.all(
        np.abs(arrays["mi"] - arrays["mi_target"]) <= 1e-4 * arrays["mi_target"]
    )
    assert np.array_equal(arrays["mi_factor"], np.clip(arrays["mi"] / h, 0, 1))
    assert len(set(arrays["mi_target"].tolist())) > 1


def test_generator_mi_factor_mode_reports_factor() -> None:
    config = _config(
        control_mode="mi_factor",
        mi_factor_params={"type": "uniform", "min": 0.0, "max": 1.0},
    )
    arrays = generate_batch(config, 4, "test", 0, 0, 32).arrays
    h = noise.entropy(arrays["weights"])
    factor = arrays["mi_factor"]
    assert np.all((factor >= 0) & (factor <= 1))
    assert np.array_equal(arrays["mi_target"], noise.clip_mi_target(factor * h, h))
    assert np.all(
        np.abs(arrays["mi"] - arrays["mi_target"]) <= 1e-4 * arrays["mi_target"]
    )
    assert np.all(np.isfinite(arrays["noise_std"]))
    assert np.all(arrays["noise_std"] > 0)


def test_generator_snr_mode_mi_only_when_asked() -> None:
    plain = generate_batch(_config(), 6, "test", 0, 0, 8).arrays
    asked = generate_batch(_config(estimate_mi=True), 6, "test", 0, 0, 8).arrays
    assert np.all(np.isnan(plain["mi"]))
    assert np.all(np.isnan(plain["mi_factor"]))
    for name in ("data", "centers", "labels", "weights", "noise_std", "snr_db"):
        assert plain[name].tobytes() == asked[name].tobytes(), name
    expected = noise.mutual_information(
        asked["weights"], asked["centers"].astype(np.float64), asked["noise_std"]
    )
    assert np.array_equal(asked["mi"], expected)
    h = noise.entropy(asked["weights"])
    assert np.array_equal(asked["mi_factor"], np.clip(expected / h, 0, 1))


@pytest.mark.parametrize("mode", ["snr", "mi", "mi_factor"])
def test_generator_single_cluster_is_defined(mode: str) -> None:
    """A batch whose K is 1 has zero signal variance in every item."""
    config = _config(
        cluster_params={"type": "range", "min": 1, "max": 3},
        control_mode=mode,
        mi_params={"type": "fixed", "value": 0.3},
        estimate_mi=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = _batches(config, 12, 4)
    single = [batch for batch in batches if batch.arrays["centers"].shape[1] == 1]
    assert single, "no batch with one cluster among the first 12"
    for batch in single:
        arrays = batch.arrays
        assert arrays["noise_std"].tolist() == [1.0] * 4
        assert arrays["snr_db"].tolist() == [-math.inf] * 4
        assert arrays["mi"].tolist() == [0.0] * 4
        assert arrays["mi_factor"].tolist() == [0.0] * 4
        assert np.all(arrays["labels"] == 0)


def test_generator_mi_mode_single_cluster_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        _config(
            cluster_params={"type": "fixed", "value": 1},
            control_mode="mi",
            mi_params={"type": "fixed", "value": 0.1},
        )
    assert caught.value.field == "mi_params"
    assert "[0, 0.000000)" in caught.value.message


@pytest.mark.parametrize("mode", ["snr", "mi", "mi_factor"])
def test_generator_tiny_alpha_never_fails(mode: str) -> None:
    """alpha 1e-3 gives weights of exactly 0 and 1, and near-empty mixtures."""
    config = _config(
        alpha_dirichlet=1e-3,
        control_mode=mode,
        mi_params={"type": "uniform", "min": 0.01, "max": 1.3},
        estimate_mi=True,
        cluster_params={"type": "fixed", "value": 6},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = _batches(config, 4, 32, seed=17)
    for batch in batches:
        arrays = batch.arrays
        assert np.all(np.isfinite(arrays["noise_std"]))
        assert np.all(arrays["noise_std"] > 0)
        assert np.all(np.isfinite(arrays["mi"]))
        assert np.all(np.isfinite(arrays["data"]))
        degenerate = (
            noise.signal_variance(
                arrays["weights"], arrays["centers"].astype(np.float64)
            )
            == 0
        )
        assert np.all(arrays["snr_db"][degenerate] == -math.inf)
    weights = _stack(batches, "weights")
    assert np.any(weights.max(axis=1) == 1.0)


def test_generator_mi_target_above_ln_k_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        _config(
            control_mode="mi", mi_params={"type": "uniform", "min": 0.5, "max": 1.5}
        )
    assert caught.value.field == "mi_params"
    assert "1.386294" in caught.value.message
    assert "[0, 1.386294)" in caught.value.message


def test_generator_mi_mode_needs_mi_params() -> None:
    with pytest.raises(ConfigError) as caught:
        _config(control_mode="mi")
    assert caught.value.field == "mi_params"


def test_generator_negative_mi_target_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        _config(
            control_mode="mi", mi_params={"type": "normal", "mean": 0.5, "std": 0.1}
        )
    assert caught.value.field == "mi_params"


_FINGERPRINT_CODE = """
import json, sys, warnings
warnings.simplefilter("ignore")
from gmmserve.config import load_config
from gmmserve.generator import generate_batch
raw = json.loads(sys.argv[1])
batch = generate_batch(load_config(raw), 123, "train", 2, 7, 16)
print(batch.fingerprint())
"""

_MODE_CONFIGS: dict[str, dict[str, Any]] = {
    "snr": {"estimate_mi": True},
    "mi_factor": {"control_mode": "mi_factor"},
    "mi": {
        "control_mode": "mi",
        "mi_params": {"type": "uniform", "min": 0.1, "max": 1.0},
    },
}


@pytest.mark.parametrize("mode", list(_MODE_CONFIGS))
def test_generator_same_bits_in_new_process(mode: str) -> None:
    raw = {
        "dim": 3,
        "cluster_params": "moderate",
        "snr_db_params": "moderate",
        "sample_count_distribution": "small",
        "vary_parameter_in_batch": True,
        **_MODE_CONFIGS[mode],
    }
    output = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT_CODE, json.dumps(raw)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    batch = generate_batch(load_config(raw), 123, "train", 2, 7, 16)
    assert output == batch.fingerprint()
    again = generate_batch(load_config(raw), 123, "train", 2, 7, 16)
    assert again.fingerprint() == batch.fingerprint()


def test_generator_same_bits_after_restore() -> None:
    raw = {
        "dim": 2,
        "cluster_params": "few",
        "sample_count_distribution": "small",
        "control_mode": "mi_factor",
        "mi_factor_params": {"type": "uniform", "min": 0.2, "max": 0.9},
        "vary_parameter_in_batch": True,
    }
    loader = GMMDataLoader(
        raw, batch_size=8, num_samples=40, base_seed=3, loader_id="train"
    )
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [
        loader.batch_at(0, 2).fingerprint(),
        loader.batch_at(0, 3).fingerprint(),
    ]
    restored = GMMDataLoader(
        raw, batch_size=8, num_samples=40, base_seed=3, loader_id="train"
    )
    restored.restore_state(state)
    assert (restored.current_epoch, restored.current_batch) == (0, 2)
    actual = [
        restored.batch_at(restored.current_epoch, restored.current_batch).fingerprint(),
        restored.batch_at(0, 3).fingerprint(),
    ]
    assert actual == expected


def test_generator_unbounded_snr_clipped() -> None:
    config = _config(snr_db_params={"type": "normal", "mean": 0.0, "std": 1000.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays = generate_batch(config, 8, "test", 0, 0, 64).arrays
    assert np.all(np.abs(arrays["snr_db"]) <= 100.0)
    assert np.any(np.abs(arrays["snr_db"]) == 100.0)
    assert np.all(np.isfinite(arrays["noise_std"]))
    assert np.all(arrays["noise_std"] > 0)
    assert np.all(np.isfinite(arrays["data"]))
