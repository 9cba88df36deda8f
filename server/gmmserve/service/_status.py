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

__all__ = ["StreamEndedError", "status_for", "unary_errors"]

_LOGGER = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class StreamEndedError(Exception):
    """Ends an RPC, unary or streaming, with a chosen status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_for(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """Return the status code and message that ``error`` ends an RPC with.

    Errors that are not gmmserve's are logged with their traceback and
    become INTERNAL, with a message that points to the server log.
    """
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
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(error, method.__name__)
            _LOGGER.info("%s ended with %s: %s", method.__name__, code.name, message)
            await context.abort(code, message)
            raise AssertionError("context.abort returned") from None

    return wrapper
