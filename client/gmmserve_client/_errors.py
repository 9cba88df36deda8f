"""Exceptions raised by the client, one class per gRPC status the server uses."""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "BatchIntegrityError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GmmServeClientError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SessionNotFound",
    "StreamInterrupted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class GmmServeClientError(Exception):
    """Base class of every error the client raises.

    Attributes
    ----------
    code : grpc.StatusCode or None
        The status code of the failed call, or None when the error was
        detected by the client itself.
    details : str
        The server's message, or the client's description of the failure.
    """

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        self.code = code
        self.details = details
        prefix = f"{code.name}: " if code is not None else ""
        super().__init__(prefix + details)


class InvalidArgument(GmmServeClientError, ValueError):
    """A request field or config value is malformed or out of range.

    The client raises it before any call for an argument outside the range
    of its proto field, with the code INVALID_ARGUMENT that the server
    would return.
    """


class NotFound(GmmServeClientError):
    """The session or snapshot id is unknown to the server."""


class SessionNotFound(NotFound):
    """The session id is unknown to the server."""


class FailedPrecondition(GmmServeClientError):
    """A snapshot or state document belongs to another config, seed or format."""


class Unavailable(GmmServeClientError):
    """The server could not be reached, or it was shutting down or restarting."""


class DeadlineExceeded(GmmServeClientError):
    """A call did not finish within its timeout."""


class Aborted(GmmServeClientError):
    """A stream ended because its session was restored or closed; open a new one."""


class Unauthenticated(GmmServeClientError):
    """The call carried no bearer token, or a malformed one."""


class PermissionDenied(GmmServeClientError):
    """The token is not valid for the session, or the call needs the operator token.

    The server gives this status for an unknown session id too, so that a
    caller without a valid token cannot tell which sessions exist.
    """


class ResourceExhausted(GmmServeClientError):
    """A server limit was reached: open streams, sessions or snapshots."""


class StreamInterrupted(Unavailable):
    """A batch stream could not be resumed within the reconnect policy's bounds.

    The acknowledgement of the last batch consumed may not have reached the
    server, so a new stream that starts at the committed cursor could repeat
    it. Resume with ``session.batches(start=error.resume_start)``.

    Attributes
    ----------
    last_consumed : int or None
        Global index of the last batch the caller consumed: the last one
        yielded in auto ack mode, the last one acknowledged in manual mode.
        None when no batch was consumed.
    resume_start : int or None
        The ``start`` to pass to :meth:`Session.batches` to continue after
        ``last_consumed``; None to start at the committed cursor.
    """

    def __init__(
        self,
        details: str,
        code: grpc.StatusCode | None = None,
        *,
        last_consumed: int | None = None,
        resume_start: int | None = None,
    ) -> None:
        super().__init__(details, code)
        self.last_consumed = last_consumed
        self.resume_start = resume_start


class BatchIntegrityError(GmmServeClientError):
    """A received batch is malformed or its fingerprint does not match its arrays."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[GmmServeClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_rpc_error(
    error: grpc.RpcError, not_found: type[NotFound] = NotFound
) -> GmmServeClientError:
    """Convert a failed gRPC call into the matching client exception.

    Parameters
    ----------
    error : grpc.RpcError
        The error raised by a call; it must also be a ``grpc.Call``, which
        every error raised by a channel's callables is.
    not_found : type, default NotFound
        The class for NOT_FOUND, so calls that name only a session id can
        raise :class:`SessionNotFound`.

    Returns
    -------
    GmmServeClientError
        An instance keeping the status code and the server's message.
    """
    code: grpc.StatusCode | None = None
    details = str(error)
    if isinstance(error, grpc.Call):
        code = error.code()
        details = error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(details, code)
    error_class = (
        _CLASS_BY_CODE.get(code, GmmServeClientError) if code else GmmServeClientError
    )
    return error_class(details, code)
