"""Data config: schema, presets, limits and validation.

A data config is a JSON object. Every key, its default and its accepted
range are in ``docs/generator.md``. Validation runs once, when a config is
loaded, and reports the first invalid key as a :class:`ConfigError` naming
the key, the value given and the accepted range. Every value of a
validated :class:`DataConfig` is in range, so generating a batch from it
raises no validation error (the fuzz tests check this on random configs).

Preset names (``"few"``, ``"easy"``, ``"fixed_moderate"``, ...) are replaced
by their specs from the bundled ``parameter_presets.json``. The keys
``vary_clusters_in_batch``, ``uniform_sample_count`` and ``num_workers`` are
accepted with a :class:`LegacyKeyWarning` and change nothing. Any other
unknown key is an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gmmserve.distributions import DISTRIBUTION_TYPES, SPEC_CLASSES, DistributionSpec
from gmmserve.errors import ConfigError, LegacyKeyWarning

__all__ = [
    "DataConfig",
    "Limits",
    "experiment_names",
    "load_config",
    "load_experiment",
    "presets",
]

LEGACY_KEYS = ("vary_clusters_in_batch", "uniform_sample_count", "num_workers")
PRESET_KEYS = ("cluster_params", "snr_db_params", "sample_count_distribution")
CONTROL_MODES = ("snr", "mi", "mi_factor")

# Seeds must be exact in every JSON reader, including those that parse
# numbers as IEEE doubles.
MAX_SEED = 2**53 - 1


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one config or batch may ask for.

    The defaults keep one batch of the largest allowed shape under about
    1 GiB of float32 points.
    """

    max_dim: int = 256
    max_clusters: int = 256
    max_points: int = 100_000
    max_batch_size: int = 4096
    max_batch_elements: int = 256 * 1024 * 1024
    max_snr_db: float = 100.0


DEFAULT_LIMITS = Limits()


@functools.cache
def presets() -> dict[str, dict[str, dict[str, Any]]]:
    """Return the bundled preset tables, keyed by config key then name."""
    text = resources.files("gmmserve.data").joinpath("parameter_presets.json")
    loaded: dict[str, dict[str, dict[str, Any]]] = json.loads(text.read_text())
    return loaded


@functools.cache
def _experiments() -> dict[str, dict[str, Any]]:
    text = resources.files("gmmserve.data").joinpath("experiment_data_configs.json")
    loaded: dict[str, dict[str, Any]] = json.loads(text.read_text())
    return loaded


def experiment_names() -> list[str]:
    """Return the names of the bundled experiment configs."""
    return list(_experiments())


def experiment_config(name: str) -> dict[str, Any]:
    """Return a copy of the raw bundled experiment config ``name``."""
    configs = _experiments()
    if name not in configs:
        raise ConfigError(
            "experiment",
            f"unknown experiment {_quote(name)}; accepted names: "
            f"{', '.join(configs)}",
        )
    return json.loads(json.dumps(configs[name]))


class _ResolvedConfig(BaseModel):
    """The schema after presets are expanded and legacy keys removed."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        validate_default=True,
    )

    dim: int = Field(default=3, ge=1)
    cluster_params: DistributionSpec = Field(
        default_factory=lambda: {"type": "fixed", "value": 3}  # type: ignore[arg-type,return-value]
    )
    snr_db_params: DistributionSpec = Field(
        default_factory=lambda: {"type": "fixed", "value": 5.0}  # type: ignore[arg-type,return-value]
    )
    sample_count_distribution: DistributionSpec = Field(
        default_factory=lambda: {"type": "fixed", "value": 1000}  # type: ignore[arg-type,return-value]
    )
    mi_factor_params: DistributionSpec = Field(
        default_factory=lambda: {"type": "fixed", "value": 0.8}  # type: ignore[arg-type,return-value]
    )
    mi_params: DistributionSpec | None = None
    alpha_dirichlet: float = Field(default=1.0, ge=1e-3, le=1e6)
    random_seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    control_mode: Literal["snr", "mi", "mi_factor"] = "snr"
    vary_parameter_in_batch: bool = False
    # SNR mode only: estimate each item's MI for the ``mi`` and ``mi_factor``
    # outputs, which are NaN otherwise. It is off by default because the
    # estimate costs more than drawing the points. MI modes always estimate.
    estimate_mi: bool = False


_RESOLVED_ADAPTER = TypeAdapter(_ResolvedConfig)


@dataclass(frozen=True)
class DataConfig:
    """A validated data config.

    Attributes
    ----------
    resolved : dict
        Every key with its value or default, presets expanded into specs;
        this is what the fingerprint hashes and what state documents carry.
    """

    resolved: dict[str, Any]
    model: _ResolvedConfig

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def control_mode(self) -> str:
        return self.model.control_mode

    @property
    def fingerprint(self) -> str:
        """Return the SHA-256 hex digest of the canonical resolved config."""
        return hashlib.sha256(canonical_json(self.resolved).encode()).hexdigest()

    def to_json(self) -> str:
        return canonical_json(self.resolved)


def canonical_json(value: Any) -> str:
    """Serialize ``value`` with sorted keys and no spaces, rejecting NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# Values and keys echoed in error messages are cut to this many characters,
