"""The gateway's data plane: auth → quota → route → forward, the same for both protocols."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from aios.config import GatewaySettings
from aios.errors import InvalidInput
from aios.kserve import peek_batch, peek_model, with_version
from aios.metrics import RequestMetrics
from aios.plane import GRPC_CALL_KINDS, ModelCall
from aios.serve import run_service
from aios.upstream import GrpcReply, GrpcUpstream, HttpReply, HttpUpstream, Metadata
from gateway.auth import Authenticator, build_authenticator, header_value
from gateway.quota import Lease, LocalLimiter, Quotas, RedisLimiter, redis_client
from gateway.routing import StaticRouter

# Headers the gateway sets for the sidecar: the identity it verified.
TENANT_HEADER = "x-aios-tenant"
SUBJECT_HEADER = "x-aios-subject"


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend (a sidecar) over both protocols."""

    http: HttpUpstream
    grpc: GrpcUpstream


@dataclass(frozen=True, slots=True)
class Admission:
    """What a call was let in with: identity headers for the next hop, a quota lease."""

    identity: Mapping[str, str]
    lease: Lease | None


OPEN = Admission({}, None)


class GatewayPlane:
    """Admits, routes and forwards model calls over the protocol they came in on."""

    server_name = "aios-gateway"

    def __init__(self, settings: GatewaySettings, router: StaticRouter,
                 backends: Mapping[str, Backend], auth: Authenticator | None,
                 quotas: Quotas | None, metrics: RequestMetrics) -> None:
        self._open_calls = settings.auth.open_model_calls
        self._router = router
        self._backends = dict(backends)
        self._auth = auth
        self._quotas = quotas
        self._metrics = metrics

    async def ready(self) -> bool:
        """Ready when every backend is."""
        checks = await asyncio.gather(*(b.http.ready() for b in self._backends.values()))
        return all(checks)

    async def _admit(self, kind: str, model: str, headers: Iterable[tuple[str, Any]],
                     batch: Any) -> Admission:
        """Authenticate, authorize and take quota; ``batch`` is called only if it counts."""
        if self._auth is None or kind in self._open_calls:
            return OPEN
        principal = await self._auth.authenticate(header_value(headers, "authorization"))
        self._auth.check(principal, f"infer:{model}")
        identity = {TENANT_HEADER: principal.tenant, SUBJECT_HEADER: principal.subject}
        if kind != "infer" or self._quotas is None:
            return Admission(identity, None)
        cost = batch() if self._quotas.cost_is_batch(principal.tenant) else 1
        return Admission(identity, await self._quotas.acquire(principal.tenant, model, cost))

    def _done(self, admission: Admission) -> None:
        if admission.lease is not None and self._quotas is not None:
            self._quotas.release(admission.lease)

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """Admit, route and forward a REST model call."""
        target = self._router.resolve(call.model, call.version)
        admission = await self._admit(call.kind, call.model, call.headers, lambda: call.batch)
        try:
            if target.version != call.version:
                call = dataclasses.replace(call, version=target.version)
            backend = self._backends[target.backend]
            with self._metrics.track(call.model, target.version, "rest") as outcome:
                reply = await backend.http.request(call.method, call.upstream_path, call.body,
                                                   call.headers, admission.identity)
                outcome.code = str(reply.status)
            return reply
        finally:
            self._done(admission)

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """Admit, route and forward a serialized gRPC model call."""
        model, version = peek_model(payload)
        if not model:
            raise InvalidInput("the request names no model")
        target = self._router.resolve(model, version)
        kind = GRPC_CALL_KINDS[method.rsplit("/", 1)[1]]
        admission = await self._admit(kind, model, metadata, lambda: peek_batch(payload))
        try:
            if target.version != version:
                payload = with_version(payload, target.version)
            backend = self._backends[target.backend]
            with self._metrics.track(model, target.version, "grpc") as outcome:
                reply = await backend.grpc.call(method, payload, metadata, admission.identity)
                outcome.code = "OK"
            return reply
        finally:
            self._done(admission)


@asynccontextmanager
async def open_gateway(settings: GatewaySettings,
                       registry: CollectorRegistry) -> AsyncIterator[GatewayPlane]:
    """Open the connections to every backend (and Redis) for the life of the service."""
    limit = settings.server.max_body_bytes
    async with AsyncExitStack() as stack:
        backends = {
            name: Backend(
                await stack.enter_async_context(HttpUpstream(name, upstream)),
                await stack.enter_async_context(GrpcUpstream(name, upstream, limit)),
            )
            for name, upstream in settings.backends.items()
        }
        auth = build_authenticator(settings.auth, registry) if settings.auth.enabled else None
        quotas = None
        if settings.quota.enabled:
            local = LocalLimiter()
            primary: LocalLimiter | RedisLimiter = local
            if settings.quota.backend == "redis":
                client = redis_client(settings.quota)
                stack.push_async_callback(client.aclose)
                primary = RedisLimiter(client, settings.quota.key_prefix,
                                       settings.quota.lease_ttl_s)
            quotas = Quotas(settings.quota, primary, local, registry)
        yield GatewayPlane(settings, StaticRouter(settings.models), backends, auth, quotas,
                           RequestMetrics(registry, "gateway"))


async def run_gateway(settings: GatewaySettings) -> None:
    """Serve the gateway until stopped by a signal."""
    registry = CollectorRegistry()
    await run_service("gateway", open_gateway(settings, registry), settings.server, registry)
