"""Config validation: errors name the key, the value and the accepted range."""

from __future__ import annotations

import warnings

import pytest

from gmmserve.config import experiment_names, load_config, load_experiment
from gmmserve.errors import ConfigError, LegacyKeyWarning


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "fixed", "value": 0}, "values in [0, 0] but the accepted range is [1, "),
        ({"type": "fixed", "value": 0.5}, "values in [0, 0] but the accepted range is [1, "),
        ({"type": "uniform", "min": -5, "max": 10}, "values in [-5, 10]"),
    ],
    ids=["zero", "half", "negative-min"],
)
def test_config_sample_counts_below_one_rejected(spec, message):
    with pytest.raises(ConfigError, match="sample_count_distribution") as raised:
        load_config({"sample_count_distribution": spec})
    assert message in str(raised.value)


def test_config_cluster_count_rounding_to_zero_rejected():
    with pytest.raises(ConfigError, match=r"cluster_params: .*\[0, 0\]"):
        load_config({"cluster_params": {"type": "fixed", "value": 0.4}})


def test_config_order_error_names_values_once():
    with pytest.raises(ConfigError) as raised:
        load_config({"snr_db_params": {"type": "uniform", "min": 10.0, "max": 5.0}})
    assert str(raised.value) == (
        "snr_db_params: min must be less than max, got min=10.0, max=5.0"
    )


@pytest.mark.parametrize("name", experiment_names())
def test_config_bundled_experiments_load_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_name = load_config(name)
        by_function = load_experiment(name)
    assert by_name.resolved == by_function.resolved


def test_config_legacy_key_in_user_config_warns():
    with pytest.warns(LegacyKeyWarning, match="'num_workers'"):
        resolved = load_config({"num_workers": 4}).resolved
    assert "num_workers" not in resolved


@pytest.mark.parametrize(
    "config",
    [
        {"snr_db_params": "y" * 10_000},
        {"cluster_params": {"type": "q" * 10_000}},
        {"dim": 10**4000},
    ],
    ids=["preset", "spec-type", "huge-integer"],
)
def test_config_long_values_are_cut_in_messages(config):
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert len(str(raised.value)) < 600


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dim": 3.0}, "dim: 3.0 is invalid; accepted: an integer in [1, 256]"),
        ({"dim": "3"}, 'dim: "3" is invalid; accepted: an integer in [1, 256]'),
        ({"dim": 0}, "dim: 0 is invalid; accepted: an integer in [1, 256]"),
        ({"dim": 257}, "dim: 257 is invalid; accepted: an integer in [1, 256]"),
        (
            {"alpha_dirichlet": 0},
            "alpha_dirichlet: 0 is invalid; accepted: a number in [0.001, 1000000.0]",
        ),
        (
            {"random_seed": 1.5},
            "random_seed: 1.5 is invalid; accepted: null or an integer in "
            "[0, 9007199254740991]",
        ),
    ],
    ids=["float-dim", "string-dim", "zero-dim", "large-dim", "zero-alpha", "float-seed"],
)
def test_config_numeric_key_errors_state_range(config, message):
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert str(raised.value) == message