# so a hostile input cannot make a message as large as itself.
MAX_ECHO_CHARS = 64


def _clip(text: str) -> str:
    if len(text) <= MAX_ECHO_CHARS:
        return text
    return f"{text[: MAX_ECHO_CHARS - 3]}... ({len(text)} characters)"


def _quote(value: Any) -> str:
    """Return the repr of a name from the input, cut to MAX_ECHO_CHARS."""
    return _clip(repr(value))


def _describe_value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**60:
        return f"an integer of {len(str(abs(value)))} digits"
    text = (
        json.dumps(value, default=repr) if not isinstance(value, float) else repr(value)
    )
    return _clip(text)


def _top_level_range(field: str, limits: Limits) -> str | None:
    """Return the accepted range of a numeric top-level key, for error messages."""
    ranges = {
        "dim": f"an integer in [1, {limits.max_dim}]",
        "alpha_dirichlet": "a number in [0.001, 1000000.0]",
        "random_seed": f"null or an integer in [0, {MAX_SEED}]",
    }
    return ranges.get(field)


def _format_validation_error(
    error: ValidationError, limits: Limits | None = None
) -> ConfigError:
    """Turn pydantic's first error into a ConfigError naming key and value."""
    first = error.errors(include_url=False)[0]
    location = [str(part) for part in first["loc"]]
    # A discriminated union adds the spec type as a path element; drop it so
    # the path is the config's own keys.
    location = [part for part in location if part not in DISTRIBUTION_TYPES]
    field = ".".join(location) or "config"
    message = first["msg"]
    message = message.removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        message = (
            (
                f"unknown distribution type {_quote(first['input'].get('type'))}; "
                "accepted "
                f"types: {', '.join(DISTRIBUTION_TYPES)}"
            )
            if isinstance(first["input"], dict)
            else message
        )
    elif first["type"] == "union_tag_not_found":
        message = (
            "a distribution spec needs a 'type' key; accepted types: "
            + ", ".join(DISTRIBUTION_TYPES)
        )
    elif first["type"] == "missing":
        message = "missing required key"
    elif first["type"] == "extra_forbidden":
        message = "unknown key; accepted keys: " + ", ".join(
            _accepted_keys(first["loc"][:-1])
        )
    elif first["type"] == "value_error":
        # A model validator's message already names the values it checked.
        pass
    elif limits is not None and (accepted := _top_level_range(field, limits)):
        message = f"{_describe_value(first['input'])} is invalid; accepted: {accepted}"
    else:
        message = f"{message}, got {_describe_value(first['input'])}"
    return ConfigError(field, message)


def _accepted_keys(parent: tuple[Any, ...]) -> list[str]:
    """Return the keys accepted at a config path, for unknown-key errors."""
    if not parent:
        return sorted(
            [*_ResolvedConfig.model_fields, "vary_snr_in_batch", *LEGACY_KEYS]
        )
    spec_type = parent[-1]
    for spec_class in SPEC_CLASSES:
        if spec_class.model_fields["type"].annotation.__args__[0] == spec_type:
            return sorted(spec_class.model_fields)
    return []


