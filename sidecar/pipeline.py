"""The sidecar's one answer pipeline: every infer call, whatever it came by (REST, gRPC,
a gateway's envelope), is answered by `Pipeline.answer`, and a lone call is a batch of
one.

For the calls of one model version: count them in, check their inputs against the
version's training profile (flag, or refuse with 422 in enforce mode), ask Triton (calls
that may share a request and pass the check together go as one; any other on its own),
decode the outputs, feed the drift windows, write one decision record per call (in
`sync` mode an answer is released only once its record is durable, else 503) and count
each call out. Tracing on or off adds or leaves out spans; the path is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aios.batching import JSON_HEADERS
from aios.compare import agreement, parse_expected
from aios.config import DecisionLogSettings
from aios.errors import AiosError, LogUnavailable, StoreUnavailable, grpc_code_for
from aios.ids import new_ulid
from aios.metrics import LoopHistogram, RequestMetrics
from aios.plane import (
    BUSINESS_KEY_HEADER,
    DECISION_HEADER,
    MIRROR_HOST_SUFFIX,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    REVISION_HEADER,
    SEQUENCE_HEADER,
    SEQUENCE_POSITION_HEADER,
    SHADOW_COMPARE_HEADER,
    SHADOW_HEADER,
    SHADOW_OF_HEADER,
    SUBJECT_HEADER,
    TARGET_HEADER,
    TENANT_HEADER,
    WEIGHTS_HEADER,
    ModelCall,
    header_value,
)
from aios.tensors import Tensors, grpc_outputs, json_outputs, rest_response
from aios.tracing import Tracing, current_trace_id
from aios.upstream import GrpcReply, GrpcUpstream, HttpReply, HttpUpstream
from proto.decision_record_pb2 import DecisionRecord, ShadowAgreement
from sidecar.batching import BatchKey, TritonBatching, merge_inputs, merged_body, runs, split_doc
from sidecar.decisionlog import DecisionLog
from sidecar.parity import Parity, VersionProfile, schema_violations
from sidecar.records import add_tensors, trace_id
from sidecar.redaction import NONE as NO_FEATURE_RULES
from sidecar.redaction import FeatureRedaction
from sidecar.review import Queued, ReviewDesk, reviewed, store_failure

SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# What a decision record takes from a call's headers.
RECORD_HEADERS = frozenset({REVISION_HEADER, TENANT_HEADER, SUBJECT_HEADER, TARGET_HEADER,
                            SHADOW_HEADER, "traceparent", REQUEST_ID_HEADER, DECISION_HEADER,
                            REASON_HEADER, WEIGHTS_HEADER, BUSINESS_KEY_HEADER,
                            SHADOW_OF_HEADER, SHADOW_COMPARE_HEADER, SEQUENCE_HEADER,
                            SEQUENCE_POSITION_HEADER})


@dataclass(slots=True)
class InferCall:
    """One infer call to answer, as the adapters hand it over."""

    protocol: str  # how it is counted and recorded: "rest", or "grpc"
    model: str
    version: str
    headers: Sequence[tuple[str, Any]]  # REST headers or gRPC metadata
    request_id: str
    inputs: Tensors
    rows: int
    size: int  # bytes of the request
    rest: ModelCall | None = None  # a JSON call (REST, or gRPC carried as JSON)
    grpc: tuple[str, bytes] | None = None  # a gRPC call: (method, serialized request)
    key: BatchKey | None = None  # calls of one key may share a Triton request
    started: float = 0.0  # a streamed request: when it came (perf_counter)


Outcome = HttpReply | GrpcReply | AiosError


def status_name(protocol: str, status: int) -> str:
    """How a call's outcome is counted and recorded: its HTTP status, or for a gRPC call
    carried as JSON the gRPC code a gRPC hop would have answered."""
    if protocol != "grpc":
        return str(status)
    return "OK" if status == 200 else grpc_code_for(status).name


def outcome_code(call: InferCall, outcome: Outcome) -> str:
    """The code an outcome is counted under."""
    if isinstance(outcome, AiosError):
        return outcome.grpc_code.name if call.grpc is not None else status_name(
            call.protocol, outcome.http_status)
    if isinstance(outcome, GrpcReply):
        return "OK"
    return status_name(call.protocol, outcome.status)


def mirrored(headers: Iterable[tuple[str, Any]]) -> bool:
    """Whether a call is Envoy's mirrored copy of another (its Host says so)."""
    return (header_value(headers, "host") or "").endswith(MIRROR_HOST_SUFFIX)


