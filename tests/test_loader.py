"""GMMDataLoader: positions, epochs and exact resume through every save path."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import assert_same_batch
from gmmserve.errors import ConfigError, StateError, StateMismatchError
from gmmserve.loader import (
    DataGenerator,
    GMMDataLoader,
    NumpyEncoder,
    ParameterGenerator,
    create_generators_from_config,
    create_train_val_pair,
    load_generator_state,
    save_generator_state,
)
from gmmserve.state import FORMAT_VERSION

Output = tuple[Any, dict[str, Any]]


def make_loader(config: dict[str, Any], **overrides: Any) -> GMMDataLoader:
    settings: dict[str, Any] = {
        "batch_size": 4,
        "num_samples": 10,
        "base_seed": 7,
        "loader_id": "train",
    }
    settings.update(overrides)
    return GMMDataLoader(config, **settings)


def run_epochs(loader: GMMDataLoader, epochs: int) -> list[Output]:
    """Iterate whole epochs the way a training loop does."""
    outputs: list[Output] = []
    for _ in range(epochs):
        outputs.extend(loader)
    return outputs


def take(loader: GMMDataLoader, count: int) -> list[Output]:
    """Take ``count`` batches across epoch boundaries, as a trainer would."""
    outputs: list[Output] = []
    while len(outputs) < count:
        for output in loader:
            outputs.append(output)
            if len(outputs) == count:
                break
    return outputs


def assert_same_sequence(expected: list[Output], actual: list[Output]) -> None:
    assert len(expected) == len(actual)
    for index, (left, right) in enumerate(zip(expected, actual)):
        try:
            assert_same_batch(left, right)
        except AssertionError as error:
            raise AssertionError(f"batch {index} differs: {error}") from error


def test_loader_batches_per_epoch_and_last_batch_size(small_config):
    loader = make_loader(small_config, batch_size=4, num_samples=10)
    outputs = run_epochs(loader, 1)
    assert len(loader) == math.ceil(10 / 4)
    assert [data.shape[0] for data, _ in outputs] == [4, 4, 2]
    assert (loader.current_epoch, loader.current_batch) == (1, 0)


def test_loader_output_dtypes_and_shapes(small_config):
    data, targets = next(iter(make_loader(small_config)))
    batch, points, dim = data.shape
    clusters = targets["centers"].shape[1]
    assert data.dtype == np.float32
    assert dim == 2
    assert targets["centers"].dtype == np.float32
    assert targets["centers"].shape == (batch, clusters, dim)
    assert targets["labels"].dtype == np.int64
    assert targets["labels"].shape == (batch, points)
    assert targets["weights"].shape == (batch, clusters)
    for name in ("noise_std", "snr_db", "mi", "mi_factor", "mi_target"):
        assert targets[name].shape == (batch,), name
    assert len(targets["params"]) == batch
    assert targets["params"][0]["n_clusters"] == clusters


def test_loader_same_settings_give_same_batches(small_config):
    first = run_epochs(make_loader(small_config), 2)
    second = run_epochs(make_loader(small_config), 2)
    assert_same_sequence(first, second)


def test_loader_epochs_differ_without_fixed_data(small_config):
    loader = make_loader(small_config)
    epoch0, epoch1 = run_epochs(loader, 1), run_epochs(loader, 1)
    assert not np.array_equal(epoch0[0][0], epoch1[0][0])


def test_loader_ids_key_different_streams(small_config):
    train = next(iter(make_loader(small_config, loader_id="train", base_seed=None)))
    val = next(iter(make_loader(small_config, loader_id="val", base_seed=None)))
    assert not np.array_equal(train[0], val[0])


def test_loader_iter_does_not_reset_mid_epoch(small_config):
    reference = run_epochs(make_loader(small_config), 1)
    loader = make_loader(small_config)
    first = next(iter(loader))
    rest = list(iter(loader))
    assert_same_sequence(reference, [first, *rest])


@pytest.mark.parametrize("stop_after", [1, 2, 3, 5, 7], ids=lambda n: f"after{n}")
@pytest.mark.parametrize("route", ["file", "state_dict", "json_text"])
def test_loader_resume_matches_uninterrupted_run(small_config, tmp_path, stop_after, route):
    total = 9
    reference = take(make_loader(small_config), total)

    loader = make_loader(small_config)
    before = take(loader, stop_after)
    state_file = tmp_path / "state.json"
    if route == "file":
        loader.save_state(state_file)
        resumed = make_loader(small_config, state_path=state_file)
    elif route == "state_dict":
        resumed = make_loader(small_config)
        resumed.load_state_dict(loader.state_dict())
    else:
        resumed = make_loader(small_config)
        resumed.restore_state(json.loads(json.dumps(loader.state_dict())))
    after = take(resumed, total - stop_after)
    assert_same_sequence(reference, before + after)


def test_loader_resume_at_epoch_end(small_config, tmp_path):
    reference = run_epochs(make_loader(small_config), 3)
    loader = make_loader(small_config)
    first_epoch = [next(loader) for _ in range(len(loader))]
    state = loader.save_state(tmp_path / "end.json")
    assert state["loader_state"]["current_batch"] == len(loader)

    resumed = make_loader(small_config, state_path=tmp_path / "end.json")
    later = run_epochs(resumed, 2)
    assert resumed.current_epoch == 3
    assert [data.shape[0] for data, _ in later] == [4, 4, 2, 4, 4, 2]
    assert_same_sequence(reference, first_epoch + later)


@pytest.mark.parametrize("cycles", [2, 3])
def test_loader_repeated_save_restore_within_epoch(tmp_path, cycles):
    config = "simple"
    settings = {"batch_size": 2, "num_samples": 16, "base_seed": 3, "loader_id": "train"}
    reference = run_epochs(GMMDataLoader(config, **settings), 2)

    collected: list[Output] = []
    loader = GMMDataLoader(config, **settings)
    for cycle in range(cycles):
        collected.extend(next(loader) for _ in range(2))
        path = tmp_path / f"cycle{cycle}.json"
        loader.save_state(path)
        loader = GMMDataLoader(config, state_path=path, **settings)
    collected.extend(run_epochs(loader, 1))
    collected.extend(run_epochs(loader, 1))
    assert_same_sequence(reference, collected)


def test_loader_fixed_data_repeats_epochs_and_survives_restore(small_config, tmp_path):
    loader = make_loader(small_config, fixed_data=True)
    epoch0 = run_epochs(loader, 1)
    epoch1_start = [next(loader) for _ in range(2)]
    loader.save_state(tmp_path / "fixed.json")
    resumed = make_loader(small_config, fixed_data=True, state_path=tmp_path / "fixed.json")
    epoch1_rest = run_epochs(resumed, 1)
    epoch2 = run_epochs(resumed, 1)
    assert_same_sequence(epoch0, epoch1_start + epoch1_rest)
    assert_same_sequence(epoch0, epoch2)
    assert resumed.current_epoch == 3


def test_loader_seek_equals_iterating_there(small_config):
    reference = take(make_loader(small_config), 8)
    loader = make_loader(small_config)
    loader.seek(2, 1)
    assert_same_batch(reference[7], next(loader))


def test_loader_seek_far_is_constant_time(small_config):
    loader = make_loader(small_config)
    loader.seek(10**12, 2)
    data, _ = next(loader)
    assert data.shape[0] == 2
    assert (loader.current_epoch, loader.current_batch) == (10**12, 3)


@pytest.mark.parametrize("position", [(-1, 0), (0, 4), (0, -1)])
def test_loader_seek_rejects_out_of_range(small_config, position):
    with pytest.raises(ValueError, match=r"must be"):
        make_loader(small_config).seek(*position)


def test_loader_restore_rejects_other_seed(small_config):
    state = make_loader(small_config, base_seed=1).state_dict()
    with pytest.raises(StateMismatchError, match="seed"):
        make_loader(small_config, base_seed=2).restore_state(state)


def test_loader_restore_rejects_other_config(small_config):
    state = make_loader(small_config).state_dict()
    other = dict(small_config, dim=3)
    with pytest.raises(StateMismatchError, match="another config or seed"):
        make_loader(other).restore_state(state)


def test_loader_restore_rejects_other_format_version(small_config):
    state = make_loader(small_config).state_dict()
    state["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StateMismatchError, match="format_version"):
        make_loader(small_config).restore_state(state)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("loader_state", "current_batch", -1),
        ("loader_state", "current_batch", 99),
        ("loader_state", "current_epoch", 1.5),
        ("loader_state", "seed", True),
        ("loader_state", "fixed_data", "no"),
    ],
)
def test_loader_restore_rejects_malformed_state(small_config, section, key, value):
    state = make_loader(small_config).state_dict()
    state[section][key] = value
    with pytest.raises(StateError, match=key):
        make_loader(small_config).restore_state(state)


def test_loader_restore_warns_on_batches_per_epoch_mismatch(small_config):
    source = make_loader(small_config, batch_size=4, num_samples=10)
    source.seek(1, 2)
    target = make_loader(small_config, batch_size=4, num_samples=20)
    with pytest.warns(UserWarning, match="batches_per_epoch"):
        target.restore_state(source.state_dict())
    assert (target.current_epoch, target.current_batch) == (1, 2)


def test_loader_restore_adopts_recorded_seed_when_none_given(small_config, tmp_path):
    config = dict(small_config, random_seed=None)
    loader = GMMDataLoader(config, batch_size=4, num_samples=10, loader_id="a")
    reference = take(loader, 3)
    loader.seek(0, 1)
    loader.save_state(tmp_path / "chosen.json")

    resumed = GMMDataLoader(
        config, batch_size=4, num_samples=10, loader_id="a", state_path=tmp_path / "chosen.json"
    )
    assert resumed.seed == loader.seed
    assert_same_sequence(reference[1:], take(resumed, 2))


def test_loader_resume_without_state_path_raises(small_config):
    with pytest.raises(ValueError, match="state_path must be provided"):
        make_loader(small_config, resume=True)


def test_loader_resume_with_missing_file_starts_fresh(small_config, tmp_path):
    loader = make_loader(small_config, state_path=tmp_path / "absent.json", resume=True)
    assert (loader.current_epoch, loader.current_batch) == (0, 0)


def test_loader_save_state_default_path(small_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_loader(small_config, loader_id="xyz").save_state()
    assert (tmp_path / "gmm_loader_state_xyz.json").exists()


def test_loader_state_document_layout(small_config):
    state = make_loader(small_config).state_dict()
    assert set(state) == {
        "format_version",
        "fingerprint",
        "config",
        "param_generator_state",
        "data_generator_state",
        "loader_state",
    }
    assert set(state["loader_state"]) >= {
        "current_epoch",
        "current_batch",
        "batches_per_epoch",
        "loader_id",
        "fixed_data",
    }
    assert state["param_generator_state"]["bit_generator"] == "Philox"
    assert json.loads(json.dumps(state)) == state


@pytest.mark.parametrize(
    ("argument", "value"),
    [("batch_size", 0), ("batch_size", 2.0), ("num_samples", 0), ("base_seed", -1)],
)
def test_loader_rejects_bad_arguments(small_config, argument, value):
    with pytest.raises(ValueError, match=argument):
        make_loader(small_config, **{argument: value})


def test_loader_rejects_bad_config():
    with pytest.raises(ConfigError, match="cluster_params"):
        GMMDataLoader({"cluster_params": "lots"})


def test_loader_accepts_experiment_name_and_json_text():
    by_name = GMMDataLoader("standard", batch_size=2, num_samples=4, loader_id="t")
    text = (Path(__file__).parent.parent / "server/gmmserve/data/experiment_data_configs.json")
    standard = json.loads(text.read_text())["standard"]
    with pytest.warns(UserWarning):
        by_text = GMMDataLoader(json.dumps(standard), batch_size=2, num_samples=4, loader_id="t")
    assert_same_batch(next(by_name), next(by_text))


def test_train_val_pair_streams_differ(small_config, tmp_path):
    config = dict(small_config, random_seed=5)
    train, val = create_train_val_pair(config, state_dir=tmp_path / "states")
    assert not np.array_equal(next(train)[0], next(val)[0])
    train.save_state()
    val.save_state()
    assert (tmp_path / "states" / "train_state.json").exists()
    assert (tmp_path / "states" / "val_state.json").exists()


def test_generator_state_functions_round_trip(small_config, tmp_path):
    param_generator, data_generator = create_generators_from_config(small_config)
    assert isinstance(param_generator, ParameterGenerator)
    assert isinstance(data_generator, DataGenerator)
    saved = save_generator_state(
        param_generator,
        data_generator,
        tmp_path / "generators.json",
        additional_state={"extra": np.int64(3)},
    )
    loaded = load_generator_state(tmp_path / "generators.json")
    assert loaded == saved
    assert loaded["extra"] == 3
    again, _ = create_generators_from_config(small_config, state=loaded)
    assert again.get_state() == param_generator.get_state()


def test_numpy_encoder_writes_plain_json():
    text = json.dumps(
        {"a": np.arange(3), "b": np.float32(0.5), "c": np.int64(2), "d": np.bool_(True)},
        cls=NumpyEncoder,
    )
    assert json.loads(text) == {"a": [0, 1, 2], "b": 0.5, "c": 2, "d": True}


def test_save_state_failure_keeps_previous_file(small_config, tmp_path, monkeypatch):
    loader = make_loader(small_config)
    path = tmp_path / "state.json"
    first = loader.save_state(path)
    next(loader)

    def failing_fsync(descriptor: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        loader.save_state(path)
    assert json.loads(path.read_text()) == first
    assert [entry.name for entry in tmp_path.iterdir()] == ["state.json"]


_WRITER = textwrap.dedent(
    """
    import sys
    from gmmserve.loader import GMMDataLoader
    loader = GMMDataLoader("simple", batch_size=2, num_samples=10**6, base_seed=1,
                           loader_id="w")
    path = sys.argv[1]
    loader.save_state(path)
    print("ready", flush=True)
    batch = 0
    while True:
        batch = (batch + 1) % 1000
        loader.seek(0, batch)
        loader.save_state(path)
    """
)


def test_save_state_survives_kill_during_writes(tmp_path):
    """Kill a process that rewrites its state file in a tight loop.

    Whatever instant the kill lands at, the file must parse and restore.
    """
    path = tmp_path / "state.json"
    for attempt in range(5):
        process = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            time.sleep(0.05 + 0.03 * attempt)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        loader = GMMDataLoader(
            "simple", batch_size=2, num_samples=10**6, base_seed=1, loader_id="w"
        )
        loader.restore_state(load_generator_state(path))
        assert loader.current_epoch == 0
        assert 0 <= loader.current_batch < 1000


def test_loader_explicit_seed_overrides_derivation(small_config):
    derived = make_loader(small_config, base_seed=7)
    explicit = make_loader(small_config, base_seed=None, seed=derived.seed)
    assert explicit.seed == derived.seed
    assert_same_batch(next(derived), next(explicit))


@pytest.mark.parametrize("seed", [-1, 2**53, 1.0, True])
def test_loader_rejects_out_of_range_seed(small_config, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9007199254740991\]"):
        make_loader(small_config, seed=seed)


def test_loader_accepts_numpy_integers(small_config):
    loader = make_loader(small_config, batch_size=np.int64(4), num_samples=np.int32(10))
    loader.seek(np.int64(1), np.int64(2))
    assert loader.batch_size == 4
    assert type(loader.batch_size) is int
    assert (loader.current_epoch, loader.current_batch) == (1, 2)


def test_loader_default_id_is_stable_across_processes(small_config, tmp_path):
    script = textwrap.dedent(
        f"""
        import json
        from gmmserve.loader import GMMDataLoader
        loader = GMMDataLoader({small_config!r}, batch_size=4, num_samples=10)
        data, _ = next(loader)
        print(loader.loader_id, data.tobytes().hex()[:64])
        """
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(outputs) == 1
    assert outputs.pop().startswith("default ")


def test_loader_seek_rejects_global_index_past_json_limit(small_config):
    loader = make_loader(small_config)
    last_epoch = (2**53 - 1) // len(loader)
    loader.seek(last_epoch, 0)
    with pytest.raises(ValueError, match=r"epoch must be an integer in \[0, "):
        loader.seek(last_epoch + 1, 0)


def test_loader_far_position_round_trips_through_state(small_config):
    loader = make_loader(small_config)
    loader.seek((2**53 - 1) // len(loader), 0)
    resumed = make_loader(small_config)
    resumed.restore_state(json.loads(json.dumps(loader.state_dict())))
    assert (resumed.current_epoch, resumed.current_batch) == (loader.current_epoch, 0)


def test_loader_restore_without_format_version_is_malformed(small_config):
    state = make_loader(small_config).state_dict()
    del state["format_version"]
    with pytest.raises(StateError, match="no 'format_version'") as raised:
        make_loader(small_config).restore_state(state)
    assert not isinstance(raised.value, StateMismatchError)


def test_loader_seed_mismatch_names_loader_ids(small_config):
    state = make_loader(small_config, loader_id="train").state_dict()
    with pytest.raises(StateMismatchError, match="loader_id is 'train'.*'val'"):
        make_loader(small_config, loader_id="val").restore_state(state)


def test_save_state_keeps_file_mode(small_config, tmp_path):
    path = tmp_path / "state.json"
    loader = make_loader(small_config)
    loader.save_state(path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    path.chmod(0o640)
    loader.save_state(path)
    assert path.stat().st_mode & 0o777 == 0o640


def _current_umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/self/status")


def test_loader_device_returns_torch_tensors(small_config):
    torch = pytest.importorskip("torch", reason="torch is an optional dependency")
    numpy_data, numpy_targets = next(make_loader(small_config))
    data, targets = next(make_loader(small_config, device="cpu"))
    assert isinstance(data, torch.Tensor)
    assert data.dtype == torch.float32
    assert np.array_equal(data.numpy(), numpy_data)
    assert targets["labels"].dtype == torch.int64
    assert np.array_equal(targets["centers"].numpy(), numpy_targets["centers"])
    assert len(targets["params"]) == data.shape[0]
