"""The sidecar's data plane: forward to its Triton; record, check and measure every decision.

For an infer call: decode the inputs, check them against the version's training profile
(flag, or refuse with 422 in enforce mode), forward the bytes unchanged, decode the
outputs, feed the drift windows, and write a decision record. In `sync` mode the answer
is released only once its record is durable; if it cannot be recorded the client gets
503, never a 200 for an unrecorded decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aios.batching import JSON_HEADERS, content_headers
from aios.config import SidecarSettings
from aios.envelope import Answer, decode_calls, encode_answers
from aios.errors import (
    AiosError,
    InvalidInput,
    LogUnavailable,
    NotReady,
    error_parts,
    grpc_code_for,
)
from aios.kserve import check_infer_doc, check_parameters, peek_model
from aios.metrics import LoopHistogram, RequestMetrics
from aios.plane import (
    GRPC_CALL_KINDS,
    MIRROR_HOST_SUFFIX,
    PROTOCOL_HEADER,
    REVISION_HEADER,
    SHADOW_HEADER,
    SHADOW_MODEL_HEADER,
    SHADOW_VERSION_HEADER,
    SUBJECT_HEADER,
    TARGET_HEADER,
    TENANT_HEADER,
    VERSION_HEADER,
    ModelCall,
    header_value,
    model_path,
    valid_model_name,
    valid_version,
)
from aios.rest import PREFIX, parse_model_path
from aios.serve import ServiceParts, run_service
from aios.tensors import (
    Tensors,
    grpc_outputs,
    grpc_request_inputs,
    json_outputs,
    rest_outputs,
    rest_request_inputs,
    rest_response,
)
from aios.tracing import TRACING_OFF, Tracing, TracingSettings, current_trace_id, open_tracing
from aios.upstream import (
    TRITON_CLIENT_ERRORS,
    GrpcReply,
    GrpcUpstream,
    HttpReply,
    HttpUpstream,
    Metadata,
)
from proto.decision_record_pb2 import DecisionRecord
from sidecar.batching import (
    BatchKey,
    TritonBatching,
    batch_key,
    merge_inputs,
    merged_body,
    runs,
    split_doc,
)
from sidecar.decisionlog import DecisionLog
from sidecar.parity import Parity, VersionProfile, load_profiles, schema_violations
from sidecar.records import add_tensors, trace_id

logger = logging.getLogger(__name__)

SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# What a decision record takes from a call's headers.
RECORD_HEADERS = frozenset({REVISION_HEADER, TENANT_HEADER, SUBJECT_HEADER, TARGET_HEADER,
                            SHADOW_HEADER, "x-request-id", "traceparent"})

# A call of an envelope, with its place there.
Indexed = tuple[int, ModelCall]



def _new_id() -> str:
    """A record id for a call that brought none: unique, not secret (uuid4 would cost a
    getrandom syscall per call)."""
    return f"{random.getrandbits(128):032x}"

class CostCollector(Collector):
    """Process CPU seconds per answered request: the cost of a prediction."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        total = sum(s.value for m in self._metrics.requests.collect() for s in m.samples
                    if s.name.endswith("_total"))
        cpu = time.process_time()
        yield GaugeMetricFamily("aios_sidecar_cpu_seconds_per_request",
                                "Process CPU seconds over requests answered",
                                value=cpu / total if total else 0.0)


