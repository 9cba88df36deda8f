"""Bearer tokens: per-session tokens and the operator token.

A session token is ``"gst_"`` followed by the unpadded URL-safe base64 of
HMAC-SHA256(server secret, session id). The secret is 32 random bytes kept
in the store, so every replica sharing the store issues and accepts the
same tokens, and a retried CreateSession returns the token again. Checking
a token needs no store lookup, so an unknown session id and a wrong token
take the same path and get the same status.

Tokens travel in the ``authorization`` metadata as ``Bearer <token>``.
Neither tokens nor the secret are ever logged or put in a status message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

import grpc

from gmmserve.service._status import StreamEndedError
from gmmserve.store import Store

__all__ = ["SECRET_NAME", "Access", "Authenticator"]

_LOGGER = logging.getLogger(__name__)

# The store key of the token secret. The suffix names the token scheme, so a
# future scheme can store its own secret beside this one.
SECRET_NAME = "session-token-hmac-sha256-v1"
_TOKEN_PREFIX = "gst_"
_METADATA_KEY = "authorization"
_SCHEME = "bearer"
# Longer values are rejected before any HMAC work is done on them.
_MAX_TOKEN_LENGTH = 1024


class Access:
    """Kinds of caller a token identifies: a session's holder or the operator."""

    SESSION = "session"
    OPERATOR = "operator"


def _new_secret() -> str:
    return secrets.token_hex(32)


class Authenticator:
    """Issues session tokens and checks the bearer token of each call.

    Parameters
    ----------
    secret : bytes
        The HMAC key; every replica sharing a store must use the same one.
    operator_token : str or None
        The operator's bearer token, or None to disable operator access.
    """

    def __init__(self, secret: bytes, operator_token: str | None) -> None:
        if len(secret) < 32:
            raise ValueError(f"secret has {len(secret)} bytes; at least 32 are needed")
        self._secret = secret
        self._operator = operator_token.encode() if operator_token else None

    def __repr__(self) -> str:
        operator = "set" if self._operator is not None else "unset"
        return f"Authenticator(operator token {operator})"

    @classmethod
    async def from_store(
        cls, store: Store, operator_token: str | None
    ) -> Authenticator:
        """Load the store's secret, creating it on first use."""
        secret = await store.get_or_create_secret(SECRET_NAME, _new_secret)
        return cls(bytes.fromhex(secret), operator_token)

    def session_token(self, session_id: str) -> str:
        """Return the bearer token of ``session_id``."""
        digest = hmac.new(self._secret, session_id.encode(), hashlib.sha256).digest()
        return _TOKEN_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _is_operator(self, token: str) -> bool:
        if self._operator is None:
            return False
        return hmac.compare_digest(token.encode(), self._operator)

    def _is_session(self, token: str, session_id: str) -> bool:
        expected = self.session_token(session_id)
        return hmac.compare_digest(token.encode(), expected.encode())

    def authorize_session(
        self,
        context: grpc.aio.ServicerContext,
        session_id: str,
        *,
        allow_operator: bool = True,
    ) -> str:
        """Check that the call may act on ``session_id``; return its Access.

        ``session_id`` must already have passed the id pattern check.

        Raises
        ------
        StreamEndedError
            UNAUTHENTICATED without a well-formed bearer token, and
            PERMISSION_DENIED when the token is not valid for the session.
            The message is the same whether or not the session exists.
        """
        token = _bearer_token(context)
        if self._is_session(token, session_id):
            return Access.SESSION
        if self._is_operator(token):
            if allow_operator:
                return Access.OPERATOR
            raise StreamEndedError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the operator token cannot open streams of session {session_id}; "
                "use the session token that CreateSession returned",
            )
        raise StreamEndedError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the bearer token is not valid for session {session_id}; send the "
            "session token that CreateSession returned, or the operator token",
        )

    def authorize_operator(
        self, context: grpc.aio.ServicerContext, method: str
    ) -> None:
        """Check that the call carries the operator token.

        Raises
        ------
        StreamEndedError
            UNAUTHENTICATED without a well-formed bearer token, and
            PERMISSION_DENIED for any other token.
        """
        token = _bearer_token(context)
        if self._is_operator(token):
            return
        if self._operator is None:
            reason = "this server has no operator token configured"
        else:
            reason = "the bearer token is not the operator token"
        raise StreamEndedError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} needs the operator token; {reason}",
        )


def _bearer_token(context: grpc.aio.ServicerContext) -> str:
    values = [
        value
        for key, value in (context.invocation_metadata() or ())
        if key == _METADATA_KEY
    ]
    if not values:
        raise StreamEndedError(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing authorization metadata; send 'authorization: Bearer <token>' "
            "with the session token that CreateSession returned, or the operator "
            "token",
        )
    if len(values) > 1:
        raise StreamEndedError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call carries {len(values)} authorization metadata entries; "
            "send exactly one",
        )
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _SCHEME or not token or len(token) > _MAX_TOKEN_LENGTH:
        # The value may be a mistyped token, so it is not echoed.
        raise StreamEndedError(
            grpc.StatusCode.UNAUTHENTICATED,
            "malformed authorization metadata; the accepted form is 'Bearer <token>' "
            f"with a token of 1 to {_MAX_TOKEN_LENGTH} characters",
        )
    return token
