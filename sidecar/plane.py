"""The sidecar's data plane: REST, gRPC and the gateway's envelopes, each a few lines
that build infer calls and hand them to the one answer pipeline (`sidecar.pipeline`);
other model calls pass through to Triton; golden-set replay at start and on a schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from aios.batching import JSON_HEADERS, content_headers
from aios.config import SidecarSettings
from aios.envelope import Answer, decode_calls, encode_answers
from aios.errors import AiosError, InvalidInput, UpstreamUnavailable, error_parts
from aios.kserve import check_infer_doc, check_parameters, peek_model
from aios.metrics import RequestMetrics
from aios.plane import (
    GRPC_CALL_KINDS,
    PROTOCOL_HEADER,
    REPLAY_HEADER,
    SHADOW_MODEL_HEADER,
    SHADOW_VERSION_HEADER,
    VERSION_HEADER,
    ModelCall,
    header_value,
    model_path,
    valid_model_name,
    valid_version,
)
from aios.rest import PREFIX, parse_model_path
from aios.tensors import Tensors, grpc_request_inputs, rest_outputs, rest_request_inputs
from aios.tracing import Tracing
from aios.upstream import (
    GrpcReply,
    GrpcUpstream,
    HttpReply,
    HttpUpstream,
    Metadata,
)
from sidecar.batching import BatchKey, TritonBatching, batch_key
from sidecar.decisionlog import DecisionLog
from sidecar.parity import Parity
from sidecar.pipeline import CostCollector, InferCall, Pipeline, mirrored
from sidecar.redaction import NONE as NO_FEATURE_RULES
from sidecar.redaction import FeatureRedaction
from sidecar.review import ReviewDesk
from sidecar.streams import SidecarStream

logger = logging.getLogger(__name__)


class SidecarPlane:
    """Pass-through to one Triton, with a decision record for every inference."""

    server_name = "aios-sidecar"

    def __init__(self, settings: SidecarSettings, http: HttpUpstream, grpc: GrpcUpstream,
                 log: DecisionLog | None, parity: Parity | None, registry: CollectorRegistry,
                 tracing: Tracing, batching: TritonBatching | None = None,
                 features: FeatureRedaction = NO_FEATURE_RULES,
                 review: ReviewDesk | None = None) -> None:
        self._settings = settings
        self._http = http
        self._grpc = grpc
        self._parity = parity
        self._batching = batching
        self._metrics = RequestMetrics(registry, "sidecar")
        registry.register(CostCollector(self._metrics))
        self._pipeline = Pipeline(settings.decision_log, http, grpc, log, parity,
                                  self._metrics, registry, tracing, batching, features,
                                  review)
        self._review = review
        self._golden_done = asyncio.Event()
        if parity is None:
            self._golden_done.set()

    async def precheck(self, kind: str, model: str, headers: Iterable[tuple[str, Any]]) -> None:
        """Nothing to check before the body: the gateway verified the caller."""

    async def repository_index(self, headers: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
        """Triton's own index (read-only), as its REST API gives it."""
        reply = await self._http.request("POST", "/v2/repository/index", b"{}", ())
        try:
            if reply.status != 200:
                raise ValueError(f"status {reply.status}")
            return [{k: str(m.get(k, "")) for k in ("name", "version", "state", "reason")}
                    for m in json.loads(reply.body)]
        except (ValueError, TypeError, AttributeError) as exc:
            raise UpstreamUnavailable(f"Triton's repository index could not be read ({exc})") \
                from exc

    async def ready(self) -> bool:
        """Ready when Triton is and every version reproduces its golden set."""
        if not self._golden_done.is_set() or not await self._http.ready():
            return False
        return self._parity is None or all(self._parity.golden_ok.values())

    # -- golden replay -------------------------------------------------------------------

    async def replay_golden(self) -> None:
        """Replay every version's golden set through Triton and judge it."""
        assert self._parity is not None
        for profile in self._parity.profiles.values():
            body = json.dumps({"inputs": [{
                "name": profile.input_name, "datatype": "FP32",
                "shape": list(profile.golden_inputs.shape),
                "data": profile.golden_inputs.ravel().tolist()}]}).encode()
            path = model_path(profile.model, profile.version, "/infer")
            try:
                reply = await self._http.request("POST", path, body, ())
                outputs = rest_outputs(reply.body, reply.headers).get(profile.output_name) \
                    if reply.status == 200 else None
                error = "" if reply.status == 200 else f"Triton answered {reply.status}"
            except AiosError as exc:
                outputs, error = None, exc.message
            self._parity.record_golden(profile, outputs, error)
        self._golden_done.set()

    async def golden_loop(self) -> None:
        """Replay at start (readiness waits for it) and then on a schedule."""
        assert self._parity is not None
        while True:
            if await self._http.ready():
                await self.replay_golden()
                await asyncio.sleep(self._parity_interval)
            else:
                await asyncio.sleep(0.5)

    @property
    def _parity_interval(self) -> float:
        return self._settings.parity.golden_interval_s

    # -- the data path: each entry point builds calls for the pipeline -------------------

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """A REST model call: an inference through the pipeline, anything else to Triton."""
        call = routed(call)
        if call.kind != "infer":
            with self._metrics.track(call.model, call.version, call.protocol) as outcome:
                reply = await self._http.request(call.method, call.upstream_path, call.body,
                                                 call.headers)
                outcome.code = str(reply.status)
                return reply
        answered = await self._answer_one(self._rest_call(call))
        assert isinstance(answered, HttpReply)
        return answered

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """A gRPC model call: an inference through the pipeline, anything else to Triton."""
        if GRPC_CALL_KINDS.get(method.rsplit("/", 1)[1]) != "infer":
            model, version = peek_model(payload)
            with self._metrics.track(model, version, "grpc") as outcome:
                reply = await self._grpc.call(method, payload, metadata)
                outcome.code = "OK"
                return reply
        answered = await self._answer_one(grpc_call(method, payload, metadata))
        assert isinstance(answered, GrpcReply)
        return answered

    def open_stream(self, metadata: Metadata) -> SidecarStream:
        """A ModelStreamInfer stream, carried to Triton (`sidecar.streams`)."""
        return SidecarStream(metadata, self._grpc, self._pipeline, self._metrics,
                             self._review, self._settings.server.stream_max_in_flight)

    async def answer_batch(self, envelope: bytes) -> HttpReply:
        """A gateway's envelope of infer calls (`aios.envelope`), each answered as if it
        had come alone: a call that is not well formed gets its own error."""
        docs = decode_calls(envelope)
        # A path that is not a model's infer path refuses the whole envelope (400).
        paths = {path: envelope_path(path) for path in {path for path, _, _ in docs}}
        calls: list[InferCall] = []
        answers: dict[int, Answer] = {}
        places: list[int] = []
        for i, (path, headers, doc) in enumerate(docs):
            try:
                calls.append(self._rest_call(envelope_call(paths[path], headers, doc)))
                places.append(i)
            except AiosError as exc:
                answers[i] = error_parts(exc)
        for i, outcome in zip(places, await self._pipeline.answer(calls) if calls else [],
                              strict=True):
            answers[i] = error_parts(outcome) if isinstance(outcome, AiosError) else (
                answer_of(outcome))
        return HttpReply(200, JSON_HEADERS,
                         encode_answers([answers[i] for i in range(len(answers))]))

    async def _answer_one(self, call: InferCall) -> HttpReply | GrpcReply:
        """A lone call through the pipeline (a batch of one); its error raised."""
        (answered,) = await self._pipeline.answer([call])
        if isinstance(answered, AiosError):
            raise answered
        return answered

    def _rest_call(self, call: ModelCall) -> InferCall:
        return InferCall(call.protocol, call.model, call.version, list(call.headers),
                         request_id(call), infer_inputs(call), call.batch, len(call.body),
                         rest=call, key=merge_key(call) if self._batching and
                         call.protocol != "replay" else None)  # a replay goes alone