class SidecarPlane:
    """Pass-through to one Triton, with a decision record for every inference."""

    server_name = "aios-sidecar"

    def __init__(self, settings: SidecarSettings, http: HttpUpstream, grpc: GrpcUpstream,
                 log: DecisionLog | None, parity: Parity | None, registry: CollectorRegistry,
                 tracing: Tracing, batching: TritonBatching | None = None) -> None:
        self._tracing = tracing
        self._settings = settings
        self._http = http
        self._grpc = grpc
        self._log = log
        self._parity = parity
        self._metrics = RequestMetrics(registry, "sidecar")
        registry.register(CostCollector(self._metrics))
        labels = ("model", "version", "protocol")
        self._payload = LoopHistogram("aios_sidecar_payload_bytes", "Request and response sizes",
                                      (*labels, "direction"), SIZE_BUCKETS, registry)
        self._batch = LoopHistogram("aios_sidecar_batch_size", "Rows per inference request",
                                    labels, BATCH_BUCKETS, registry)
        self._batching = batching
        self._golden_done = asyncio.Event()
        if parity is None:
            self._golden_done.set()

    async def precheck(self, kind: str, model: str, headers: Iterable[tuple[str, Any]]) -> None:
        """Nothing to check before the body: the gateway verified the caller."""

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

    # -- the data path -------------------------------------------------------------------

    def _record(self, protocol: str, model: str, version: str, headers: Iterable[tuple[str, Any]],
                request_id: str, inputs: Tensors, outputs: Tensors, flags: list[str],
                outcome: str, error: str, started: float) -> DecisionRecord:
        log = self._settings.decision_log
        rules = log.redaction.get(model, {})
        seen: dict[str, str] = {}
        for key, value in headers:
            if key in RECORD_HEADERS and key not in seen:
                seen[key] = value if isinstance(value, str) else bytes(value).decode("latin-1")
        revision = seen.get(REVISION_HEADER, "0")
        record = DecisionRecord(
            time_unix_nanos=time.time_ns(),
            request_id=request_id or seen.get("x-request-id") or _new_id(),
            tenant=seen.get(TENANT_HEADER, ""), subject=seen.get(SUBJECT_HEADER, ""),
            model=model, version=version, route_target=seen.get(TARGET_HEADER, ""),
            route_revision=int(revision) if revision.isascii() and revision.isdigit()
            else 0,
            protocol=protocol,
            latency_micros=int((time.perf_counter() - started) * 1e6),
            trace_id=trace_id(seen.get("traceparent")) or (
                current_trace_id() if self._tracing.enabled else ""),
            parity_flags=flags, outcome=outcome, error=error[:1000],
            shadow=seen.get(SHADOW_HEADER) == "1" or mirrored(headers))
        add_tensors(record.inputs, inputs, rules, log.default_redaction)
        add_tensors(record.outputs, outputs, rules, log.default_redaction)
        return record

    def _check(self, model: str, version: str, inputs: Tensors,
               ) -> tuple[VersionProfile | None, list[str]]:
        if self._parity is None:
            return None, []
        profile = self._parity.profile(model, version)
        if profile is None:
            return None, []
        with self._tracing.span("parity check"):
            return profile, self._parity.check(profile, inputs)

    def _observe(self, profile: VersionProfile | None, inputs: Tensors,
                 outputs: Tensors) -> None:
        if self._parity is None or profile is None:
            return
        x = inputs.get(profile.input_name)
        if x is not None and x.ndim == 2:
            y = outputs.get(profile.output_name)
            self._parity.observe(profile, x, None if y is None else np.asarray(y))

    async def _write(self, build: Callable[[], DecisionRecord]) -> None:
        # Records are built only when there is a log to take them.
        if self._log is not None:
            with self._tracing.span("decision-log write"):
                await self._log.append(build())

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """Forward a REST model call; record and check it if it is an inference."""
        call = routed(call)
        with self._metrics.track(call.model, call.version, call.protocol) as outcome:
            if call.kind != "infer":
                reply = await self._http.request(call.method, call.upstream_path, call.body,
                                                 call.headers)
                outcome.code = str(reply.status)
                return reply
            with self._tracing.server("sidecar infer", call.headers, model=call.model,
                                      version=call.version):
                reply = await self._infer_rest(call)
            outcome.code = status_name(call.protocol, reply.status)
            return reply

    async def _infer_rest(self, call: ModelCall) -> HttpReply:
        started = time.perf_counter()
        inputs = infer_inputs(call)
        labels = self._metrics.labels(call.model, call.version, call.protocol)
        self._payload.labels(*labels, "request").observe(len(call.body))
        self._batch.labels(*labels).observe(call.batch)
        profile, flags = self._check(call.model, call.version, inputs)
        return await self._forward_and_record(call, inputs, profile, flags, started)

    async def _forward_and_record(self, call: ModelCall, inputs: Tensors,
                                  profile: VersionProfile | None, flags: list[str],
                                  started: float, alone: bool = False) -> HttpReply:
        headers = list(call.headers)
        rid = request_id(call)
        labels = self._metrics.labels(call.model, call.version, call.protocol)
        try:
            with self._tracing.span("forward"):
                reply = await self._forward(call, headers, inputs, rid, alone)
        except AiosError as exc:
            code, message = status_name(call.protocol, exc.http_status), exc.message
            await self._write(lambda: self._record(
                call.protocol, call.model, call.version, headers, rid, inputs, {}, flags,
                code, message, started))
            raise
        self._payload.labels(*labels, "response").observe(len(reply.body))
        outputs: Tensors = {}
        version, error = call.version, ""
        try:
            doc, outputs = rest_response(reply.body, reply.headers)
        except (ValueError, KeyError, OSError, zlib.error):
            doc, outputs = {}, {}
        if reply.status == 200:
            version = str(doc.get("model_version", "")) or version
        else:
            error = str(doc.get("error", ""))
        self._observe(profile, inputs, outputs)
        await self._write(lambda: self._record(
            call.protocol, call.model, version, headers, rid, inputs, outputs, flags,
            "ok" if reply.status == 200 else status_name(call.protocol, reply.status), error,
            started))
        return reply

    async def _forward(self, call: ModelCall, headers: list[tuple[str, str]], inputs: Tensors,
                       request_id: str, alone: bool) -> HttpReply:
        if self._batching is None or alone:
            return await self._http.request(call.method, call.upstream_path, call.body,
                                            headers, self._tracing.inject())
        return await self._batching.coalescer.forward(
            merge_key(call), call.upstream_path, call.body, headers, self._tracing.inject(),
            None, call.batch, request_id, inputs)

    async def answer_batch(self, envelope: bytes) -> HttpReply:
        """Answer a gateway's envelope of infer calls (`aios.envelope`), each call as if it
        had come alone. Calls for one model version with one input layout go to Triton as
        one request, and are recorded, measured and answered from its reply, one by one;
        any other call goes its own way (`forward_rest`), as does every call while
        tracing (each gets its own spans)."""
        docs = decode_calls(envelope)
        places = {path: envelope_path(path) for path in {path for path, _, _ in docs}}
        answers: dict[int, Answer] = {}
        groups: dict[BatchKey, list[Indexed]] = {}
        alone: list[Indexed] = []
        for i, (path, headers, doc) in enumerate(docs):
            model, version, tail = places[path]
            try:
                body = orjson.dumps(doc)
                call = routed(ModelCall(model, version, tail, "POST", body, headers,
                                        check_infer_doc(doc, len(body))))
            except AiosError as exc:
                answers[i] = error_parts(exc)
                continue
            key = self._together_key(call)
            (alone if key is None else groups.setdefault(key, [])).append((i, call))
        work = [self._answer_alone(alone)] if alone else []
        for key, calls in groups.items():
            assert self._batching is not None
            limit = self._batching.rows(key)
            for run in runs([call.batch for _, call in calls], limit):
                chunk = calls[run]
                work.append(self._answer_together(key, chunk) if len(chunk) > 1
                            else self._answer_alone(chunk))
        # One group (the usual envelope) is awaited as it is, without a task of its own.
        for answered in [await work[0]] if len(work) == 1 else await asyncio.gather(*work):
            answers.update(answered)
        return HttpReply(200, JSON_HEADERS, encode_answers(
            [answers[i] for i in range(len(docs))]))

    def _together_key(self, call: ModelCall) -> BatchKey | None:
        if self._batching is None or self._tracing.enabled:
            return None
        return merge_key(call)

    async def _answer_alone(self, calls: list[Indexed]) -> list[tuple[int, Answer]]:
        async def answer(call: ModelCall) -> Answer:
            try:
                reply = await self.forward_rest(call)
            except AiosError as exc:
                return error_parts(exc)
            return reply.status, reply.headers, reply.body

        if len(calls) == 1:  # no task and gather for one call
            return [(calls[0][0], await answer(calls[0][1]))]
        answers = await asyncio.gather(*(answer(call) for _, call in calls))
        return [(i, a) for (i, _), a in zip(calls, answers, strict=True)]

    async def _answer_together(self, key: BatchKey, calls: list[Indexed],
                               ) -> list[tuple[int, Answer]]:
        """Calls of one key as one Triton request. Unless they all pass the schema check
        (nothing to flag or refuse) or Triton takes the merged request, each goes alone."""
        started = time.perf_counter()
        model, version, layout = key
        inputs = [infer_inputs(call) for _, call in calls]
        merged = merge_inputs(layout, inputs)
        profile = self._parity.profile(model, version) if self._parity is not None else None
        if profile is not None and schema_violations(profile, merged):
            return await self._answer_alone(calls)
        for _, call in calls:
            labels = self._metrics.labels(model, version, call.protocol)
            self._payload.labels(*labels, "request").observe(len(call.body))
            self._batch.labels(*labels).observe(call.batch)
        self._metrics.now += len(calls)
        try:
            answers = await self._forward_together(key, calls, inputs, merged, profile,
                                                   started)
        finally:
            self._metrics.now -= len(calls)
        if answers is None:
            # Triton refused the merged request (one call's data, say): each call on its
            # own gets exactly the answer it would have had.
            answers = await asyncio.gather(*(
                self._infer_alone(i, call, x, profile, started)
                for (i, call), x in zip(calls, inputs, strict=True)))
        return answers

    async def _forward_together(self, key: BatchKey, calls: list[Indexed],
                                inputs: list[Tensors], merged: Tensors,
                                profile: VersionProfile | None, started: float,
                                ) -> list[tuple[int, Answer]] | None:
        """Send the merged request; record and answer every call from the reply (None:
        Triton refused it)."""
        assert self._batching is not None
        model, version, layout = key
        ids = [request_id(call) for _, call in calls]
        try:
            reply = await self._http.request("POST", calls[0][1].upstream_path,
                                             merged_body(layout, merged), JSON_HEADERS.items())
        except AiosError as exc:
            failed = error_parts(exc)
            return await self._finish(key, calls, [
                (self._record(call.protocol, model, version, call.headers, rid, x, {}, [],
                              status_name(call.protocol, exc.http_status), exc.message,
                              started), failed)
                for (_, call), rid, x in zip(calls, ids, inputs, strict=True)], started)
        try:
            doc = orjson.loads(reply.body) if reply.status == 200 else None
        except orjson.JSONDecodeError:
            doc = None
        parts = split_doc(doc, [call.batch for _, call in calls], ids) if doc else None
        if doc is None or parts is None:
            return None
        self._batching.calls.observe(len(calls))
        try:
            outputs = json_outputs(doc)
        except (ValueError, KeyError, TypeError):
            outputs = {}
        self._observe(profile, merged, outputs)
        served = str(doc.get("model_version", "")) or version
        done, start = [], 0
        for (_, call), rid, x, part in zip(calls, ids, inputs, parts, strict=True):
            mine = {name: y[start:start + call.batch] for name, y in outputs.items()}
            start += call.batch
            done.append((self._record(call.protocol, model, served, call.headers, rid, x,
                                      mine, [], "ok", "", started),
                         (200, JSON_HEADERS, orjson.dumps(part))))
        return await self._finish(key, calls, done, started)

    async def _finish(self, key: BatchKey, calls: list[Indexed],
                      done: Sequence[tuple[DecisionRecord, Answer]], started: float,
                      ) -> list[tuple[int, Answer]]:
        """Log each call's record, then count and answer it (503 for a record the sync log
        could not make durable)."""
        errors: list[LogUnavailable | None] = [None] * len(done)
        if self._log is not None:
            with self._tracing.span("decision-log write"):
                errors = await self._log.append_many([record for record, _ in done])
        seconds = time.perf_counter() - started
        out = []
        for (i, call), (_, answer), error in zip(calls, done, errors, strict=True):
            labels = self._metrics.labels(key[0], key[1], call.protocol)
            if error is not None:
                answer = error_parts(error)
            else:
                self._payload.labels(*labels, "response").observe(len(answer[2]))
            self._metrics.done(labels, status_name(call.protocol, answer[0]), seconds)
            out.append((i, answer))
        return out

    async def _infer_alone(self, i: int, call: ModelCall, inputs: Tensors,
                           profile: VersionProfile | None, started: float,
                           ) -> tuple[int, Answer]:
        """A call whose merged request Triton refused, sent as it came (already checked
        and counted in)."""
        with self._metrics.track(call.model, call.version, call.protocol) as outcome:
            try:
                reply = await self._forward_and_record(call, inputs, profile, [], started,
                                                       alone=True)
            except AiosError as exc:
                return i, error_parts(exc)
            outcome.code = status_name(call.protocol, reply.status)
            return i, (reply.status, reply.headers, reply.body)

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """Forward a gRPC model call; record and check it if it is an inference."""
        model, version = peek_model(payload)
        with self._metrics.track(model, version, "grpc") as outcome:
            if GRPC_CALL_KINDS.get(method.rsplit("/", 1)[1]) != "infer":
                reply = await self._grpc.call(method, payload, metadata)
            else:
                with self._tracing.server("sidecar infer", metadata, model=model,
                                          version=version):
                    reply = await self._infer_grpc(method, payload, metadata, model, version)
            outcome.code = "OK"
            return reply

    async def _infer_grpc(self, method: str, payload: bytes, metadata: Metadata, model: str,
                          version: str) -> GrpcReply:
        started = time.perf_counter()
        request, inputs = grpc_request_inputs(payload)
        check_parameters(request.parameters.keys())
        labels = self._metrics.labels(model, version, "grpc")
        self._payload.labels(*labels, "request").observe(len(payload))
        first = next(iter(inputs.values()), None)
        self._batch.labels(*labels).observe(len(first) if first is not None and first.ndim else 1)
        profile, flags = self._check(model, version, inputs)
        try:
            with self._tracing.span("forward"):
                reply = await self._grpc.call(method, payload, metadata, self._tracing.inject())
        except AiosError as exc:
            code, message = exc.grpc_code.name, exc.message
            await self._write(lambda: self._record(
                "grpc", model, version, metadata, request.id, inputs, {}, flags, code,
                message, started))
            raise
        self._payload.labels(*labels, "response").observe(len(reply.payload))
        outputs = grpc_outputs(reply.payload)
        served = _grpc_version(reply.payload) or version
        self._observe(profile, inputs, outputs)
        await self._write(lambda: self._record(
            "grpc", model, served, metadata, request.id, inputs, outputs, flags, "ok", "",
            started))
        return reply


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