def route_weights(text: str) -> dict[str, int]:
    """``name=weight,...`` as the gateway sends it; what is not a pair is left out."""
    out = {}
    for pair in text.split(","):
        name, _, weight = pair.partition("=")
        if name and weight.isascii() and weight.isdigit():
            out[name] = int(weight)
    return out


def with_ids(outcome: Outcome, record: DecisionRecord | None, call: InferCall) -> Outcome:
    """The answer of a call that came without a decision id (not by way of a gateway),
    with the ids its record was given."""
    if record is None or header_value(call.headers, DECISION_HEADER) is not None:
        return outcome
    ids = {DECISION_HEADER: record.decision_id, REQUEST_ID_HEADER: record.request_id}
    if isinstance(outcome, HttpReply):
        return HttpReply(outcome.status, {**outcome.headers, **ids}, outcome.body)
    if isinstance(outcome, GrpcReply):
        return GrpcReply(outcome.payload, (*outcome.trailing, *ids.items()))
    return outcome


def _grpc_version(payload: bytes) -> str:
    from tritonclient.grpc import service_pb2

    return str(service_pb2.ModelInferResponse.FromString(payload).model_version)


class CostCollector(Collector):
    """Process CPU seconds per answered request: the cost of a prediction."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        total = sum(s.value for m in self._metrics.requests.collect() for s in m.samples
                    if s.name.endswith("_total"))
        cpu = time.process_time()
        yield GaugeMetricFamily("aios_sidecar_cpu_seconds_per_request",
                                "Process CPU seconds over requests answered",
                                value=cpu / total if total else 0.0)


_NO_SPANS = contextlib.nullcontext()

# A call's decision record (None: none to write, as for a call refused before Triton saw
# it, or without a log), and the review a gate sent it to (None: none).
Recorded = tuple[DecisionRecord | None, Queued | None]
# What answering one call gave: its outcome, and what was recorded of it.
Answered = tuple[Outcome, DecisionRecord | None, Queued | None]


def _marked(outcome: Outcome, queued: Queued | None) -> Outcome:
    """An answer as its caller gets it: marked pending review if a gate sent it there."""
    if queued is None or isinstance(outcome, AiosError):
        return outcome
    return reviewed(outcome, queued)


def _unstored(exc: StoreUnavailable, answered: Answered) -> Answered:
    """A reviewed answer whose review could not be stored: that error, its record saying
    so; any other answer as it was."""
    _, record, queued = answered
    if queued is None:
        return answered
    return exc, None if record is None else store_failure(exc, record), None


class Pipeline:
    """Answers infer calls: check, Triton, drift, decision records, metrics."""

    def __init__(self, log_settings: DecisionLogSettings, http: HttpUpstream,
                 grpc: GrpcUpstream, log: DecisionLog | None, parity: Parity | None,
                 metrics: RequestMetrics, registry: CollectorRegistry, tracing: Tracing,
                 batching: TritonBatching | None = None,
                 features: FeatureRedaction = NO_FEATURE_RULES,
                 review: ReviewDesk | None = None) -> None:
        self._log_settings = log_settings
        self._review = review
        self._features = features
        self._http = http
        self._grpc = grpc
        self._log = log
        self._parity = parity
        self._metrics = metrics
        self._tracing = tracing
        self._batching = batching
        labels = ("model", "version", "protocol")
        self._payload = LoopHistogram("aios_sidecar_payload_bytes", "Request and response sizes",
                                      (*labels, "direction"), SIZE_BUCKETS, registry)
        self._batch = LoopHistogram("aios_sidecar_batch_size", "Rows per inference request",
                                    labels, BATCH_BUCKETS, registry)

    async def answer(self, calls: Sequence[InferCall]) -> list[Outcome]:
        """Answer ``calls`` (in their order): those of one key that fit one Triton request
        together, every other one on its own."""
        groups = self._groups(calls)
        if len(groups) == 1:  # the usual case: no task, no reordering
            return await self._group(list(calls))
        out: list[Outcome | None] = [None] * len(calls)

        async def run(group: list[int]) -> None:
            answers = await self._group([calls[i] for i in group])
            for i, outcome in zip(group, answers, strict=True):
                out[i] = outcome

        await asyncio.gather(*(run(group) for group in groups))
        answered = [o for o in out if o is not None]
        assert len(answered) == len(calls), "every call is in one group"
        return answered

    def _groups(self, calls: Sequence[InferCall]) -> list[list[int]]:
        if self._batching is None or len(calls) == 1:
            return [[i] for i in range(len(calls))]
        by_key: dict[BatchKey, list[int]] = {}
        groups: list[list[int]] = []
        for i, call in enumerate(calls):
            if call.key is None or call.rest is None:
                groups.append([i])
            else:
                by_key.setdefault(call.key, []).append(i)
        for key, members in by_key.items():
            limit = self._batching.rows(key)
            if not limit:
                groups += [[i] for i in members]
                continue
            for run in runs([calls[i].rows for i in members], limit):
                groups.append(members[run])
        return groups

    def _served(self, calls: Sequence[InferCall]) -> contextlib.AbstractContextManager[Any]:
        """A server span per call (each continues its own trace), when tracing."""
        if not self._tracing.enabled:
            return _NO_SPANS
        spans = contextlib.ExitStack()
        for call in calls:
            spans.enter_context(self._tracing.server(
                "sidecar infer", call.headers, model=call.model, version=call.version))
        return spans

    async def _group(self, calls: list[InferCall]) -> list[Outcome]:
        """The calls of one model version, counted in and out together."""
        started = time.perf_counter()
        first = calls[0]
        # A replay is checked against no profile: its inputs were served once already.
        profile = self._parity.profile(first.model, first.version) \
            if self._parity is not None and first.protocol != "replay" else None
        merged: Tensors = {}
        if len(calls) > 1:
            assert first.key is not None
            merged = merge_inputs(first.key[2], [c.inputs for c in calls])
            if profile is not None and schema_violations(profile, merged):
                # A call to flag or refuse among them: each is checked and sent alone.
                return [o for group in await asyncio.gather(*(self._group([c]) for c in calls))
                        for o in group]
        labels = [self._metrics.labels(c.model, c.version, c.protocol) for c in calls]
        for call, label in zip(calls, labels, strict=True):
            self._payload.labels(*label, "request").observe(call.size)
            self._batch.labels(*label).observe(call.rows)
        self._metrics.now += len(calls)
        try:
            with self._served(calls):
                answered = await (self._one(first, profile, started) if len(calls) == 1
                                  else self._together(calls, merged, profile, started))
                outcomes = [with_ids(outcome, record, call) for outcome, (_, record, _), call
                            in zip(await self._logged(answered), answered, calls, strict=True)]
        finally:
            self._metrics.now -= len(calls)
        seconds = time.perf_counter() - started
        for call, label, outcome in zip(calls, labels, outcomes, strict=True):
            if isinstance(outcome, HttpReply):
                self._payload.labels(*label, "response").observe(len(outcome.body))
            elif isinstance(outcome, GrpcReply):
                self._payload.labels(*label, "response").observe(len(outcome.payload))
            self._metrics.done(label, outcome_code(call, outcome), seconds)
        return outcomes

    async def _logged(self, answered: Sequence[Answered]) -> list[Outcome]:
        """Queue the reviews, then write the records; an answer whose review could not be
        stored, or whose record the sync log could not make durable, becomes that error
        (503). A reviewed answer says so."""
        queued = [review.item for _, _, review in answered if review is not None]
        if queued:
            assert self._review is not None
            try:
                with self._tracing.span("review queue"):
                    await self._review.queue(queued)
            except StoreUnavailable as exc:
                answered = [_unstored(exc, one) for one in answered]
        records = [record for _, record, _ in answered if record is not None]
        if not records or self._log is None:
            return [_marked(outcome, q) for outcome, _, q in answered]
        with self._tracing.span("decision-log write"):
            errors = iter(await self._log.append_many(records))
        out: list[Outcome] = []
        for outcome, record, q in answered:
            error: LogUnavailable | None = next(errors) if record is not None else None
            out.append(_marked(outcome, q) if error is None else error)
        return out

    def _check(self, profile: VersionProfile | None, inputs: Tensors) -> list[str]:
        if self._parity is None or profile is None:
            return []
        with self._tracing.span("parity check"):
            return self._parity.check(profile, inputs)

    def _observe(self, profile: VersionProfile | None, inputs: Tensors,
                 outputs: Tensors) -> None:
        if self._parity is None or profile is None:
            return
        x = inputs.get(profile.input_name)
        if x is not None and x.ndim == 2:
            y = outputs.get(profile.output_name)
            self._parity.observe(profile, x, None if y is None else np.asarray(y))

    async def _send(self, call: InferCall, alone: bool) -> HttpReply | GrpcReply:
        inject = self._tracing.inject()
        if call.grpc is not None:
            method, payload = call.grpc
            return await self._grpc.call(method, payload, call.headers, inject)
        rest = call.rest
        assert rest is not None
        headers = list(call.headers)
        if self._batching is None or alone or call.key is None:
            return await self._http.request(rest.method, rest.upstream_path, rest.body,
                                            headers, inject)
        return await self._batching.coalescer.forward(
            call.key, rest.upstream_path, rest.body, headers, inject, None, call.rows,
            call.request_id, call.inputs)

    async def _one(self, call: InferCall, profile: VersionProfile | None, started: float,
                   alone: bool = False, checked: bool = False) -> list[Answered]:
        """One call on its own (``checked``: its inputs passed the check already)."""
        try:
            flags = [] if checked else self._check(profile, call.inputs)
        except AiosError as exc:  # refused (enforce mode): nothing was decided
            return [(exc, None, None)]
        try:
            with self._tracing.span("forward"):
                reply = await self._send(call, alone)
        except AiosError as exc:
            return [(exc, *self._record(call, call.version, {}, flags,
                                        outcome_code(call, exc), exc.message, started))]
        version, error = call.version, ""
        outputs: Tensors = {}
        if isinstance(reply, GrpcReply):
            outputs = grpc_outputs(reply.payload)
            version = _grpc_version(reply.payload) or version
        else:
            try:
                doc, outputs = rest_response(reply.body, reply.headers)
            except (ValueError, KeyError, OSError, zlib.error):
                doc, outputs = {}, {}
            if reply.status == 200:
                version = str(doc.get("model_version", "")) or version
            else:
                error = str(doc.get("error", ""))
        self._observe(profile, call.inputs, outputs)
        code = outcome_code(call, reply)
        return [(reply, *self._record(call, version, outputs, flags,
                                      "ok" if code in ("200", "OK") else code, error, started))]

    async def _together(self, calls: list[InferCall], merged: Tensors,
                        profile: VersionProfile | None, started: float) -> list[Answered]:
        """Calls that passed the check together, as one Triton request; if Triton refuses
        it, each goes alone and gets exactly the answer it would have had."""
        assert self._batching is not None and calls[0].key is not None and calls[0].rest
        layout = calls[0].key[2]
        try:
            with self._tracing.span("forward"):
                reply = await self._http.request(
                    "POST", calls[0].rest.upstream_path, merged_body(layout, merged),
                    JSON_HEADERS.items(), self._tracing.inject())
        except AiosError as exc:
            return [(exc, *self._record(c, c.version, {}, [], outcome_code(c, exc),
                                        exc.message, started)) for c in calls]
        try:
            doc = orjson.loads(reply.body) if reply.status == 200 else None
        except orjson.JSONDecodeError:
            doc = None
        parts = split_doc(doc, [c.rows for c in calls], [c.request_id for c in calls]) \
            if doc else None
        if doc is None or parts is None:
            return [a for answered in await asyncio.gather(*(
                self._one(c, profile, started, alone=True, checked=True) for c in calls))
                for a in answered]
        self._batching.calls.observe(len(calls))
        try:
            outputs = json_outputs(doc)
        except (ValueError, KeyError, TypeError):
            outputs = {}
        self._observe(profile, merged, outputs)
        served = str(doc.get("model_version", "")) or calls[0].version
        answered: list[Answered] = []
        start = 0
        for call, part in zip(calls, parts, strict=True):
            mine = {name: y[start:start + call.rows] for name, y in outputs.items()}
            start += call.rows
            answered.append((HttpReply(200, JSON_HEADERS, orjson.dumps(part)),
                             *self._record(call, served, mine, [], "ok", "", started)))
        return answered

    # -- a stream's requests (sidecar.streams): checked once, each response recorded ------

    def stream_check(self, call: InferCall) -> tuple[VersionProfile | None, list[str]]:
        """A streamed request's profile and its inputs' flags (enforce mode: refused)."""
        profile = self._parity.profile(call.model, call.version) \
            if self._parity is not None else None
        return profile, self._check(profile, call.inputs)

    async def stream_response(self, call: InferCall, profile: VersionProfile | None,
                              flags: list[str], version: str, outputs: Tensors, error: str,
                              index: int) -> tuple[str, LogUnavailable | None]:
        """One response of a streamed request: drift fed, its decision record written (the
        record's decision id, "" without a log), and the error of a sync log that could not
        make the record durable (the response is then not released)."""
        self._observe(profile, call.inputs, outputs)
        record, _ = self._record(call, version, outputs, flags, "error" if error else "ok",
                                 error, call.started)
        if record is None or self._log is None:
            return "", None
        record.response_index = index
        with self._tracing.span("decision-log write"):
            (failed,) = await self._log.append_many([record])
        return record.decision_id, failed

    def _record(self, call: InferCall, version: str, outputs: Tensors, flags: list[str],
                outcome: str, error: str, started: float) -> Recorded:
        """The call's decision record (None without a log: nothing would take it), and the
        review a gate sent it to."""
        if self._log is None and self._review is None:
            return None, None
        settings = self._log_settings
        rules = settings.redaction.get(call.model, {})
        seen: dict[str, str] = {}
        for key, value in call.headers:
            if key in RECORD_HEADERS and key not in seen:
                seen[key] = value if isinstance(value, str) else bytes(value).decode("latin-1")
        revision = seen.get(REVISION_HEADER, "0")
        record = DecisionRecord(
            time_unix_nanos=time.time_ns(),
            request_id=call.request_id or seen.get(REQUEST_ID_HEADER) or new_ulid(),
            decision_id=seen.get(DECISION_HEADER) or new_ulid(),
            business_key=seen.get(BUSINESS_KEY_HEADER, ""),
            route_reason=seen.get(REASON_HEADER, ""),
            route_weights=route_weights(seen.get(WEIGHTS_HEADER, "")),
            shadow_of=seen.get(SHADOW_OF_HEADER, ""),
            tenant=seen.get(TENANT_HEADER, ""), subject=seen.get(SUBJECT_HEADER, ""),
            model=call.model, version=version, route_target=seen.get(TARGET_HEADER, ""),
            route_revision=int(revision) if revision.isascii() and revision.isdigit()
            else 0,
            protocol=call.protocol,
            latency_micros=int((time.perf_counter() - started) * 1e6),
            trace_id=trace_id(seen.get("traceparent")) or (
                current_trace_id() if self._tracing.enabled else ""),
            parity_flags=flags, outcome=outcome, error=error[:1000],
            shadow=seen.get(SHADOW_HEADER) == "1" or mirrored(call.headers),
            sequence_id=seen.get(SEQUENCE_HEADER, "")[:128],
            kind="replay" if call.protocol == "replay" else "")
        position = seen.get(SEQUENCE_POSITION_HEADER, "")
        if position.isascii() and position.isdigit() and int(position) < 2**32:
            record.sequence_position = int(position)
        input_rules = rules
        if self._features.drops_inputs(call.model, version):
            input_rules = dict.fromkeys(call.inputs, "drop")
        add_tensors(record.inputs, call.inputs, input_rules, settings.default_redaction,
                    self._features.lookup(call.model, version))
        add_tensors(record.outputs, outputs, rules, settings.default_redaction)
        expected = parse_expected(seen.get(SHADOW_COMPARE_HEADER, "")) if record.shadow \
            else None
        agreed = agreement(expected, outputs) if expected is not None else None
        if expected is not None and agreed is not None:
            record.shadow_agreement.CopyFrom(ShadowAgreement(
                output=expected.output, threshold=expected.threshold,
                rows=len(expected.decisions), agreed=agreed))
        queued = self._review.consider(record, call.inputs, outputs, expected, agreed) \
            if self._review is not None and call.protocol != "replay" and \
            self._review.gated(call.model) else None
        return (record if self._log is not None else None), queued