def answer_of(reply: HttpReply | GrpcReply) -> Answer:
    """An envelope's answer to one of its calls."""
    assert isinstance(reply, HttpReply)
    return reply.status, reply.headers, reply.body


def grpc_call(method: str, payload: bytes, metadata: Metadata) -> InferCall:
    """A gRPC infer call, decoded for the pipeline (its bytes go to Triton as they are)."""
    model, version = peek_model(payload)
    request, inputs = grpc_request_inputs(payload)
    check_parameters(request.parameters.keys())
    first = next(iter(inputs.values()), None)
    rows = len(first) if first is not None and first.ndim else 1
    return InferCall("grpc", model, version, metadata, request.id, inputs, rows, len(payload),
                     grpc=(method, payload))


def envelope_call(place: tuple[str, str, str], headers: list[tuple[str, str]],
                  doc: Any) -> ModelCall:
    """An envelope's call to ``place`` (model, version, tail), as the REST adapter would
    have made it."""
    model, version, tail = place
    body = orjson.dumps(doc)
    return routed(ModelCall(model, version, tail, "POST", body, headers,
                            check_infer_doc(doc, len(body))))


def infer_inputs(call: ModelCall) -> Tensors:
    """The numeric inputs of a REST infer call."""
    assert call.infer is not None, "the REST adapter validates every infer call"
    return rest_request_inputs(call.body, call.infer)


