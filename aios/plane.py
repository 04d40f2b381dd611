"""What a KServe v2 front door needs from the service behind it (KServe's data-plane split).

The gateway and the sidecar each implement `KServePlane`; `aios.rest` and
`aios.grpc_service` are thin protocol adapters over it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aios.kserve import InferHeader
from aios.streaming import StreamSession
from aios.upstream import GrpcReply, HttpReply, Metadata

# Headers one hop sets for the next: who is calling and where the call was routed. They
# are never taken from a client (see `aios.upstream.FORWARDED_REQUEST_HEADERS`).
TENANT_HEADER = "x-aios-tenant"
SUBJECT_HEADER = "x-aios-subject"
TARGET_HEADER = "x-aios-target"
REVISION_HEADER = "x-aios-route-revision"
SHADOW_HEADER = "x-aios-shadow"
# Why the call went to that target (weights | sticky | pinned | fallback | breaker), the
# table's weights in force ("name=weight,..."), and the sticky key's value (the business
# key: a claim id, say), for the decision record.
REASON_HEADER = "x-aios-route-reason"
WEIGHTS_HEADER = "x-aios-route-weights"
BUSINESS_KEY_HEADER = "x-aios-business-key"
# The id of a call's decision record, given to the caller; a shadow copy's record points
# at its primary's.
DECISION_HEADER = "x-aios-decision-id"
SHADOW_OF_HEADER = "x-aios-shadow-of"
# A shadow copy: the primary's decisions (`aios.compare.encode_expected`).
SHADOW_COMPARE_HEADER = "x-aios-shadow-compare"
REQUEST_ID_HEADER = "x-request-id"
# A call of a sequence: its id, and its place in the sequence (1: its first request).
SEQUENCE_HEADER = "x-aios-sequence"
SEQUENCE_POSITION_HEADER = "x-aios-sequence-position"
# A decision a review gate sent to people: "pending", and the review's id.
REVIEW_HEADER = "x-aios-review"
REVIEW_ID_HEADER = "x-aios-review-id"
# A replay (`aios replay`): a recorded decision scored again by a candidate version. Its
# record is kind "replay" and it is counted under protocol "replay": never a decision,
# never drift, never a review.
REPLAY_HEADER = "x-aios-replay"
# A gRPC call the gateway carried to a sidecar as JSON (`aios.grpcjson`): recorded and
# counted as the gRPC call it is.
PROTOCOL_HEADER = "x-aios-protocol"
# Set by an Envoy that routes for us (`gateway.envoy`): the version of an unpinned call,
# and the model and version a mirrored copy is meant for.
VERSION_HEADER = "x-aios-version"
SHADOW_MODEL_HEADER = "x-aios-shadow-model"
SHADOW_VERSION_HEADER = "x-aios-shadow-version"
# Envoy marks a mirrored request by appending this to its Host.
MIRROR_HOST_SUFFIX = "-shadow"

# What a model name may be, in a path or a routing header.
MODEL_NAME = r"[A-Za-z0-9_.\-]+"
_MODEL_NAME = re.compile(MODEL_NAME)


def valid_model_name(name: str) -> bool:
    """Whether ``name`` can be a model name (and so a path segment)."""
    return _MODEL_NAME.fullmatch(name) is not None and name not in (".", "..")


def valid_version(version: str) -> bool:
    """Whether ``version`` can be a model version in a path ("" for none: unpinned)."""
    return not version or (version.isascii() and version.isdigit())


# REST path tails and gRPC methods, by the kind of call they make.
CALL_KINDS = {"": "metadata", "/ready": "ready", "/config": "config", "/stats": "stats",
              "/infer": "infer"}
GRPC_CALL_KINDS = {"ModelMetadata": "metadata", "ModelReady": "ready", "ModelConfig": "config",
                   "ModelStatistics": "stats", "ModelInfer": "infer"}


def model_path(model: str, version: str = "", tail: str = "") -> str:
    """A model's REST path: ``/v2/models/<model>[/versions/<version>]<tail>``."""
    return f"/v2/models/{model}/versions/{version}{tail}" if version else \
        f"/v2/models/{model}{tail}"


@dataclass(frozen=True, slots=True)
class ModelCall:
    """A REST call addressed to a model: ``/v2/models/<model>[/versions/<v>]<tail>``."""

    model: str
    version: str
    tail: str  # "", "/ready", "/config", "/infer", "/stats"
    method: str
    body: bytes
    headers: Iterable[tuple[str, str]]
    infer: InferHeader | None = None  # of an infer call: its validated JSON header
    protocol: str = "rest"  # "grpc" for a gRPC call carried as JSON (PROTOCOL_HEADER)

    @property
    def batch(self) -> int:
        """Rows in an infer call (1 for any other call)."""
        return self.infer.batch if self.infer else 1

    @property
    def kind(self) -> str:
        """What the call does: metadata, ready, config, stats or infer."""
        return CALL_KINDS[self.tail]

    @property
    def upstream_path(self) -> str:
        """The path to forward, with the version this call is addressed to."""
        return model_path(self.model, self.version, self.tail)


class KServePlane(Protocol):
    """A service that answers KServe v2 calls, over either protocol."""

    server_name: str

    async def ready(self) -> bool:
        """Whether the service can serve inference now."""
        ...

    async def precheck(self, kind: str, model: str, headers: Iterable[tuple[str, Any]]) -> None:
        """Refuse a call before its body is read (e.g. a bad token), or return."""
        ...

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """Answer a REST model call (metadata, readiness, config, infer, stats)."""
        ...

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """Answer a model-level gRPC call given as serialized bytes."""
        ...

    async def repository_index(self, headers: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
        """The models the caller may see, as Triton's repository index lists them (name,
        version, state, reason)."""
        ...

    def open_stream(self, metadata: Metadata) -> StreamSession:
        """A ModelStreamInfer stream with ``metadata`` (`aios.streaming`)."""
        ...


def header_value(items: Iterable[tuple[str, Any]], name: str) -> str | None:
    """The first value of header/metadata ``name`` (lower-case) in ``items``."""
    for key, value in items:
        if key == name:
            return value if isinstance(value, str) else bytes(value).decode("latin-1")
    return None
