"""The sidecar's data plane: forward to its Triton, measure every model call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry

from aios.config import SidecarSettings
from aios.kserve import peek_model
from aios.metrics import RequestMetrics
from aios.plane import ModelCall
from aios.serve import ServiceParts, run_service
from aios.upstream import GrpcReply, GrpcUpstream, HttpReply, HttpUpstream, Metadata


class SidecarPlane:
    """Pass-through to one Triton, over the protocol the call came in on."""

    server_name = "aios-sidecar"

    def __init__(self, http: HttpUpstream, grpc: GrpcUpstream, metrics: RequestMetrics) -> None:
        self._http = http
        self._grpc = grpc
        self._metrics = metrics

    async def ready(self) -> bool:
        """Ready when Triton is."""
        return await self._http.ready()

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        """Forward a REST model call to Triton unchanged."""
        with self._metrics.track(call.model, call.version, "rest") as outcome:
            reply = await self._http.request(call.method, call.upstream_path, call.body,
                                             call.headers)
            outcome.code = str(reply.status)
        return reply

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        """Forward a serialized gRPC model call to Triton unchanged."""
        model, version = peek_model(payload)
        with self._metrics.track(model, version, "grpc") as outcome:
            reply = await self._grpc.call(method, payload, metadata)
            outcome.code = "OK"
        return reply


@asynccontextmanager
async def open_sidecar(settings: SidecarSettings,
                       registry: CollectorRegistry) -> AsyncIterator[ServiceParts]:
    """Open the sidecar's connections to Triton for the life of the service."""
    limit = settings.server.max_body_bytes
    async with HttpUpstream("triton", settings.triton) as http, \
            GrpcUpstream("triton", settings.triton, limit) as grpc:
        yield ServiceParts(SidecarPlane(http, grpc, RequestMetrics(registry, "sidecar")))


async def run_sidecar(settings: SidecarSettings) -> None:
    """Serve the sidecar until stopped by a signal."""
    registry = CollectorRegistry()
    await run_service("sidecar", open_sidecar(settings, registry), settings.server, registry)