def merge_key(call: ModelCall) -> BatchKey | None:
    """Under which key a REST infer call may share a Triton request (None: alone)."""
    if call.infer is None:
        return None
    return batch_key(call.model, call.version, call.infer, content_headers(call.headers))


def envelope_path(path: str) -> tuple[str, str, str]:
    """(model, version, tail) of an envelope call's path; InvalidInput (for the whole
    envelope: a gateway sent it) unless it is a model's infer path."""
    if not path.startswith(PREFIX):
        raise InvalidInput(f"batch envelope: not a model path: {path!r}")
    model, version, tail = parse_model_path(path[len(PREFIX):])
    if tail != "/infer":
        raise InvalidInput(f"batch envelope: not an infer path: {path!r}")
    return model, version, tail


def request_id(call: ModelCall) -> str:
    """The id a REST infer call carries ("" if none, or not a string)."""
    rid = call.infer.doc.get("id", "") if call.infer is not None else ""
    return rid if isinstance(rid, str) else ""


def routed(call: ModelCall) -> ModelCall:
    """The call as an Envoy route meant it: an unpinned call at the version its weighted
    cluster chose; a mirrored copy at the shadow's model and version. Without those
    headers (the gateway pins versions in the path) the call is unchanged, but for a gRPC
    call the gateway carried as JSON (PROTOCOL_HEADER), which is marked as one."""
    model, version = call.model, call.version
    if header_value(call.headers, PROTOCOL_HEADER) == "grpc" and call.protocol != "grpc":
        call = dataclasses.replace(call, protocol="grpc")
    if header_value(call.headers, REPLAY_HEADER) == "1" and call.protocol != "replay":
        call = dataclasses.replace(call, protocol="replay")
    if mirrored(call.headers):
        model = header_value(call.headers, SHADOW_MODEL_HEADER) or model
        version = header_value(call.headers, SHADOW_VERSION_HEADER) or version
    elif not version:
        version = header_value(call.headers, VERSION_HEADER) or ""
    if (model, version) == (call.model, call.version):
        return call
    if not valid_version(version):
        raise InvalidInput(f"routing header: bad model version {version!r}")
    if not valid_model_name(model):
        raise InvalidInput(f"routing header: bad model name {model!r}")
    return dataclasses.replace(call, model=model, version=version)
