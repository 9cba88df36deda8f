"""Shared fixtures and helpers for the gmmserve test suite."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

# Tests that need Redis fail instead of skipping when CI is set, so a CI
# machine without Redis cannot pass by skipping them.
IN_CI = bool(os.environ.get("CI"))

SMALL_CONFIG: dict[str, Any] = {
    "dim": 2,
    "cluster_params": {"type": "range", "min": 2, "max": 5},
    "snr_db_params": {"type": "uniform", "min": 3.0, "max": 15.0},
    "sample_count_distribution": {"type": "range", "min": 20, "max": 40},
    "vary_parameter_in_batch": True,
    "random_seed": 11,
}


@pytest.fixture
def small_config() -> dict[str, Any]:
    """Return a fresh copy of a config whose batches take microseconds."""
    return {
        key: dict(value) if isinstance(value, dict) else value
        for key, value in SMALL_CONFIG.items()
    }


def assert_same_batch(
    expected: tuple[Any, dict[str, Any]], actual: tuple[Any, dict[str, Any]]
) -> None:
    """Assert two loader outputs are equal bit for bit, array by array."""
    expected_data, expected_targets = expected
    actual_data, actual_targets = actual
    assert expected_data.dtype == actual_data.dtype
    assert np.array_equal(expected_data, actual_data)
    array_names = [
        name for name, value in expected_targets.items() if isinstance(value, np.ndarray)
    ]
    assert array_names == [
        name for name, value in actual_targets.items() if isinstance(value, np.ndarray)
    ]
    for name in array_names:
        left, right = expected_targets[name], actual_targets[name]
        assert left.dtype == right.dtype, name
        assert left.tobytes() == right.tobytes(), name
