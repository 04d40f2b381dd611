from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ListRequest(_message.Message):
    __slots__ = ("state", "gate", "model", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: str
    gate: str
    model: str
    limit: int
    def __init__(self, state: _Optional[str] = ..., gate: _Optional[str] = ..., model: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ItemRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("id", "lease_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_s: int
    def __init__(self, id: _Optional[str] = ..., lease_s: _Optional[int] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "action", "reason", "value_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    reason: str
    value_json: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., value_json: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatesRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SetGatesRequest(_message.Message):
    __slots__ = ("model", "base_revision", "gates_json", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    GATES_JSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_revision: int
    gates_json: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., base_revision: _Optional[int] = ..., gates_json: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReviewDocument(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
