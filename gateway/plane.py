"""The gateway's data plane: auth → quota → route → forward (→ shadow), for both protocols."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from aios.batching import content_headers, input_layout
from aios.config import GatewaySettings
from aios.errors import (
    Conflict,
    InvalidInput,
    NotReady,
    UpstreamConnectFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from aios.ids import new_ulid
from aios.kserve import (
    SCHEDULING_PARAMETERS,
    check_parameters,
    grpc_scheduling,
    peek_batch,
    peek_model,
    peek_parameters,
    with_grpc_parameters,
    with_json_parameters,
    with_model,
)
from aios.metrics import RequestMetrics
from aios.plane import (
    BUSINESS_KEY_HEADER,
    DECISION_HEADER,
    GRPC_CALL_KINDS,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    REVISION_HEADER,
    SEQUENCE_HEADER,
    SEQUENCE_POSITION_HEADER,
    SHADOW_OF_HEADER,
    TARGET_HEADER,
    WEIGHTS_HEADER,
    ModelCall,
    header_value,
    model_path,
)
from aios.tracing import Tracing
from aios.upstream import GrpcReply, GrpcUpstream, HttpReply, HttpUpstream, Metadata
from gateway.admission import OPEN, Admission
from gateway.auth import Authenticator
from gateway.batching import BackendBatching, GrpcCalls
from gateway.breaker import Breaker
from gateway.quota import Quotas
from gateway.routing import ModelTable, Route, Router
from gateway.scheduling import Clamped, clamp
from gateway.sequences import (
    SEQUENCE_PARAMETERS,
    IdleTimeouts,
    LocalSequences,
    SequenceCall,
    SequenceMap,
    grpc_parameters,
    sequence_of,
)
from gateway.shadow import ShadowJob, ShadowRunner
from gateway.streams import GatewayStream
from gateway.targets import TargetMetrics
from gateway.versions import ServedVersions

logger = logging.getLogger(__name__)

UPSTREAM_FAILURE_STATUSES = frozenset({502, 503, 504})
# A sequence's lookup in Redis, at most (it is on the request path).
SEQUENCE_REDIS_TIMEOUT_S = 0.5

R = TypeVar("R", HttpReply, GrpcReply)


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend (a sidecar) over both protocols."""

    http: HttpUpstream
    grpc: GrpcCalls
    batching: BackendBatching | None = None


def scheduling_asked(call: ModelCall) -> dict[str, int]:
    """A REST infer call's scheduling parameters (validated by the REST adapter)."""
    if call.infer is None:
        return {}
    parameters = call.infer.doc.get("parameters") or {}
    return {name: parameters[name] for name in SCHEDULING_PARAMETERS if name in parameters}


def clamped_body(call: ModelCall, clamped: Clamped) -> tuple[bytes, Iterable[tuple[str, str]]]:
    """A REST call's body and headers with its clamped parameters (as it came if none)."""
    if not clamped.values or call.infer is None:
        return call.body, call.headers
    body, length = with_json_parameters(call.body, call.infer, clamped.values)
    headers = [(k, str(length) if k == "inference-header-content-length" else v)
               for k, v in call.headers]
    return body, headers


