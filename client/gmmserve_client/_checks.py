"""Range checks of call arguments, run before they are put into protos.

Protobuf rejects a value outside its field's integer type with only
"Value out of range: -1", so the client checks each argument first and
names it, the value and the accepted range.
"""

from __future__ import annotations

import grpc

from gmmserve_client._errors import InvalidArgument

__all__ = [
    "MAX_BASE_SEED",
    "MAX_GLOBAL_INDEX",
    "MAX_UINT32",
    "check_int",
]

# Global indices, cursors and seeds are integers below 2^53, so they survive
# a round trip through JSON doubles.
MAX_GLOBAL_INDEX = 2**53 - 1
# A base seed leaves room for the loader id's offset of up to 10^6.
MAX_BASE_SEED = MAX_GLOBAL_INDEX - 1_000_000
MAX_UINT32 = 2**32 - 1


def check_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` when it is an integer in ``[low, high]``.

    Raises
    ------
    TypeError
        When ``value`` is not an int (bool included).
    InvalidArgument
        When ``value`` is outside ``[low, high]``. It carries the status
        INVALID_ARGUMENT that the server would return, though no call was
        made, and is a ValueError too.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an integer in [{low}, {high}], got "
            f"{type(value).__name__} {value!r}"
        )
    if not low <= value <= high:
        raise InvalidArgument(
            f"{name}: {value} is out of range; the accepted range is [{low}, {high}]",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    return value
