from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Target(_message.Message):
    __slots__ = ("name", "backend", "version", "weight", "timeout_s", "ejected")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    version: str
    weight: int
    timeout_s: float
    ejected: bool
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., version: _Optional[str] = ..., weight: _Optional[int] = ..., timeout_s: _Optional[float] = ..., ejected: _Optional[bool] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("backend", "model", "version", "fraction", "output", "threshold", "timeout_s")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model: str
    version: str
    fraction: float
    output: str
    threshold: float
    timeout_s: float
    def __init__(self, backend: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., fraction: _Optional[float] = ..., output: _Optional[str] = ..., threshold: _Optional[float] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ModelRoute(_message.Message):
    __slots__ = ("model", "revision", "targets", "sticky", "shadow", "proposal_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: int
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    sticky: str
    shadow: Shadow
    proposal_id: str
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., sticky: _Optional[str] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., proposal_id: _Optional[str] = ...) -> None: ...

class ListRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoutesResponse(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[ModelRoute]
    def __init__(self, routes: _Optional[_Iterable[_Union[ModelRoute, _Mapping]]] = ...) -> None: ...

class GetRouteRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ReplaceRouteRequest(_message.Message):
    __slots__ = ("model", "base_revision", "targets", "sticky", "shadow", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_revision: int
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    sticky: str
    shadow: Shadow
    reason: str
    def __init__(self, model: _Optional[str] = ..., base_revision: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., sticky: _Optional[str] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetWeightsRequest(_message.Message):
    __slots__ = ("model", "base_revision", "weights", "reason")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_revision: int
    weights: _containers.ScalarMap[str, int]
    reason: str
    def __init__(self, model: _Optional[str] = ..., base_revision: _Optional[int] = ..., weights: _Optional[_Mapping[str, int]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model", "base_revision", "shadow", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_revision: int
    shadow: Shadow
    reason: str
    def __init__(self, model: _Optional[str] = ..., base_revision: _Optional[int] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("model", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    limit: int
    def __init__(self, model: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("model", "revision", "who", "at", "action", "reason", "before_json", "after_json", "approved_by", "approval_reason", "proposal_id", "evidence_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_JSON_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REASON_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: int
    who: str
    at: float
    action: str
    reason: str
    before_json: str
    after_json: str
    approved_by: str
    approval_reason: str
    proposal_id: str
    evidence_json: str
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[int] = ..., who: _Optional[str] = ..., at: _Optional[float] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., before_json: _Optional[str] = ..., after_json: _Optional[str] = ..., approved_by: _Optional[str] = ..., approval_reason: _Optional[str] = ..., proposal_id: _Optional[str] = ..., evidence_json: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("id", "model", "action", "body_json", "base_revision", "proposer", "reason", "at", "state", "resolver", "resolution", "resolved_at", "revision", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESOLVER_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    action: str
    body_json: str
    base_revision: int
    proposer: str
    reason: str
    at: float
    state: str
    resolver: str
    resolution: str
    resolved_at: float
    revision: int
    error: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., action: _Optional[str] = ..., body_json: _Optional[str] = ..., base_revision: _Optional[int] = ..., proposer: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[float] = ..., state: _Optional[str] = ..., resolver: _Optional[str] = ..., resolution: _Optional[str] = ..., resolved_at: _Optional[float] = ..., revision: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListProposalsRequest(_message.Message):
    __slots__ = ("model", "state")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: str
    def __init__(self, model: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ListProposalsResponse(_message.Message):
    __slots__ = ("proposals",)
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    def __init__(self, proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "model", "state", "step", "percent", "stable", "candidate", "document_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    state: str
    step: int
    percent: int
    stable: str
    candidate: str
    document_json: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., percent: _Optional[int] = ..., stable: _Optional[str] = ..., candidate: _Optional[str] = ..., document_json: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "plan_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    plan_json: str
    def __init__(self, model: _Optional[str] = ..., plan_json: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class RolloutActionRequest(_message.Message):
    __slots__ = ("model", "action", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