def mirrored(headers: Iterable[tuple[str, Any]]) -> bool:
    """Whether a call is Envoy's mirrored copy of another (its Host says so)."""
    return (header_value(headers, "host") or "").endswith(MIRROR_HOST_SUFFIX)


def status_name(protocol: str, status: int) -> str:
    """How a call's outcome is counted and recorded: its HTTP status, or for a gRPC call
    carried as JSON the gRPC code a gRPC hop would have answered."""
    if protocol != "grpc":
        return str(status)
    return "OK" if status == 200 else grpc_code_for(status).name


def routed(call: ModelCall) -> ModelCall:
    """The call as an Envoy route meant it: an unpinned call at the version its weighted
    cluster chose; a mirrored copy at the shadow's model and version. Without those
    headers (the gateway pins versions in the path) the call is unchanged, but for a gRPC
    call the gateway carried as JSON (PROTOCOL_HEADER), which is marked as one."""
    model, version = call.model, call.version
    if header_value(call.headers, PROTOCOL_HEADER) == "grpc" and call.protocol != "grpc":
        call = dataclasses.replace(call, protocol="grpc")
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


def _grpc_version(payload: bytes) -> str:
    from tritonclient.grpc import service_pb2

    return str(service_pb2.ModelInferResponse.FromString(payload).model_version)