def route_headers(route: Route) -> dict[str, str]:
    """What served a call, for the response and for the sidecar's decision record."""
    out = {TARGET_HEADER: route.target, REVISION_HEADER: str(route.revision)}
    if route.sequence:
        out[SEQUENCE_HEADER] = route.sequence
        out[SEQUENCE_POSITION_HEADER] = str(route.position)
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The ids an infer call is given: its decision record's, and its request id (the
    client's ``x-request-id``, or one made here)."""

    decision_id: str
    request_id: str
    key: str | None  # the sticky key: the record's business key

    @staticmethod
    def of(headers: Iterable[tuple[str, Any]], key: str | None) -> Decision:
        return Decision(new_ulid(), header_value(headers, REQUEST_ID_HEADER) or new_ulid(),
                        key)

    def ids(self) -> dict[str, str]:
        """For the caller's response."""
        return {DECISION_HEADER: self.decision_id, REQUEST_ID_HEADER: self.request_id}

    def for_record(self, route: Route) -> dict[str, str]:
        """For the sidecar: the ids, and why the call went where it went."""
        out = {**self.ids(), REASON_HEADER: route.reason, WEIGHTS_HEADER: route.weights}
        if self.key is not None:
            out[BUSINESS_KEY_HEADER] = self.key
        return out

    def shadow_identity(self, identity: Mapping[str, str]) -> dict[str, str]:
        """What a shadow copy carries besides who called: its primary's ids and key."""
        out = {**identity, SHADOW_OF_HEADER: self.decision_id,
               REQUEST_ID_HEADER: self.request_id}
        if self.key is not None:
            out[BUSINESS_KEY_HEADER] = self.key
        return out


