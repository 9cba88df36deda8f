"""Exceptions raised by gmmserve.

The hierarchy::

    GmmServeError
    ├── ConfigError (ValueError)       a data config or request value is invalid
    ├── StateError (ValueError)        a state document is malformed
    │   └── StateMismatchError         it belongs to another config, seed or
    │                                  format version
    ├── NotFoundError (KeyError)       an unknown session or snapshot id
    └── StoreError                     the session store failed

The service maps them to gRPC status codes: ConfigError and StateError to
INVALID_ARGUMENT, StateMismatchError to FAILED_PRECONDITION, NotFoundError to
NOT_FOUND and StoreError to UNAVAILABLE.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GmmServeError",
    "LegacyKeyWarning",
    "NotFoundError",
    "StateError",
    "StateMismatchError",
    "StoreError",
]


class GmmServeError(Exception):
    """Base class of every error gmmserve raises on purpose."""


class ConfigError(GmmServeError, ValueError):
    """A config key or request field has an invalid value.

    Parameters
    ----------
    field : str
        Dotted path of the offending key, for example
        ``"cluster_params.max"``.
    message : str
        What is wrong, naming the value given and the accepted range.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StateError(GmmServeError, ValueError):
    """A state document is malformed or unreadable."""


class StateMismatchError(StateError):
    """A state document belongs to another config, seed or format version."""


class NotFoundError(GmmServeError, KeyError):
    """A session or snapshot id is unknown."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class StoreError(GmmServeError):
    """The session store failed to read or write."""


class LegacyKeyWarning(UserWarning):
    """A config key is accepted for compatibility but changes nothing."""