@asynccontextmanager
async def open_sidecar(settings: SidecarSettings, registry: CollectorRegistry,
                       tracing: Tracing) -> AsyncIterator[ServiceParts]:
    """Open the connections to Triton, the decision log and the parity checks."""
    limit = settings.server.max_body_bytes
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            HttpUpstream("triton", settings.triton, TRITON_CLIENT_ERRORS))
        grpc = await stack.enter_async_context(GrpcUpstream("triton", settings.triton, limit))
        log = None
        if settings.decision_log.enabled:
            log = await stack.enter_async_context(DecisionLog(settings.decision_log, registry))
        parity = None
        if settings.parity.enabled:
            profiles = load_profiles(settings.parity.model_repository)
            if not profiles:
                raise NotReady(f"no training profiles under {settings.parity.model_repository}")
            parity = Parity(settings.parity, profiles, registry)
        batching = None
        if settings.batching.enabled:
            batching = TritonBatching(http, settings.batching.max_rows,
                                      settings.batching.max_in_flight, registry)
            stack.push_async_callback(batching.tasks.aclose)
        plane = SidecarPlane(settings, http, grpc, log, parity, registry, tracing, batching)
        if parity is not None:
            task = asyncio.create_task(plane.golden_loop())
            stack.callback(task.cancel)
        yield ServiceParts(plane, batch=plane.answer_batch)


async def run_sidecar(settings: SidecarSettings,
                      tracing: TracingSettings = TRACING_OFF) -> None:
    """Serve the sidecar until stopped by a signal."""
    registry = CollectorRegistry()
    with open_tracing(tracing) as spans:
        await run_service("sidecar", open_sidecar(settings, registry, spans), settings.server,
                          registry)
