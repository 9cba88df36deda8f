"""Plain Python views of the service's messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gmmserve_proto.v1 import gmmserve_pb2 as pb

__all__ = ["Position", "SessionInfo", "SessionSpec", "SnapshotInfo"]


@dataclass(frozen=True)
class Position:
    """A batch position; global_index = epoch * batches_per_epoch + batch_index."""

    epoch: int
    batch_index: int
    global_index: int

    @classmethod
    def from_proto(cls, message: pb.Position) -> Position:
        return cls(message.epoch, message.batch_index, message.global_index)

    def __str__(self) -> str:
        return f"{self.global_index} (epoch {self.epoch}, batch {self.batch_index})"


@dataclass(frozen=True)
class SessionSpec:
    """A session's settings as the server recorded them at creation.

    Attributes
    ----------
    config_json : str or None
        The config's JSON text, when the session was created from one.
    experiment : str or None
        The bundled experiment name, when the session was created from one.
    seed : int or None
        The base seed requested, or None when the server chose the seed.
    loader_id, batch_size, samples_per_epoch, fixed_data
        As passed to :meth:`Client.create_session`.
    """

    config_json: str | None
    experiment: str | None
    seed: int | None
    loader_id: str
    batch_size: int
    samples_per_epoch: int
    fixed_data: bool

    @classmethod
    def from_proto(cls, message: pb.SessionSpec) -> SessionSpec:
        config_kind = message.WhichOneof("config")
        return cls(
            config_json=message.config_json if config_kind == "config_json" else None,
            experiment=message.experiment if config_kind == "experiment" else None,
            seed=message.seed if message.HasField("seed") else None,
            loader_id=message.loader_id,
            batch_size=message.batch_size,
            samples_per_epoch=message.samples_per_epoch,
            fixed_data=message.fixed_data,
        )


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server reports it.

    Attributes
    ----------
    session_id : str
    spec : SessionSpec
    seed : int
        The seed in use (chosen by the server when the spec had none).
    batches_per_epoch : int
    position : Position
        The committed cursor: the next batch not yet acknowledged.
    fingerprint : str
        Hex digest of the resolved config and seed.
    resolved_config : dict
        The config with presets expanded and defaults filled.
    created_at, updated_at : float
        Seconds since the Unix epoch.
    """

    session_id: str
    spec: SessionSpec
    seed: int
    batches_per_epoch: int
    position: Position
    fingerprint: str
    resolved_config: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def from_proto(cls, message: pb.SessionInfo) -> SessionInfo:
        resolved = (
            json.loads(message.resolved_config_json)
            if message.resolved_config_json
            else {}
        )
        return cls(
            session_id=message.session_id,
            spec=SessionSpec.from_proto(message.spec),
            seed=message.seed,
            batches_per_epoch=message.batches_per_epoch,
            position=Position.from_proto(message.position),
            fingerprint=message.fingerprint,
            resolved_config=resolved,
            created_at=message.created_at,
            updated_at=message.updated_at,
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A saved session position.

    Attributes
    ----------
    snapshot_id, session_id, label : str
    position : Position
    fingerprint : str
        Hex digest of the resolved config and seed, as in SessionInfo.
    created_at : float
        Seconds since the Unix epoch.
    state_json : str
        The state document; ``GMMDataLoader.restore_state`` accepts it after
        ``json.loads``, and :meth:`Session.restore` accepts it as ``state``.
    """

    snapshot_id: str
    session_id: str
    label: str
    position: Position
    fingerprint: str
    created_at: float
    state_json: str

    @classmethod
    def from_proto(cls, message: pb.SnapshotInfo) -> SnapshotInfo:
        return cls(
            snapshot_id=message.snapshot_id,
            session_id=message.session_id,
            label=message.label,
            position=Position.from_proto(message.position),
            fingerprint=message.fingerprint,
            created_at=message.created_at,
            state_json=message.state_json,
        )
