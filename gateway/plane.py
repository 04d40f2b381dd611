"""The gateway's data plane: route each model call to a backend and forward it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from aios.config import GatewaySettings
from aios.errors import InvalidInput
from aios.kserve import peek_model, with_version
from aios.metrics import RequestMetrics
from aios.plane import ModelCall
from aios.serve import run_service
from aios.upstream import GrpcReply, GrpcUpstream, HttpReply, HttpUpstream, Metadata
from gateway.routing import StaticRouter


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend (a sidecar) over both protocols."""

    http: HttpUpstream
    grpc: GrpcUpstream


class GatewayPlane:
    """Routes model calls to backends over the protocol they came in on."""

    server_name = "aios-gateway"

    def __init__(self, router: StaticRouter, backends: Mapping[str, Backend],
                 metrics: RequestMetrics) -> None:
        self._router = router
        self._backends = dict(backends)
        self._metrics = metrics

    async def ready(self) -> bool:
        """Ready when every backend is."""
        checks = await asyncio.gather(*(b.http.ready() for b in self._backends.values()))
        return all(checks)

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """Route and forward a REST model call."""
        target = self._router.resolve(call.model, call.version)
        if target.version != call.version:
            call = dataclasses.replace(call, version=target.version)
        backend = self._backends[target.backend]
        with self._metrics.track(call.model, target.version, "rest") as outcome:
            reply = await backend.http.request(call.method, call.upstream_path, call.body,
                                               call.headers)
            outcome.code = str(reply.status)
        return reply

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """Route and forward a serialized gRPC model call."""
        model, version = peek_model(payload)
        if not model:
            raise InvalidInput("the request names no model")
        target = self._router.resolve(model, version)
        if target.version != version:
            payload = with_version(payload, target.version)
        backend = self._backends[target.backend]
        with self._metrics.track(model, target.version, "grpc") as outcome:
            reply = await backend.grpc.call(method, payload, metadata)
            outcome.code = "OK"
        return reply


@asynccontextmanager
async def open_gateway(settings: GatewaySettings,
                       registry: CollectorRegistry) -> AsyncIterator[GatewayPlane]:
    """Open the connections to every backend for the life of the service."""
    limit = settings.server.max_body_bytes
    async with AsyncExitStack() as stack:
        backends = {
            name: Backend(
                await stack.enter_async_context(HttpUpstream(name, upstream)),
                await stack.enter_async_context(GrpcUpstream(name, upstream, limit)),
            )
            for name, upstream in settings.backends.items()
        }
        yield GatewayPlane(StaticRouter(settings.models), backends,
                           RequestMetrics(registry, "gateway"))


async def run_gateway(settings: GatewaySettings) -> None:
    """Serve the gateway until stopped by a signal."""
    registry = CollectorRegistry()
    await run_service("gateway", open_gateway(settings, registry), settings.server, registry)
