"""Tests of the client library: decoding, verification, streams and errors."""

from __future__ import annotations

import json
import warnings
from typing import Any

import grpc
import numpy as np
import pytest

from gmmserve.generator import ARRAY_NAMES as SERVER_ARRAY_NAMES
from gmmserve.generator import fingerprint_arrays as server_fingerprint
from gmmserve.loader import GMMDataLoader
from gmmserve_client import (
    ARRAY_NAMES,
    BatchIntegrityError,
    GmmServeClientError,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    SessionNotFound,
    decode_batch,
    fingerprint_arrays,
)
from gmmserve_client._batch import PartAssembler
from gmmserve_proto.v1 import gmmserve_pb2 as pb


def _loader(name: str = "standard", **kwargs: Any) -> GMMDataLoader:
    settings: dict[str, Any] = {"batch_size": 4, "num_samples": 10, "loader_id": "test"}
    settings.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GMMDataLoader(name, **settings)


def _encode(loader: GMMDataLoader, epoch: int, batch_index: int) -> pb.Batch:
    """Build the Batch message of a loader batch as the wire contract describes."""
    batch = loader.batch_at(epoch, batch_index)
    message = pb.Batch(
        position=pb.Position(
            epoch=epoch,
            batch_index=batch_index,
            global_index=epoch * loader.batches_per_epoch + batch_index,
        ),
        fingerprint=batch.fingerprint(),
    )
    for name in SERVER_ARRAY_NAMES:
        array = batch.arrays[name]
        message.arrays.add(
            name=name,
            dtype=array.dtype.str,
            shape=list(array.shape),
            data=np.ascontiguousarray(array).tobytes(),
        )
    return message


def test_client_array_names_match_server() -> None:
    assert ARRAY_NAMES == SERVER_ARRAY_NAMES


@pytest.mark.parametrize("name", ["standard", "3d", "advanced"])
def test_client_fingerprint_matches_generator(name: str) -> None:
    batch = _loader(name).batch_at(1, 2)
    assert fingerprint_arrays(batch.arrays) == server_fingerprint(batch.arrays)


def test_client_decode_round_trip_bit_for_bit() -> None:
    loader = _loader("advanced")
    expected = loader.batch_at(1, 1)
    decoded = decode_batch(_encode(loader, 1, 1))
    assert decoded.epoch == 1
    assert decoded.batch_index == 1
    assert decoded.global_index == loader.batches_per_epoch + 1
    assert decoded.fingerprint == expected.fingerprint()
    assert decoded.data.dtype == np.float32
    assert decoded.data.tobytes() == expected.data.tobytes()
    targets = expected.targets()
    assert set(decoded.targets) == set(targets) - {"params"}
    for name, array in decoded.targets.items():
        assert array.dtype == targets[name].dtype, name
        assert array.shape == targets[name].shape, name
        assert array.tobytes() == targets[name].tobytes(), name


def test_client_decoded_arrays_are_writable() -> None:
    decoded = decode_batch(_encode(_loader(), 0, 0))
    assert decoded.data.flags.writeable
    assert decoded.targets["labels"].flags.writeable


def test_client_decode_tampered_byte_raises() -> None:
    message = _encode(_loader(), 0, 1)
    data = bytearray(message.arrays[0].data)
    data[17] ^= 0x01
    message.arrays[0].data = bytes(data)
    with pytest.raises(BatchIntegrityError, match="corrupt"):
        decode_batch(message)


def test_client_decode_tampered_fingerprint_raises() -> None:
    message = _encode(_loader(), 0, 1)
    message.fingerprint = "blake2b-256:" + "0" * 64
    with pytest.raises(BatchIntegrityError, match="corrupt"):
        decode_batch(message)


def test_client_decode_tampered_shape_raises() -> None:
    message = _encode(_loader(), 0, 0)
    # Same byte count, another shape: only the fingerprint header catches it.
    weights = message.arrays[3]
    rows, columns = weights.shape
    weights.ClearField("shape")
    weights.shape.extend([columns, rows])
    with pytest.raises(BatchIntegrityError, match="corrupt"):
        decode_batch(message)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("name", "points", "array name is 'points'"),
        ("dtype", "<f8", "dtype '<f8'"),
        ("data", b"\x00" * 3, "needs"),
    ],
)
def test_client_decode_malformed_array_raises(field: str, value: Any, match: str) -> None:
    message = _encode(_loader(), 0, 0)
    setattr(message.arrays[0], field, value)
    with pytest.raises(BatchIntegrityError, match=match):
        decode_batch(message)


def test_client_decode_missing_array_raises() -> None:
    message = _encode(_loader(), 0, 0)
    del message.arrays[-1]
    with pytest.raises(BatchIntegrityError, match="has 8 arrays; expected 9"):
        decode_batch(message)


def _split(message: pb.Batch, part_count: int) -> list[pb.BatchPart]:
    payload = message.SerializeToString()
    size = -(-len(payload) // part_count)
    return [
        pb.BatchPart(
            position=message.position,
            part_index=index,
            part_count=part_count,
            payload=payload[index * size : (index + 1) * size],
        )
        for index in range(part_count)
    ]


def test_client_parts_reassemble_bit_for_bit() -> None:
    message = _encode(_loader("advanced"), 0, 2)
    assembler = PartAssembler()
    parts = _split(message, 4)
    for part in parts[:-1]:
        assert assembler.add(part) is None
        assert assembler.pending
    assembled = assembler.add(parts[-1])
    assert not assembler.pending
    assert assembled == message
    assert assembled is not None
    assert decode_batch(assembled).fingerprint == message.fingerprint


def test_client_parts_single_part() -> None:
    message = _encode(_loader(), 0, 0)
    assert PartAssembler().add(_split(message, 1)[0]) == message


def test_client_parts_out_of_order_raises() -> None:
    parts = _split(_encode(_loader(), 0, 0), 3)
    assembler = PartAssembler()
    assembler.add(parts[0])
    with pytest.raises(BatchIntegrityError, match="arrived where part 1 was expected"):
        assembler.add(parts[2])


def test_client_parts_mixed_batches_raise() -> None:
    loader = _loader()
    first = _split(_encode(loader, 0, 0), 2)
    second = _split(_encode(loader, 0, 1), 2)
    assembler = PartAssembler()
    assembler.add(first[0])
    with pytest.raises(BatchIntegrityError, match="part 0 had position 0"):
        assembler.add(second[1])


def test_client_parts_truncated_payload_raises() -> None:
    parts = _split(_encode(_loader(), 0, 0), 2)
    parts[1].payload = parts[1].payload[:-5]
    assembler = PartAssembler()
    assembler.add(parts[0])
    with pytest.raises(BatchIntegrityError):
        decode_batch(assembler.add(parts[1]) or pb.Batch())


def test_client_retry_policy_service_config() -> None:
    config = json.loads(RetryPolicy(max_attempts=3).service_config())
    method = config["methodConfig"][0]
    assert method["retryPolicy"]["maxAttempts"] == 3
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    names = {entry["method"] for entry in method["name"]}
    assert "StreamBatches" not in names
    assert "CreateSession" in names


def test_client_retry_policy_rejects_six_attempts() -> None:
    with pytest.raises(ValueError, match=r"max_attempts must be an integer in \[1, 5\]"):
        RetryPolicy(max_attempts=6)