def _resolve_preset(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    table = presets().get(key, {})
    if value not in table:
        accepted = ", ".join(table) if table else "none (give a spec object)"
        raise ConfigError(
            key, f"unknown preset {_quote(value)}; accepted presets: {accepted}"
        )
    return dict(table[value])


def _integer_knob_range(key: str, spec: Any, low: int, high: int, convert: str) -> None:
    """Check that a bounded spec's converted support lies within [low, high].

    Specs with unbounded support (normal, poisson without max) are accepted
    and their converted draws are clipped to [low, high].
    """
    lo, hi = spec.support()
    if math.isinf(lo) or math.isinf(hi):
        return
    if convert == "round":
        lo_int, hi_int = round(lo), round(hi)
    else:
        # Draws are truncated, so a spec reaching below 1 would give counts
        # of 0 that are then raised to 1 point: reject it instead.
        lo_int, hi_int = math.floor(lo), math.floor(hi)
    if lo_int < low or hi_int > high:
        raise ConfigError(
            key,
            f"draws convert to values in [{lo_int}, {hi_int}] but the accepted "
            f"range is [{low}, {high}]",
        )


def _float_knob_range(key: str, spec: Any, low: float, high: float) -> None:
    lo, hi = spec.support()
    if math.isinf(lo) or math.isinf(hi):
        return
    if lo < low or hi > high:
        raise ConfigError(
            key,
            f"the spec's draws lie in [{lo!r}, {hi!r}] but the accepted range is "
            f"[{low!r}, {high!r}]",
        )


def load_config(
    raw: dict[str, Any] | str,
    limits: Limits = DEFAULT_LIMITS,
    *,
    warn_legacy: bool = True,
) -> DataConfig:
    """Validate a data config and expand its presets.

    Parameters
    ----------
    raw : dict or str
        A config object, its JSON text, or the name of a bundled experiment
        config such as ``"standard"``.
    limits : Limits
        Upper bounds for dimension, clusters and points.
    warn_legacy : bool, default True
        Emit a LegacyKeyWarning per legacy key. Bundled experiments, loaded
        by name, never warn.

    Returns
    -------
    DataConfig

    Raises
    ------
    ConfigError
        When a key is unknown, a value has the wrong type or lies outside its
        accepted range, or a preset name is unknown.
    """
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text, parse_constant=_reject_constant)
            except json.JSONDecodeError as error:
                raise ConfigError("config", f"invalid JSON: {error}") from None
        else:
            # Bundled experiments carry legacy keys on purpose (they are real
            # configs); warning about them on every load would be noise.
            raw = experiment_config(text)
            warn_legacy = False
    if not isinstance(raw, dict):
        raise ConfigError("config", f"must be a JSON object, got {type(raw).__name__}")

    values = dict(raw)
    for key in LEGACY_KEYS:
        if key in values:
            values.pop(key)
            if not warn_legacy:
                continue
            warnings.warn(
                f"config key {key!r} is accepted for compatibility and has no effect",
                LegacyKeyWarning,
                stacklevel=2,
            )
    # vary_snr_in_batch is the older name of vary_parameter_in_batch; when
    # both are present the newer one wins.
    if "vary_snr_in_batch" in values:
        older = values.pop("vary_snr_in_batch")
        values.setdefault("vary_parameter_in_batch", older)
    # mi_params and mi_factor_params have no presets, so a name there gets
    # the same "unknown preset" error, listing none.
    for key in (*PRESET_KEYS, "mi_params", "mi_factor_params"):
        if key in values:
            values[key] = _resolve_preset(key, values[key])

    try:
        model = _RESOLVED_ADAPTER.validate_python(values)
    except ValidationError as error:
        raise _format_validation_error(error, limits=limits) from None

    if model.dim > limits.max_dim:
        raise ConfigError(
            "dim",
            f"{_describe_value(model.dim)} is invalid; accepted: "
            f"{_top_level_range('dim', limits)}",
        )
    _integer_knob_range(
        "cluster_params", model.cluster_params, 1, limits.max_clusters, "round"
    )
    _integer_knob_range(
        "sample_count_distribution",
        model.sample_count_distribution,
        1,
        limits.max_points,
        "trunc",
    )
    if model.control_mode == "snr":
        _float_knob_range(
            "snr_db_params", model.snr_db_params, -limits.max_snr_db, limits.max_snr_db
        )
    elif model.control_mode == "mi_factor":
        _float_knob_range("mi_factor_params", model.mi_factor_params, 0.0, 1.0)
    else:
        _check_mi_params(model, limits)

    resolved = model.model_dump(mode="json", exclude_none=False)
    if resolved["mi_params"] is None:
        del resolved["mi_params"]
    return DataConfig(resolved=resolved, model=model)


def _check_mi_params(model: _ResolvedConfig, limits: Limits) -> None:
    """Check that MI targets lie below ln K, the MI as noise vanishes."""
    if model.mi_params is None:
        raise ConfigError(
            "mi_params", "required when control_mode is 'mi' (a spec of MI in nats)"
        )
    _, k_high = model.cluster_params.support()
    k_max = limits.max_clusters if math.isinf(k_high) else max(1, round(k_high))
    reachable = math.log(k_max)
    lo, hi = model.mi_params.support()
    if lo < 0.0 or hi >= reachable or math.isinf(hi):
        raise ConfigError(
            "mi_params",
            f"MI targets in [{lo!r}, {hi!r}] nats cannot all be reached; with at "
            f"most {k_max} clusters the reachable range is [0, {reachable:.6f}) "
            "nats (ln of the cluster count)",
        )


def _reject_constant(name: str) -> float:
    raise ConfigError(
        "config", f"{name} is not a finite number; JSON configs accept none"
    )


def load_experiment(name: str, limits: Limits = DEFAULT_LIMITS) -> DataConfig:
    """Load the bundled experiment config ``name``."""
    return load_config(experiment_config(name), limits, warn_legacy=False)
