"""Decode received batches, verify their fingerprints, reassemble BatchParts.

The fingerprint is computed here without importing the server package:
BLAKE2b with a 32-byte digest over, for each array in wire order, the
header ``"<name>|<dtype>|<d0,d1,...>|"`` (UTF-8) followed by the array's
little-endian bytes in C order. The result is ``"blake2b-256:"`` followed by
the hex digest, the same string the server sends with each batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gmmserve_proto.v1 import gmmserve_pb2 as pb
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from gmmserve_client._errors import BatchIntegrityError

__all__ = [
    "ARRAY_NAMES",
    "Batch",
    "decode_batch",
    "fingerprint_arrays",
]

FINGERPRINT_PREFIX = "blake2b-256:"

# Every array of a batch in wire and fingerprint order, with its dtype and
# its number of dimensions.
_ARRAY_LAYOUT: dict[str, tuple[str, int]] = {
    "data": ("<f4", 3),
    "centers": ("<f4", 3),
    "labels": ("<i8", 2),
    "weights": ("<f8", 2),
    "noise_std": ("<f8", 1),
    "snr_db": ("<f8", 1),
    "mi": ("<f8", 1),
    "mi_factor": ("<f8", 1),
    "mi_target": ("<f8", 1),
}
ARRAY_NAMES: tuple[str, ...] = tuple(_ARRAY_LAYOUT)


@dataclass(frozen=True)
class Batch:
    """One received batch, verified against its fingerprint.

    Attributes
    ----------
    epoch, batch_index, global_index : int
        The batch's position in the session's stream.
    data : ndarray
        float32 points of shape (B, N, D).
    targets : dict of str to ndarray
        ``centers`` float32 (B, K, D), ``labels`` int64 (B, N), ``weights``
        float64 (B, K), and float64 (B,) arrays ``noise_std``, ``snr_db``,
        ``mi``, ``mi_factor`` and ``mi_target``.
    fingerprint : str
        ``"blake2b-256:"`` and the hex digest of every array.
    wire_bytes : int
        Size of the serialized messages that carried the batch.
    """

    epoch: int
    batch_index: int
    global_index: int
    data: NDArray[np.float32]
    targets: dict[str, NDArray[Any]]
    fingerprint: str
    wire_bytes: int = field(default=0, compare=False)

    @property
    def arrays(self) -> dict[str, NDArray[Any]]:
        """Every array of the batch, keyed by name, in wire order."""
        return {"data": self.data, **self.targets}


def fingerprint_arrays(arrays: Mapping[str, NDArray[Any]]) -> str:
    """Compute the fingerprint of a batch's arrays.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        Must contain every name in :data:`ARRAY_NAMES`; other keys are
        ignored.

    Returns
    -------
    str
        ``"blake2b-256:"`` followed by 64 hex digits.
    """
    digest = hashlib.blake2b(digest_size=32)
    for name in ARRAY_NAMES:
        array = np.asarray(arrays[name])
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        shape = ",".join(str(size) for size in little.shape)
        digest.update(f"{name}|{little.dtype.str}|{shape}|".encode())
        digest.update(little.tobytes())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def _decode_array(message: pb.Array, expected_name: str) -> NDArray[Any]:
    if message.name != expected_name:
        raise BatchIntegrityError(
            f"array name is {message.name!r} where {expected_name!r} was expected; "
            f"arrays must arrive in the order {', '.join(ARRAY_NAMES)}"
        )
    dtype_text, ndim = _ARRAY_LAYOUT[expected_name]
    if message.dtype != dtype_text:
        raise BatchIntegrityError(
            f"array {expected_name!r} has dtype {message.dtype!r}; "
            f"expected {dtype_text!r}"
        )
    shape = tuple(int(size) for size in message.shape)
    if len(shape) != ndim:
        raise BatchIntegrityError(
            f"array {expected_name!r} has shape {shape}; expected {ndim} dimensions"
        )
    dtype = np.dtype(dtype_text)
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(message.data) != expected_bytes:
        raise BatchIntegrityError(
            f"array {expected_name!r} of shape {shape} and dtype {dtype_text} needs "
            f"{expected_bytes} bytes; received {len(message.data)}"
        )
    # bytearray gives a writable copy, so callers may modify the arrays or
    # pass them to torch.from_numpy without a read-only warning.
    array = np.frombuffer(bytearray(message.data), dtype=dtype).reshape(shape)
    # Convert to native byte order; on little-endian hosts this is a no-op.
    return array.astype(dtype.newbyteorder("="), copy=False)


def decode_batch(message: pb.Batch, wire_bytes: int = 0) -> Batch:
    """Decode a Batch message and verify its fingerprint.

    Parameters
    ----------
    message : gmmserve.v1.Batch
    wire_bytes : int, default 0
        Size of the serialized messages that carried it, for statistics.

    Returns
    -------
    Batch

    Raises
    ------
    BatchIntegrityError
        When an array is missing, misnamed, of an unexpected dtype or shape,
        or of the wrong byte length, or when the fingerprint recomputed from
        the arrays differs from the one sent.
    """
    position = message.position
    where = (
        f"batch {position.global_index} "
        f"(epoch {position.epoch}, batch {position.batch_index})"
    )
    if len(message.arrays) != len(ARRAY_NAMES):
        raise BatchIntegrityError(
            f"{where} has {len(message.arrays)} arrays; expected {len(ARRAY_NAMES)} "
            f"({', '.join(ARRAY_NAMES)})"
        )
    try:
        arrays = {
            name: _decode_array(array, name)
            for name, array in zip(ARRAY_NAMES, message.arrays, strict=True)
        }
    except BatchIntegrityError as error:
        raise BatchIntegrityError(f"{where}: {error.details}") from None
    computed = fingerprint_arrays(arrays)
    if computed != message.fingerprint:
        raise BatchIntegrityError(
            f"{where} is corrupt: its arrays hash to {computed} but the server sent "
            f"fingerprint {message.fingerprint!r}"
        )
    data = arrays.pop("data")
    return Batch(
        epoch=position.epoch,
        batch_index=position.batch_index,
        global_index=position.global_index,
        data=data,
        targets=arrays,
        fingerprint=computed,
        wire_bytes=wire_bytes,
    )


class PartAssembler:
    """Collect the BatchParts of one batch and parse them as a Batch.

    Parts of a batch must arrive in order, 0 to part_count - 1, all with the
    same position and part count; any other sequence raises
    :class:`BatchIntegrityError`.
    """

    def __init__(self) -> None:
        self._payloads: list[bytes] = []
        self._first: pb.BatchPart | None = None

    @property
    def pending(self) -> bool:
        """Whether some parts of a batch have arrived but not all."""
        return self._first is not None

    def add(self, part: pb.BatchPart) -> pb.Batch | None:
        """Add the next part; return the parsed Batch once the last part arrives.

        Raises
        ------
        BatchIntegrityError
            When the part is out of order, its position or part count differs
            from the earlier parts', or the joined payload is not a Batch of
            the parts' position.
        """
        first = self._first
        expected_index = len(self._payloads)
        if part.part_index != expected_index:
            raise BatchIntegrityError(
                f"batch part {part.part_index} of batch {part.position.global_index} "
                f"arrived where part {expected_index} was expected"
            )
        if part.part_count < 1:
            raise BatchIntegrityError(
                f"batch part of batch {part.position.global_index} has part_count "
                f"{part.part_count}; expected 1 or more"
            )
        if first is not None and (
            part.part_count != first.part_count or part.position != first.position
        ):
            raise BatchIntegrityError(
                f"batch part {part.part_index} has position "
                f"{part.position.global_index} "
                f"and part_count {part.part_count}, but part 0 had position "
                f"{first.position.global_index} and part_count {first.part_count}"
            )
        if first is None:
            self._first = first = part
        self._payloads.append(part.payload)
        if len(self._payloads) < first.part_count:
            return None

        payload = b"".join(self._payloads)
        self._payloads = []
        self._first = None
        try:
            batch = pb.Batch.FromString(payload)
        except DecodeError as error:
            raise BatchIntegrityError(
                f"the {first.part_count} parts of batch {first.position.global_index} "
                f"do not parse as a Batch: {error}"
            ) from None
        if batch.position != first.position:
            raise BatchIntegrityError(
                f"the parts of batch {first.position.global_index} carry a batch at "
                f"position {batch.position.global_index}"
            )
        return batch
