from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorRecord(_message.Message):
    __slots__ = ("name", "datatype", "shape", "redaction", "contents", "sha256", "columns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    REDACTION_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    redaction: str
    contents: bytes
    sha256: bytes
    columns: _containers.RepeatedCompositeFieldContainer[ColumnRedaction]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., redaction: _Optional[str] = ..., contents: _Optional[bytes] = ..., sha256: _Optional[bytes] = ..., columns: _Optional[_Iterable[_Union[ColumnRedaction, _Mapping]]] = ...) -> None: ...

class ColumnRedaction(_message.Message):
    __slots__ = ("index", "name", "redaction", "digest")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REDACTION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    redaction: str
    digest: bytes
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., redaction: _Optional[str] = ..., digest: _Optional[bytes] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("sequence", "time_unix_nanos", "request_id", "tenant", "subject", "model", "version", "route_target", "route_revision", "protocol", "inputs", "outputs", "latency_micros", "trace_id", "parity_flags", "outcome", "error", "shadow", "prev_hash", "hash", "decision_id", "business_key", "route_reason", "route_weights", "shadow_of", "kind", "route_change", "audit_read", "shadow_agreement", "review_id", "review_gate", "human_review", "sequence_id", "sequence_position", "response_index")
    class RouteWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_TARGET_FIELD_NUMBER: _ClassVar[int]
    ROUTE_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MICROS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PARITY_FLAGS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_KEY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUTE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_OF_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUTE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_READ_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_GATE_FIELD_NUMBER: _ClassVar[int]
    HUMAN_REVIEW_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_POSITION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_INDEX_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time_unix_nanos: int
    request_id: str
    tenant: str
    subject: str
    model: str
    version: str
    route_target: str
    route_revision: int
    protocol: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorRecord]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorRecord]
    latency_micros: int
    trace_id: str
    parity_flags: _containers.RepeatedScalarFieldContainer[str]
    outcome: str
    error: str
    shadow: bool
    prev_hash: bytes
    hash: bytes
    decision_id: str
    business_key: str
    route_reason: str
    route_weights: _containers.ScalarMap[str, int]
    shadow_of: str
    kind: str
    route_change: RouteChange
    audit_read: AuditRead
    shadow_agreement: ShadowAgreement
    review_id: str
    review_gate: str
    human_review: HumanReview
    sequence_id: str
    sequence_position: int
    response_index: int
    def __init__(self, sequence: _Optional[int] = ..., time_unix_nanos: _Optional[int] = ..., request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., subject: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., route_target: _Optional[str] = ..., route_revision: _Optional[int] = ..., protocol: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorRecord, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorRecord, _Mapping]]] = ..., latency_micros: _Optional[int] = ..., trace_id: _Optional[str] = ..., parity_flags: _Optional[_Iterable[str]] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., shadow: _Optional[bool] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., decision_id: _Optional[str] = ..., business_key: _Optional[str] = ..., route_reason: _Optional[str] = ..., route_weights: _Optional[_Mapping[str, int]] = ..., shadow_of: _Optional[str] = ..., kind: _Optional[str] = ..., route_change: _Optional[_Union[RouteChange, _Mapping]] = ..., audit_read: _Optional[_Union[AuditRead, _Mapping]] = ..., shadow_agreement: _Optional[_Union[ShadowAgreement, _Mapping]] = ..., review_id: _Optional[str] = ..., review_gate: _Optional[str] = ..., human_review: _Optional[_Union[HumanReview, _Mapping]] = ..., sequence_id: _Optional[str] = ..., sequence_position: _Optional[int] = ..., response_index: _Optional[int] = ...) -> None: ...

class HumanReview(_message.Message):
    __slots__ = ("review_id", "gate", "action", "reason", "model_json", "final_json", "queued_unix_nanos")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_JSON_FIELD_NUMBER: _ClassVar[int]
    FINAL_JSON_FIELD_NUMBER: _ClassVar[int]
    QUEUED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    gate: str
    action: str
    reason: str
    model_json: str
    final_json: str
    queued_unix_nanos: int
    def __init__(self, review_id: _Optional[str] = ..., gate: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., model_json: _Optional[str] = ..., final_json: _Optional[str] = ..., queued_unix_nanos: _Optional[int] = ...) -> None: ...

class ShadowAgreement(_message.Message):
    __slots__ = ("output", "threshold", "rows", "agreed")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    AGREED_FIELD_NUMBER: _ClassVar[int]
    output: str
    threshold: float
    rows: int
    agreed: int
    def __init__(self, output: _Optional[str] = ..., threshold: _Optional[float] = ..., rows: _Optional[int] = ..., agreed: _Optional[int] = ...) -> None: ...

class RouteChange(_message.Message):
    __slots__ = ("action", "reason", "before_json", "after_json", "approved_by", "approval_reason", "proposal_id", "evidence_json")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_JSON_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REASON_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    action: str
    reason: str
    before_json: str
    after_json: str
    approved_by: str
    approval_reason: str
    proposal_id: str
    evidence_json: str
    def __init__(self, action: _Optional[str] = ..., reason: _Optional[str] = ..., before_json: _Optional[str] = ..., after_json: _Optional[str] = ..., approved_by: _Optional[str] = ..., approval_reason: _Optional[str] = ..., proposal_id: _Optional[str] = ..., evidence_json: _Optional[str] = ...) -> None: ...

class AuditRead(_message.Message):
    __slots__ = ("action", "query_json", "decision_ids", "results")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_JSON_FIELD_NUMBER: _ClassVar[int]
    DECISION_IDS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    action: str
    query_json: str
    decision_ids: _containers.RepeatedScalarFieldContainer[str]
    results: int
    def __init__(self, action: _Optional[str] = ..., query_json: _Optional[str] = ..., decision_ids: _Optional[_Iterable[str]] = ..., results: _Optional[int] = ...) -> None: ...