class GatewayPlane:
    """Admits, routes and forwards model calls over the protocol they came in on."""

    server_name = "aios-gateway"

    def __init__(self, settings: GatewaySettings, router: Router,
                 backends: Mapping[str, Backend], auth: Authenticator | None,
                 quotas: Quotas | None, breaker: Breaker, shadows: ShadowRunner,
                 metrics: RequestMetrics, registry: CollectorRegistry,
                 tracing: Tracing, versions: ServedVersions,
                 sequences: SequenceMap | None = None,
                 idle: IdleTimeouts | None = None) -> None:
        self._tracing = tracing
        self._sequences = sequences or LocalSequences()
        self._idle = idle or IdleTimeouts({n: b.http for n, b in backends.items()})
        self._versions = versions
        self._open_calls = settings.auth.open_model_calls
        self._quota_settings = settings.quota
        self._request_timeouts = {n: b.request_timeout_s for n, b in settings.backends.items()}
        self._stream_in_flight = settings.server.stream_max_in_flight
        self._router = router
        self._backends = dict(backends)
        self._auth = auth
        self._quotas = quotas
        self._breaker = breaker
        self._shadows = shadows
        self._metrics = metrics
        self.targets = TargetMetrics(registry)

    async def ready(self) -> bool:
        """Ready when every backend is."""
        checks = await asyncio.gather(*(b.http.ready() for b in self._backends.values()))
        return all(checks)

    async def precheck(self, kind: str, model: str, headers: Iterable[tuple[str, Any]]) -> None:
        """Who is calling, checked before the body is read (so `Expect: 100-continue`
        with a bad token gets 401 without sending the body). Verified tokens are cached,
        so `admit` checking again costs a lookup."""
        self._router.table(model)
        if self._auth is not None and kind not in self._open_calls:
            principal = await self._auth.authenticate(header_value(headers, "authorization"))
            self._auth.check(principal, f"infer:{model}")

    async def repository_index(self, headers: Iterable[tuple[str, Any]]) -> list[dict[str, str]]:
        """The routed models whose infer scope the caller holds, each once and ready (its
        versions are the routing table's business, not the caller's)."""
        models = sorted(self._router.tables())
        if self._auth is not None:
            principal = await self._auth.authenticate(header_value(headers, "authorization"))
            models = [m for m in models if principal.allows(f"infer:{m}")]
        return [{"name": m, "version": "", "state": "READY", "reason": ""} for m in models]

    async def admit(self, kind: str, model: str, headers: Iterable[tuple[str, Any]],
                    batch: Callable[[], int]) -> Admission:
        """Authenticate, authorize and take quota; ``batch`` is called only if it counts."""
        if self._auth is None or kind in self._open_calls:
            return OPEN
        with self._tracing.span("auth"):
            principal = await self._auth.authenticate(header_value(headers, "authorization"))
            self._auth.check(principal, f"infer:{model}")
        if kind != "infer" or self._quotas is None:
            return Admission(principal, None)
        cost = batch() if self._quotas.cost_is_batch(principal.tenant) else 1
        with self._tracing.span("quota", tenant=principal.tenant):
            lease = await self._quotas.acquire(principal.tenant, model, cost)
        return Admission(principal, lease)

    def release(self, admission: Admission) -> None:
        if admission.lease is not None and self._quotas is not None:
            self._quotas.release(admission.lease)

    @staticmethod
    def sticky_key(table: ModelTable, admission: Admission,
                   headers: Iterable[tuple[str, Any]]) -> str | None:
        if table.sticky == "none":
            return None
        principal = admission.principal
        if table.sticky == "tenant":
            return principal.tenant if principal else None
        if table.sticky == "sub":
            return principal.subject if principal else None
        return header_value(headers, table.sticky.removeprefix("header:"))

    async def _send(self, model: str, pinned: str, key: str | None,
                    send: Callable[[Route], Awaitable[R]], failed: Callable[[R], bool],
                    sequence: SequenceCall | None = None) -> tuple[R, Route]:
        """Route and send; retry once elsewhere if the connection failed (nothing was sent),
        unless the call belongs to a sequence, whose state lives where it is held."""
        ejected = self._breaker.ejected(model)
        with self._tracing.span("route"):
            route = self._router.resolve(model, pinned, key, ejected) if sequence is None \
                else await self.sequence_route(model, pinned, key, sequence, ejected)
        start = time.perf_counter()
        try:
            with self._tracing.span("forward", target=route.target):
                result = await send(route)
        except UpstreamConnectFailed as exc:
            self._served(model, route.target, False, start)
            if pinned or sequence is not None:
                raise
            try:
                retry = self._router.resolve(model, pinned, key, ejected | {route.target})
            except NotReady:
                raise exc from None  # no other live target: the original error says more
            if retry.target == route.target:
                raise
            route = dataclasses.replace(retry, reason="fallback")
            start = time.perf_counter()
            try:
                with self._tracing.span("forward", target=route.target, retry=1):
                    result = await send(route)
            except (UpstreamUnavailable, UpstreamTimeout):
                self._served(model, route.target, False, start)
                raise
        except (UpstreamUnavailable, UpstreamTimeout):
            self._served(model, route.target, False, start)
            raise
        self._served(model, route.target, not failed(result), start)
        if sequence is not None and sequence.end:
            await self._sequences.release(model, sequence.id)
        return result, route

    def _served(self, model: str, target: str, ok: bool, start: float) -> None:
        """A target's answer (or its failure to give one), for the breaker and the gates."""
        self._breaker.record(model, target, ok)
        self.targets.observe(model, target, ok, time.perf_counter() - start)

    async def sequence_route(self, model: str, pinned: str, key: str | None,
                             sequence: SequenceCall, ejected: frozenset[str]) -> Route:
        """Where a sequence's request goes: where the sequence is held, or (its first
        request, or one after the sequence idled out) where the weights say, held there."""
        if not sequence.start:
            held = await self._sequences.held(model, sequence.id, await self._idle_s(model))
            if held is not None:
                route = self._router.route_to(model, held.target)
                if route is None:
                    raise Conflict(f"sequence {sequence.id} of model '{model}' is held on "
                                   f"target '{held.target}', which its routing table no "
                                   "longer has: start the sequence again")
                if held.target in ejected:
                    raise NotReady(f"sequence {sequence.id} of model '{model}' is held on "
                                   f"target '{held.target}', which is ejected as failing; "
                                   "its state lives there, so it is not moved: start the "
                                   "sequence again")
                return dataclasses.replace(route, sequence=sequence.id,
                                           position=held.position)
        route = self._router.resolve(model, pinned, key, ejected)
        held = await self._sequences.hold(model, sequence.id, route.target,
                                          await self._idle_s(model, route.backend))
        return dataclasses.replace(route, sequence=sequence.id, position=held.position)

    async def _idle_s(self, model: str, backend: str | None = None) -> float:
        """The model's sequence idle timeout (as its first target's backend configures it)."""
        if backend is None:
            backend = self._router.table(model).targets[0].backend
        return await self._idle.idle_s(backend, model)

    def clamp(self, asked: Mapping[str, int], admission: Admission, route: Route) -> Clamped:
        """The caller's scheduling parameters within its tenant's policy and the route's
        timeout (the backend's request timeout unless the target sets one)."""
        tenant = admission.principal.tenant if admission.principal is not None else ""
        return clamp(asked, self._quota_settings.for_tenant(tenant).top_priority,
                     route.timeout_s or self._request_timeouts[route.backend])

    # -- what a stream (`gateway.streams`) asks of the plane, per request ---------------

    def open_stream(self, metadata: Metadata) -> GatewayStream:
        """A ModelStreamInfer stream, carried to the sidecars (`gateway.streams`)."""
        return GatewayStream(metadata, self, self._stream_in_flight)

    async def checked_table(self, model: str, version: str) -> ModelTable:
        """The model's routing table, once ``version`` (if any) is known to be served."""
        table = self._router.table(model)
        if version:
            await self._versions.check(table, version)
        return table

    async def stream_route(self, model: str, pinned: str, key: str | None,
                           sequence: SequenceCall | None, held: Route | None) -> Route:
        """Where a streamed request goes: its sequence's target; else the target the stream
        sent this model's requests to (``held``) while it is not ejected; else a new one."""
        ejected = self._breaker.ejected(model)
        if sequence is not None:
            return await self.sequence_route(model, pinned, key, sequence, ejected)
        if held is not None and held.target not in ejected:
            return held
        return self._router.resolve(model, pinned, key, ejected)

    @staticmethod
    def hop_values(admission: Admission, route: Route, request_id: str,
                   key: str | None) -> dict[str, str]:
        """What the sidecar is told of a streamed request (what a unary call's headers
        say): who called, where it went and why, and its decision's ids."""
        decision = Decision(new_ulid(), request_id or new_ulid(), key)
        return {**admission.identity(), **route_headers(route), **decision.for_record(route)}

    def backend_grpc(self, backend: str) -> GrpcUpstream:
        return self._backends[backend].grpc.grpc

    async def answered(self, model: str, route: Route, sequence: SequenceCall | None,
                       ok: bool, start: float) -> None:
        """A streamed request is done: counted for its target and the breaker, and its
        sequence let go if this was its last request."""
        self._served(model, route.target, ok, start)
        if sequence is not None and sequence.end:
            await self._sequences.release(model, sequence.id)

    @property
    def metrics(self) -> RequestMetrics:
        return self._metrics

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """Admit, route and forward a REST model call."""
        with self._tracing.server(f"gateway {call.kind}", call.headers, model=call.model):
            return await self._forward_rest(call)

    async def _forward_rest(self, call: ModelCall) -> HttpReply:
        table = await self.checked_table(call.model, call.version)
        admission = await self.admit(call.kind, call.model, call.headers, lambda: call.batch)
        try:
            key = self.sticky_key(table, admission, call.headers)
            mergeable = call.infer is not None and input_layout(
                call.infer, content_headers(call.headers)) is not None
            decision = Decision.of(call.headers, key) if call.kind == "infer" else None
            asked = scheduling_asked(call)
            clamped: list[Clamped] = []
            sequence = sequence_of(call.infer.doc.get("parameters") or {}) \
                if call.infer is not None else None

            async def send(route: Route) -> HttpReply:
                backend = self._backends[route.backend]
                path = model_path(call.model, route.version, call.tail)
                extra = {**admission.identity(), **route_headers(route),
                         **self._tracing.inject()}
                if decision is not None:
                    extra.update(decision.for_record(route))
                body, headers = call.body, call.headers
                if asked:
                    clamped.append(self.clamp(asked, admission, route))
                    body, headers = clamped_body(call, clamped[-1])
                if mergeable and backend.batching is not None:
                    return await backend.batching.forward(
                        path, body, list(headers), extra, route.timeout_s, call.batch)
                return await backend.http.request(call.method, path, body, headers,
                                                  extra, route.timeout_s)

            with self._metrics.track(call.model, call.version, "rest") as outcome:
                reply, route = await self._send(
                    call.model, call.version, key, send,
                    lambda r: r.status in UPSTREAM_FAILURE_STATUSES, sequence)
                outcome.code = str(reply.status)
            said = clamped[-1].header() if clamped else {}
            if decision is None:
                return HttpReply(reply.status, {**reply.headers, **route_headers(route), **said},
                                 reply.body)
            # A sequence's requests are not mirrored: the shadow would see only some of them.
            if reply.status == 200 and sequence is None and \
                    self._shadows.sampled(table.shadow):
                assert table.shadow is not None
                self._shadows.offer(ShadowJob(
                    call.model, table.shadow, call.body, tuple(call.headers),
                    decision.shadow_identity(admission.identity()), reply,
                    trace=self._tracing.inject()))
            return HttpReply(reply.status, {**reply.headers, **route_headers(route),
                                            **decision.ids(), **said}, reply.body)
        finally:
            self.release(admission)

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """Admit, route and forward a serialized gRPC model call."""
        with self._tracing.server(f"gateway {method.rsplit('/', 1)[1]}", metadata):
            return await self._forward_grpc(method, payload, metadata)

    async def _forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        model, version = peek_model(payload)
        if not model:
            raise InvalidInput("the request names no model")
        table = await self.checked_table(model, version)
        kind = GRPC_CALL_KINDS[method.rsplit("/", 1)[1]]
        asked: dict[str, int] = {}
        sequence = None
        if kind == "infer":
            names = peek_parameters(payload)
            check_parameters(names)
            if any(n in SCHEDULING_PARAMETERS or n in SEQUENCE_PARAMETERS for n in names):
                # Parsed only for these (the usual call has none): once for both.
                parameters = service_pb2.ModelInferRequest.FromString(payload).parameters
                asked = grpc_scheduling(parameters)
                sequence = sequence_of(grpc_parameters(parameters))
        admission = await self.admit(kind, model, metadata, lambda: peek_batch(payload))
        try:
            key = self.sticky_key(table, admission, metadata)
            decision = Decision.of(metadata, key) if kind == "infer" else None
            clamped: list[Clamped] = []

            async def send(route: Route) -> GrpcReply:
                body = payload if route.version == version else with_model(
                    payload, version=route.version)
                if asked:
                    clamped.append(self.clamp(asked, admission, route))
                    if clamped[-1].values:
                        body = with_grpc_parameters(body, clamped[-1].values)
                extra = {**admission.identity(), **route_headers(route),
                         **self._tracing.inject()}
                if decision is not None:
                    extra.update(decision.for_record(route))
                return await self._backends[route.backend].grpc.call(
                    method, body, metadata, extra, route.timeout_s)

            with self._metrics.track(model, version, "grpc") as outcome:
                reply, route = await self._send(model, version, key, send, lambda r: False,
                                                sequence)
                outcome.code = "OK"
            trailing = (*reply.trailing, *route_headers(route).items(),
                        *(clamped[-1].header().items() if clamped else ()))
            if decision is None:
                return GrpcReply(reply.payload, trailing)
            if sequence is None and self._shadows.sampled(table.shadow):
                assert table.shadow is not None
                self._shadows.offer(ShadowJob(model, table.shadow, payload, tuple(metadata),
                                              decision.shadow_identity(admission.identity()),
                                              reply, method, self._tracing.inject()))
            return GrpcReply(reply.payload, (*trailing, *decision.ids().items()))
        finally:
            self.release(admission)
