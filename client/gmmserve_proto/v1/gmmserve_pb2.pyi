from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Position(_message.Message):
    __slots__ = ("epoch", "batch_index", "global_index")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    batch_index: int
    global_index: int
    def __init__(self, epoch: _Optional[int] = ..., batch_index: _Optional[int] = ..., global_index: _Optional[int] = ...) -> None: ...

class SessionSpec(_message.Message):
    __slots__ = ("config_json", "experiment", "seed", "loader_id", "batch_size", "samples_per_epoch", "fixed_data")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOADER_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIXED_DATA_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    experiment: str
    seed: int
    loader_id: str
    batch_size: int
    samples_per_epoch: int
    fixed_data: bool
    def __init__(self, config_json: _Optional[str] = ..., experiment: _Optional[str] = ..., seed: _Optional[int] = ..., loader_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., samples_per_epoch: _Optional[int] = ..., fixed_data: _Optional[bool] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "spec", "seed", "batches_per_epoch", "position", "fingerprint", "resolved_config_json", "created_at", "updated_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    spec: SessionSpec
    seed: int
    batches_per_epoch: int
    position: Position
    fingerprint: str
    resolved_config_json: str
    created_at: float
    updated_at: float
    def __init__(self, session_id: _Optional[str] = ..., spec: _Optional[_Union[SessionSpec, _Mapping]] = ..., seed: _Optional[int] = ..., batches_per_epoch: _Optional[int] = ..., position: _Optional[_Union[Position, _Mapping]] = ..., fingerprint: _Optional[str] = ..., resolved_config_json: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: SessionSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[SessionSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session", "existing", "session_token")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session: SessionInfo
    existing: bool
    session_token: str
    def __init__(self, session: _Optional[_Union[SessionInfo, _Mapping]] = ..., existing: _Optional[bool] = ..., session_token: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: Position
    def __init__(self, position: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class Array(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("position", "arrays", "fingerprint")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    position: Position
    arrays: _containers.RepeatedCompositeFieldContainer[Array]
    fingerprint: str
    def __init__(self, position: _Optional[_Union[Position, _Mapping]] = ..., arrays: _Optional[_Iterable[_Union[Array, _Mapping]]] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class BatchPart(_message.Message):
    __slots__ = ("position", "part_index", "part_count", "payload")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    PART_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    position: Position
    part_index: int
    part_count: int
    payload: bytes
    def __init__(self, position: _Optional[_Union[Position, _Mapping]] = ..., part_index: _Optional[int] = ..., part_count: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("session_id", "start_global_index", "window", "max_batches", "takeover")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    START_GLOBAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_FIELD_NUMBER: _ClassVar[int]
    TAKEOVER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    start_global_index: int
    window: int
    max_batches: int
    takeover: bool
    def __init__(self, session_id: _Optional[str] = ..., start_global_index: _Optional[int] = ..., window: _Optional[int] = ..., max_batches: _Optional[int] = ..., takeover: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("global_index",)
    GLOBAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    global_index: int
    def __init__(self, global_index: _Optional[int] = ...) -> None: ...

class StreamBatchesRequest(_message.Message):
    __slots__ = ("start", "ack")
    START_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    ack: Ack
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class StreamBatchesResponse(_message.Message):
    __slots__ = ("batch", "part")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    part: BatchPart
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ..., part: _Optional[_Union[BatchPart, _Mapping]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("session_id", "label")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    label: str
    def __init__(self, session_id: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("snapshot_id", "session_id", "label", "position", "fingerprint", "created_at", "state_json")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    session_id: str
    label: str
    position: Position
    fingerprint: str
    created_at: float
    state_json: str
    def __init__(self, snapshot_id: _Optional[str] = ..., session_id: _Optional[str] = ..., label: _Optional[str] = ..., position: _Optional[_Union[Position, _Mapping]] = ..., fingerprint: _Optional[str] = ..., created_at: _Optional[float] = ..., state_json: _Optional[str] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("session_id", "snapshot_id", "state_json")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    snapshot_id: str
    state_json: str
    def __init__(self, session_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., state_json: _Optional[str] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionInfo
    def __init__(self, session: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotInfo]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[SnapshotInfo, _Mapping]]] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("session_id", "snapshot_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    snapshot_id: str
    def __init__(self, session_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: SnapshotInfo
    def __init__(self, snapshot: _Optional[_Union[SnapshotInfo, _Mapping]] = ...) -> None: ...
