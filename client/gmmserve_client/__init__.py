"""gmmserve client: stream synthetic GMM batches from a gmmserve server.

The package depends only on numpy, grpcio and protobuf, never on the
server package. Every batch is checked against the fingerprint the server
sends, and streams resume after the last batch received when the server
restarts. Session tokens are carried transparently: a session handle sends
the token its CreateSession returned with every call.
"""

from gmmserve_client._batch import ARRAY_NAMES, Batch, decode_batch, fingerprint_arrays
from gmmserve_client._client import Client, Session
from gmmserve_client._errors import (
    Aborted,
    BatchIntegrityError,
    DeadlineExceeded,
    FailedPrecondition,
    GmmServeClientError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SessionNotFound,
    StreamInterrupted,
    Unauthenticated,
    Unavailable,
)
from gmmserve_client._policy import ReconnectPolicy, RetryPolicy
from gmmserve_client._stream import BatchStream
from gmmserve_client._types import Position, SessionInfo, SessionSpec, SnapshotInfo

__all__ = [
    "ARRAY_NAMES",
    "Aborted",
    "Batch",
    "BatchIntegrityError",
    "BatchStream",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GmmServeClientError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Position",
    "ReconnectPolicy",
    "ResourceExhausted",
    "RetryPolicy",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "SessionSpec",
    "SnapshotInfo",
    "StreamInterrupted",
    "Unauthenticated",
    "Unavailable",
    "decode_batch",
    "fingerprint_arrays",
]
