"""Mapping of gmmserve errors to gRPC status codes, in one place.

=============================  ===================
error                          status code
=============================  ===================
ConfigError, StateError        INVALID_ARGUMENT
NonFiniteValueError            INVALID_ARGUMENT
StateMismatchError             FAILED_PRECONDITION
NotFoundError                  NOT_FOUND
CursorConflictError            ABORTED
LimitExceededError             RESOURCE_EXHAUSTED
StoreError                     UNAVAILABLE
StreamEndedError               the code it carries
anything else                  INTERNAL (logged)
=============================  ===================
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from gmmserve.errors import (
    ConfigError,
    NotFoundError,
    StateError,
    StateMismatchError,
    StoreError,
)
from gmmserve.store import (
    CursorConflictError,
    LimitExceededError,
    NonFiniteValueError,
)

__all__ = [
    "MalformedRequest",
    "StreamEndedError",
    "lenient_parser",
    "require_parsed",
    "status_for",
    "unary_errors",
]

_LOGGER = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class StreamEndedError(Exception):
    """Ends an RPC, unary or streaming, with a chosen status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MalformedRequest:
    """A request whose bytes failed to parse, passed on instead of raising.

    gRPC ends the call with UNKNOWN when a deserializer raises, so the parser
    returns this and the method rejects it with INVALID_ARGUMENT.
    """

    def __init__(self, message_type: str, reason: str) -> None:
        self.message_type = message_type
        self.reason = reason


def lenient_parser(message_class: Any) -> Callable[[bytes], Any]:
    """Return a deserializer that returns MalformedRequest for bad bytes."""

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return MalformedRequest(message_class.DESCRIPTOR.full_name, str(error))

    return parse


def require_parsed(request: Any, field: str = "request") -> None:
    """Raise ConfigError when ``request`` is a MalformedRequest."""
    if isinstance(request, MalformedRequest):
        raise ConfigError(
            field,
            f"is not a valid {request.message_type} message ({request.reason}); "
            "send a message of the gmmserve.v1 proto",
        )


# gRPC clients reject status metadata over 16 KiB by default (grpcio 1.85),
# and a message that repeats a long config key could exceed it.
MAX_STATUS_MESSAGE_CHARS = 4096


# Control characters (C0, DEL and C1) in a message would let a caller
# start a forged line in the server log or hide text in a terminal.
_CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]
}


def escape_control_characters(text: str) -> str:
    """Replace control characters, newlines included, with ``\\xNN`` escapes."""
    return text.translate(_CONTROL_ESCAPES)


def status_for(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """Return the status code and message that ``error`` ends an RPC with.

    Errors that are not gmmserve's are logged with their traceback and
    become INTERNAL, with a message that points to the server log. Control
    characters in the message, which may echo a caller's input, are
    escaped so that it stays one log line. Messages
    longer than MAX_STATUS_MESSAGE_CHARS lose their middle, because the
    field name leads a message and the reason and accepted range end it.
    """
    code, message = _status_for(error, method)
    message = escape_control_characters(message)
    if len(message) > MAX_STATUS_MESSAGE_CHARS:
        keep = MAX_STATUS_MESSAGE_CHARS // 2
        cut = len(message) - 2 * keep
        message = f"{message[:keep]} ... ({cut} characters cut) ... {message[-keep:]}"
    return code, message


def _status_for(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, StreamEndedError):
        return error.code, error.message
    if isinstance(error, StateMismatchError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, (ConfigError, StateError, NonFiniteValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, LimitExceededError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, CursorConflictError):
        return grpc.StatusCode.ABORTED, str(error)
    if isinstance(error, StoreError):
        _LOGGER.error("%s failed: %s", method, error)
        return grpc.StatusCode.UNAVAILABLE, str(error)
    _LOGGER.exception("%s failed with an unexpected error", method)
    return (
        grpc.StatusCode.INTERNAL,
        f"{method} failed with an internal error; see the server log",
    )


def unary_errors(
    method: Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]],
) -> Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """Decorate a unary servicer method so raised errors end it with their status."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: _Request, context: grpc.aio.ServicerContext
    ) -> _Response:
        # The count lets shutdown wait for running unary calls before it
        # cuts off the calls that never end by themselves (health Watch).
        # Each server's servicer is used by its own event loop thread only.
        self.unary_calls_in_flight = getattr(self, "unary_calls_in_flight", 0) + 1
        try:
            require_parsed(request)
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(error, method.__name__)
            _LOGGER.info("%s ended with %s: %s", method.__name__, code.name, message)
            await context.abort(code, message)
            raise AssertionError("context.abort returned") from None
        finally:
            self.unary_calls_in_flight -= 1

    return wrapper
