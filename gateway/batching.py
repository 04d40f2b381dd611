"""Hand a sidecar the infer calls that meet in the gateway as one envelope (`aios.envelope`).

Only backends that say they are an AIOS sidecar (``GET /v2``) take envelopes; calls to
any other backend (a Triton, say) go one by one as before. The sidecar answers every call
of an envelope as if it had come alone, so each call keeps its identity, its route
headers, its decision record and its status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import orjson
from prometheus_client import CollectorRegistry

from aios.batching import (
    CALLS_BUCKETS,
    JSON_HEADERS,
    Asked,
    Coalescer,
    Waiting,
    content_headers,
    input_layout,
)
from aios.envelope import BATCH_PATH, JSON_TYPE, decode_answers, encode_calls
from aios.errors import AiosError, InvalidInput, UpstreamUnavailable, grpc_code_for
from aios.grpcjson import request_json, response_message
from aios.kserve import error_text, peek_model, validate_infer_request
from aios.metrics import LoopHistogram
from aios.plane import (
    PROTOCOL_HEADER,
    REVIEW_HEADER,
    REVIEW_ID_HEADER,
    model_path,
    valid_model_name,
    valid_version,
)
from aios.tasks import Tasks
from aios.upstream import (
    GrpcReply,
    GrpcUpstream,
    HttpReply,
    HttpUpstream,
    Metadata,
    grpc_error,
    kept_response_headers,
    outgoing,
)

logger = logging.getLogger(__name__)

SIDECAR_NAME = "aios-sidecar"
INFER_METHOD = "/ModelInfer"

# (timeout,): calls with the same timeout share an envelope, whatever model version
# they are for.
EnvelopeKey = tuple[float | None]


class Envelopes:
    """How calls to one backend go together: in an envelope, if the backend is a sidecar
    (asked in the background; until it has answered, none go together)."""

    def __init__(self, name: str, http: HttpUpstream, max_rows: int, tasks: Tasks) -> None:
        self._name = name
        self._http = http
        self._max_rows = max_rows
        self._sidecar: Asked[str] = Asked(self._rows_if_sidecar, tasks)

    def rows(self, key: EnvelopeKey) -> int:
        """Rows an envelope to this backend may hold (0: it takes none), whatever its
        timeout."""
        return self._sidecar.rows(self._name)

    async def _rows_if_sidecar(self, name: str) -> int:
        try:
            reply = await self._http.request("GET", "/v2", b"", ())
            if reply.status == 200 and orjson.loads(reply.body).get("name") == SIDECAR_NAME:
                return self._max_rows
        except (AiosError, orjson.JSONDecodeError, AttributeError) as exc:
            logger.info("backend %r: cannot tell whether it takes envelopes: %s", name, exc)
        return 0

    async def together(self, key: EnvelopeKey, calls: list[Waiting]) -> list[HttpReply] | None:
        """The calls in one envelope; None if the backend refused it as a whole."""
        envelope = encode_calls([(c.path, outgoing(c.headers, c.extra), c.body)
                                 for c in calls])
        reply = await self._http.request("POST", BATCH_PATH, envelope, JSON_HEADERS.items(),
                                         None, key[0])
        if reply.status != 200:
            # The envelope was refused as a whole (too large, overloaded, not a sidecar
            # after all): no call was answered, so each goes on its own.
            logger.debug("backend %r refused an envelope of %d calls: %d", self._name,
                         len(calls), reply.status)
            return None
        try:
            answers = decode_answers(reply.body, len(calls))
        except (ValueError, KeyError, TypeError) as exc:
            # The calls were answered, so sending them again would decide them twice.
            raise UpstreamUnavailable(
                f"backend {self._name!r} answered an envelope of calls malformed") from exc
        return [HttpReply(status, kept_response_headers(headers.items()), body)
                for status, headers, body in answers]


class BackendBatching:
    """Envelopes of calls to one backend, if it is a sidecar."""

    def __init__(self, name: str, http: HttpUpstream, max_rows: int, max_in_flight: int,
                 calls_per_request: LoopHistogram) -> None:
        self._name = name
        self._http = http
        self.tasks = Tasks()
        self._envelopes = Envelopes(name, http, max_rows, self.tasks)
        self.coalescer: Coalescer[EnvelopeKey] = Coalescer(
            http, self._envelopes, max_in_flight, calls_per_request, self.tasks)

    async def request(self, method: str, path: str, body: bytes,
                      headers: Iterable[tuple[str, str]],
                      extra: Mapping[str, str] | None = None,
                      timeout_s: float | None = None) -> HttpReply:
        """`HttpUpstream.request`, with a mergeable infer call sent in an envelope (for
        callers that hold only the body: shadow copies)."""
        headers = list(headers)
        if method == "POST" and path.endswith("/infer"):
            try:
                header = validate_infer_request(body, len(body))
            except InvalidInput:  # compressed or binary: it goes alone
                return await self._http.request(method, path, body, headers, extra, timeout_s)
            if input_layout(header, content_headers(headers)) is not None:
                return await self.forward(path, body, headers, extra, timeout_s, header.batch)
        return await self._http.request(method, path, body, headers, extra, timeout_s)

    async def forward(self, path: str, body: bytes, headers: list[tuple[str, str]],
                      extra: Mapping[str, str] | None, timeout_s: float | None,
                      rows: int) -> HttpReply:
        """Send a mergeable infer call (one `input_layout` allows), in an envelope with
        others with the same timeout where they meet."""
        return await self.coalescer.forward((timeout_s,), path, body, headers, extra, timeout_s,
                                            rows)

    async def infer_grpc(self, path: str, payload: bytes, metadata: Metadata,
                         extra: Mapping[str, str], timeout_s: float | None,
                         ) -> GrpcReply | None:
        """A gRPC infer call carried to the sidecar as JSON, in an envelope with others
        (`aios.grpcjson`), answered as the gRPC response it stands for; None if it must go
        over gRPC (not a sidecar, binary metadata, a request JSON would not carry exactly,
        more rows than an envelope holds).
        An error status is raised as the one a gRPC hop would have given."""
        rows = self._envelopes.rows((timeout_s,))
        if not rows or any(not isinstance(value, str) for _, value in metadata):
            return None
        converted = request_json(payload)
        if converted is None:
            return None
        body, header = converted
        if header.batch > rows or input_layout(header, {}) is None:
            return None  # it would go alone: as gRPC, then
        headers = [(key, str(value)) for key, value in metadata]
        headers.append(("content-type", JSON_TYPE))
        reply = await self.forward(path, body, headers, {**extra, PROTOCOL_HEADER: "grpc"},
                                   timeout_s, header.batch)
        if reply.status not in (200, 202):  # 202: held for review, without outputs
            raise grpc_error(self._name, grpc_code_for(reply.status), error_text(reply.body))
        marks = tuple((k, v) for k, v in reply.headers.items()
                      if k in (REVIEW_HEADER, REVIEW_ID_HEADER))
        try:
            return GrpcReply(response_message(reply.body, held=reply.status == 202), marks)
        except ValueError as exc:
            raise UpstreamUnavailable(
                f"backend {self._name!r} answered a gRPC call malformed") from exc


class GrpcCalls:
    """gRPC calls to one backend: an infer call goes as JSON in an envelope where
    `BackendBatching.infer_grpc` takes it, any other over gRPC."""

    def __init__(self, grpc: GrpcUpstream, batching: BackendBatching | None) -> None:
        self.grpc = grpc
        self._batching = batching

    async def call(self, method: str, payload: bytes, metadata: Metadata,
                   extra: Mapping[str, str] | None = None,
                   timeout_s: float | None = None) -> GrpcReply:
        """`GrpcUpstream.call`, by way of an envelope where it can."""
        if self._batching is not None and method.endswith(INFER_METHOD):
            path = infer_path(payload)
            reply = None if path is None else await self._batching.infer_grpc(
                path, payload, metadata, extra or {}, timeout_s)
            if reply is not None:
                return reply
        return await self.grpc.call(method, payload, metadata, extra, timeout_s)


def infer_path(payload: bytes) -> str | None:
    """The REST infer path of a gRPC infer request (None: a model name or version that no
    path carries)."""
    model, version = peek_model(payload)
    if not (valid_model_name(model) and valid_version(version)):
        return None
    return model_path(model, version, "/infer")


def calls_histogram(registry: CollectorRegistry) -> LoopHistogram:
    """Calls per request the gateway sends to a sidecar (1: sent alone)."""
    return LoopHistogram("aios_gateway_calls_per_backend_request",
                         "Mergeable infer calls per request sent to a sidecar (1: sent alone)",
                         (), CALLS_BUCKETS, registry)
