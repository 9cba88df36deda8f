"""GMMDataLoader: epochs and positions over the batch generator.

The loader's state is its position (epoch, batch) plus what fixes the data
(config, seed, loader id, batch size, samples per epoch, fixed data). Every
batch is computed from its position, so ``save_state`` writes a few numbers
and ``restore_state`` and ``seek`` cost nothing, whatever the position.

Iteration follows the usual loader protocol. ``iter(loader)`` returns the
loader without moving it, so iterating again inside an epoch continues that
epoch. ``next`` returns ``(data, targets)`` and, after the last batch of an
epoch, raises StopIteration once and moves to batch 0 of the next epoch.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gmmserve.config import DEFAULT_LIMITS, MAX_SEED, DataConfig, Limits, load_config
from gmmserve.errors import StateError, StateMismatchError
from gmmserve.generator import Batch, derive_seed, generate_batch
from gmmserve.state import (
    FORMAT_VERSION,
    atomic_write_json,
    check_fingerprint,
    config_seed_fingerprint,
    read_state_file,
    validate_state,
)

__all__ = [
    "DataGenerator",
    "GMMDataLoader",
    "NumpyEncoder",
    "ParameterGenerator",
    "create_generators_from_config",
    "create_train_val_pair",
    "load_generator_state",
    "save_generator_state",
]

_LOGGER = logging.getLogger(__name__)


class NumpyEncoder(json.JSONEncoder):
    """JSON encoder that writes numpy arrays as lists and numpy scalars as numbers."""

    def default(self, o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.bool_):
            return bool(o)
        return super().default(o)


class _StreamGenerator:
    """One of a loader's two Philox streams, keyed by seed and loader id.

    The state is the key; which batch is drawn is the loader's position.
    """

    stream_name = ""

    def __init__(self, config: DataConfig, seed: int, loader_id: str) -> None:
        self.config = config
        self.seed = seed
        self.loader_id = loader_id

    def get_state(self) -> dict[str, Any]:
        return {
            "bit_generator": "Philox",
            "stream": self.stream_name,
            "seed": self.seed,
            "loader_id": self.loader_id,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Adopt the seed and loader id of a saved stream state.

        Raises
        ------
        StateError
            When the state is of another bit generator or stream, or its seed
            is not an integer in [0, 2^53 - 1].
        """
        if not isinstance(state, dict):
            raise StateError(f"{self.stream_name} state must be an object, got {state!r}")
        if state.get("bit_generator") != "Philox" or state.get("stream") != self.stream_name:
            raise StateError(
                f"expected a Philox {self.stream_name!r} stream state, got "
                f"bit_generator={state.get('bit_generator')!r}, stream={state.get('stream')!r}"
            )
        seed = state.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise StateError(f"stream seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        loader_id = state.get("loader_id")
        if not isinstance(loader_id, str):
            raise StateError(f"stream loader_id must be a string, got {loader_id!r}")
        self.seed = seed
        self.loader_id = loader_id


class ParameterGenerator(_StreamGenerator):
    """The stream that draws point counts, clusters, weights, centers and noise levels."""

    stream_name = "parameters"


class DataGenerator(_StreamGenerator):
    """The stream that draws labels and points given a batch's parameters."""

    stream_name = "points"


def create_generators_from_config(
    config: dict[str, Any] | DataConfig, state: dict[str, Any] | None = None
) -> tuple[ParameterGenerator, DataGenerator]:
    """Build the parameter and data generators of a config.

    The seed is the config's ``random_seed``, or one chosen at random when it
    is null. With ``state``, both generators adopt the saved stream states.
    """
    if isinstance(config, DataConfig):
        data_config = config
    else:
        data_config = load_config(config)
    seed = data_config.model.random_seed
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    param_generator = ParameterGenerator(data_config, seed, "default")
    data_generator = DataGenerator(data_config, seed, "default")
    if state is not None:
        param_generator.set_state(state["param_generator_state"])
        data_generator.set_state(state["data_generator_state"])
    return param_generator, data_generator


def save_generator_state(
    param_generator: ParameterGenerator,
    data_generator: DataGenerator,
    file_path: str | os.PathLike[str],
    additional_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a state document for the two generators and return it.

    The file is replaced atomically, so a crash during the write leaves the
    previous file whole.
    """
    config = param_generator.config
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "fingerprint": config_seed_fingerprint(config.resolved, param_generator.seed),
        "config": config.resolved,
        "param_generator_state": param_generator.get_state(),
        "data_generator_state": data_generator.get_state(),
    }
    if additional_state is not None:
        state.update(additional_state)
    # Round-trip through the encoder so numpy values become plain JSON.
    document: dict[str, Any] = json.loads(json.dumps(state, cls=NumpyEncoder, allow_nan=False))
    atomic_write_json(file_path, document)
    return document


def load_generator_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state document written by ``save_state`` or ``save_generator_state``."""
    return read_state_file(path)


def _checked_integer(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int, accepting numpy integers, or raise ValueError."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer in [{low}, {high}], got {value!r}"
        ) from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {number!r}")
    return number


class GMMDataLoader:
    """Batches and epochs of synthetic GMM datasets, resumable bit for bit.

    Parameters
    ----------
    config_dict : dict or str
        A data config, its JSON text, or a bundled experiment name such as
        ``"standard"``.
    batch_size : int, default 16
        Datasets per batch.
    num_samples : int, default 1000
        Datasets per epoch. The last batch of an epoch contains the remainder.
    device : str, optional
        When given and torch is installed, batches are torch tensors on it.
    base_seed : int, optional
        When given, the seed is base_seed + (md5(loader_id) mod 10^6);
        otherwise the config's ``random_seed``; when that is null too, a
        random seed that ``save_state`` records.
    loader_id : str, default "default"
        Keys the random stream, so loaders "train" and "val" differ.
    fixed_data : bool, default False
        Every epoch repeats the batches of epoch 0.
    state_path : str or path, optional
        Where ``save_state`` writes by default. When the file exists, the
        constructor restores from it.
    resume : bool, default False
        Requires ``state_path``; kept for compatibility, since an existing
        state file is always restored.
    seed : int, optional
        The effective seed itself, in [0, 2^53 - 1]; overrides ``base_seed``
        and the config's ``random_seed``. A server uses it to rebuild a
        session whose seed it chose and recorded.
    limits : Limits
        Upper bounds on batch size and batch element count.

    Raises
    ------
    ConfigError
        When the config is invalid.
    ValueError
        When batch_size or num_samples is below 1, or resume is set without
        a state_path.
    """

    def __init__(
        self,
        config_dict: dict[str, Any] | str,
        batch_size: int = 16,
        num_samples: int = 1000,
        device: str | None = None,
        base_seed: int | None = None,
        loader_id: str | None = None,
        fixed_data: bool = False,
        state_path: str | os.PathLike[str] | None = None,
        resume: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        seed: int | None = None,
    ) -> None:
        batch_size = _checked_integer("batch_size", batch_size, 1, limits.max_batch_size)
        num_samples = _checked_integer("num_samples", num_samples, 1, MAX_SEED)
        if base_seed is not None:
            base_seed = _checked_integer("base_seed", base_seed, 0, MAX_SEED - 1_000_000)
        if seed is not None:
            seed = _checked_integer("seed", seed, 0, MAX_SEED)
        if resume and state_path is None:
            raise ValueError("state_path must be provided when resume=True")

        self.config = config_dict if isinstance(config_dict, DataConfig) else load_config(
            config_dict, limits
        )
        self.config_dict = self.config.resolved
        self.limits = limits
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.device = device
        self.base_seed = base_seed
        # A stable default keeps the stream, and so resume, the same from run
        # to run; a per-object default would give every process other data.
        self.loader_id = loader_id if loader_id is not None else "default"
        self.fixed_data = fixed_data
        self.state_path = state_path
        self.resume = resume
        self.batches_per_epoch = math.ceil(num_samples / batch_size)
        self.current_epoch = 0
        self.current_batch = 0

        if seed is None:
            seed = derive_seed(base_seed, self.loader_id, self.config.model.random_seed)
        self._seed_chosen = seed is None
        self.seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        self.param_generator = ParameterGenerator(self.config, self.seed, self.loader_id)
        self.data_generator = DataGenerator(self.config, self.seed, self.loader_id)
        self._check_batch_elements()

        if state_path is not None and Path(state_path).exists():
            self.restore_state(load_generator_state(state_path))

    def _check_batch_elements(self) -> None:
        _, high = self.config.model.sample_count_distribution.support()
        points = self.limits.max_points if math.isinf(high) else max(1, int(high))
        elements = self.batch_size * points * self.config.dim
        if elements > self.limits.max_batch_elements:
            raise ValueError(
                f"a batch may hold up to {elements} point coordinates "
                f"(batch_size {self.batch_size} x {points} points x dim "
                f"{self.config.dim}); the limit is {self.limits.max_batch_elements}"
            )

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the resolved config and the seed."""
        return config_seed_fingerprint(self.config.resolved, self.seed)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch_size_at(self, batch_index: int) -> int:
        """Return the number of datasets in batch ``batch_index`` of an epoch."""
        if batch_index == self.batches_per_epoch - 1:
            return self.num_samples - (self.batches_per_epoch - 1) * self.batch_size
        return self.batch_size

    def batch_at(self, epoch: int, batch_index: int) -> Batch:
        """Generate the batch at a position without moving the loader."""
        if not 0 <= batch_index < self.batches_per_epoch:
            raise IndexError(
                f"batch_index {batch_index} is outside [0, {self.batches_per_epoch - 1}]"
            )
        return generate_batch(
            self.config,
            self.seed,
            self.loader_id,
            0 if self.fixed_data else epoch,
            batch_index,
            self.batch_size_at(batch_index),
            max_clusters=self.limits.max_clusters,
            max_points=self.limits.max_points,
        )

    def __iter__(self) -> GMMDataLoader:
        # A position at the end of an epoch whose StopIteration was never
        # raised moves on to the next epoch. This happens after a restore, a
        # seek, or a loop left after its last batch. A position inside an
        # epoch is kept.
        if self.current_batch >= self.batches_per_epoch:
            self.current_batch = 0
            self.current_epoch += 1
        return self

    def __next__(self) -> tuple[Any, dict[str, Any]]:
        if self.current_batch >= self.batches_per_epoch:
            self.current_batch = 0
            self.current_epoch += 1
            raise StopIteration
        batch = self.batch_at(self.current_epoch, self.current_batch)
        self.current_batch += 1
        return self._convert(batch.data, batch.targets())

    def _convert(self, data: Any, targets: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.device is None:
            return data, targets
        try:
            import torch
        except ImportError:
            warnings.warn(
                f"device={self.device!r} was given but torch is not installed; "
                "returning numpy arrays",
                RuntimeWarning,
                stacklevel=3,
            )
            return data, targets
        converted = {
            name: torch.from_numpy(value).to(self.device)
            if isinstance(value, np.ndarray)
            else value
            for name, value in targets.items()
        }
        return torch.from_numpy(data).to(self.device), converted

    def seek(self, epoch: int, batch: int) -> None:
        """Move to (epoch, batch); batch may equal batches_per_epoch (epoch end).

        The global index epoch * batches_per_epoch + batch must stay within
        [0, 2^53 - 1], so that every position in a state document is exact
        in any JSON reader and can be restored.
        """
        max_epoch = MAX_SEED // self.batches_per_epoch
        epoch = _checked_integer("epoch", epoch, 0, max_epoch)
        batch = _checked_integer("batch", batch, 0, self.batches_per_epoch)
        if epoch * self.batches_per_epoch + batch > MAX_SEED:
            raise ValueError(
                f"position (epoch {epoch}, batch {batch}) has global index "
                f"{epoch * self.batches_per_epoch + batch}, above the limit {MAX_SEED}"
            )
        self.current_epoch = epoch
        self.current_batch = batch

    def reset(self, reset_counters: bool = True) -> None:
        """Return to epoch 0, batch 0 (or only rewind the batch counter)."""
        if reset_counters:
            self.current_epoch = 0
        self.current_batch = 0

    def _loader_state(self) -> dict[str, Any]:
        return {
            "current_epoch": self.current_epoch,
            "current_batch": self.current_batch,
            "batches_per_epoch": self.batches_per_epoch,
            "loader_id": self.loader_id,
            "fixed_data": self.fixed_data,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "base_seed": self.base_seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the state document, as PyTorch's Stateful protocol expects."""
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "config": self.config.resolved,
            "param_generator_state": self.param_generator.get_state(),
            "data_generator_state": self.data_generator.get_state(),
            "loader_state": self._loader_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from a state document (PyTorch's Stateful protocol)."""
        self.restore_state(state_dict)

    def save_state(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Write the state document atomically and return it.

        The path is ``path``, else ``state_path``, else
        ``gmm_loader_state_<loader_id>.json`` in the working directory.
        """
        save_path = path or self.state_path or f"gmm_loader_state_{self.loader_id}.json"
        document = save_generator_state(
            self.param_generator,
            self.data_generator,
            save_path,
            additional_state={"loader_state": self._loader_state()},
        )
        _LOGGER.info(
            "loader %s saved state at epoch %d batch %d to %s",
            self.loader_id,
            self.current_epoch,
            self.current_batch,
            save_path,
        )
        return document

    def restore_state(self, state: dict[str, Any]) -> None:
        """Move to the position of a state document.

        Raises
        ------
        StateMismatchError
            When the document is of another format version, config or seed.
        StateError
            When the document is malformed.

        Warns
        -----
        UserWarning
            When batches_per_epoch, loader_id or fixed_data differ from this
            loader's.
        """
        if not isinstance(state, dict):
            raise StateError(f"state must be a dict, got {type(state).__name__}")
        loader_state = validate_state(state)
        stored_seed = loader_state["seed"]
        if stored_seed != self.seed and not self._seed_chosen:
            detail = ""
            if loader_state["loader_id"] != self.loader_id:
                detail = (
                    f" (the state's loader_id is {loader_state['loader_id']!r} and "
                    f"this loader's is {self.loader_id!r}; with a base seed the "
                    "effective seed depends on the loader id)"
                )
            raise StateMismatchError(
                f"state seed {stored_seed} differs from this loader's seed "
                f"{self.seed}{detail}"
            )
        check_fingerprint(state, config_seed_fingerprint(self.config.resolved, stored_seed))
        for key in ("param_generator_state", "data_generator_state"):
            if key not in state:
                raise StateError(f"state document has no {key!r} section")
        self.param_generator.set_state(state["param_generator_state"])
        self.data_generator.set_state(state["data_generator_state"])
        # The streams are keyed by this loader's id, so a state of another id
        # positions this loader's stream. The warning below reports that.
        self.param_generator.loader_id = self.loader_id
        self.data_generator.loader_id = self.loader_id
        self.seed = stored_seed
        self.param_generator.seed = stored_seed
        self.data_generator.seed = stored_seed
        self._seed_chosen = False

        for key, current in (
            ("loader_id", self.loader_id),
            ("fixed_data", self.fixed_data),
            ("batches_per_epoch", self.batches_per_epoch),
        ):
            if loader_state[key] != current:
                warnings.warn(
                    f"state {key} is {loader_state[key]!r} but this loader's is "
                    f"{current!r}; this may affect data consistency",
                    UserWarning,
                    stacklevel=2,
                )
        epoch = loader_state["current_epoch"]
        batch = loader_state["current_batch"]
        if batch > self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        self.current_epoch = epoch
        self.current_batch = batch
        _LOGGER.info(
            "loader %s restored to epoch %d batch %d", self.loader_id, epoch, batch
        )


def create_train_val_pair(
    config_dict: dict[str, Any] | str,
    train_batch_size: int = 16,
    val_batch_size: int = 32,
    train_samples: int = 1000,
    val_samples: int = 500,
    device: str | None = None,
    base_seed: int | None = None,
    fixed_data: bool = False,
    fixed_validation_data: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> tuple[GMMDataLoader, GMMDataLoader]:
    """Build the "train" and "val" loaders of one config.

    The loader ids key their streams, so the two yield different data even
    without a base seed. Validation uses fixed data when either flag is set.
    """
    train_path = val_path = None
    if state_dir is not None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        train_path = Path(state_dir) / "train_state.json"
        val_path = Path(state_dir) / "val_state.json"
    train = GMMDataLoader(
        config_dict,
        batch_size=train_batch_size,
        num_samples=train_samples,
        device=device,
        base_seed=base_seed,
        loader_id="train",
        fixed_data=fixed_data,
        state_path=train_path,
        resume=resume,
    )
    val = GMMDataLoader(
        config_dict,
        batch_size=val_batch_size,
        num_samples=val_samples,
        device=device,
        base_seed=base_seed,
        loader_id="val",
        fixed_data=fixed_data or fixed_validation_data,
        state_path=val_path,
        resume=resume,
    )
    return train, val
