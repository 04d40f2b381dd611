"""Run a service's REST (`aios.h1server`) and gRPC (grpc.aio) front doors on one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from aios.config import ServerSettings
from aios.grpc_service import ErrorInterceptor, Unary, kserve_grpc_handler, kserve_unary
from aios.h1server import H1Server
from aios.h2server import GrpcFront
from aios.limits import GrpcLimits, InFlight, RestLimits
from aios.plane import KServePlane
from aios.rest import BatchHandler, ModelCalls, create_rest_app, kserve_routes
from aios.streaming import StreamLimits
from aios.tracing import Tracing, TracingSettings, open_tracing
from aios.transports import UvicornServer
from aios.upstream import grpc_options

logger = logging.getLogger(__name__)

GRPC_GRACE_S = 5.0
LOOPBACK = "127.0.0.1"


GrpcRegistrar = Callable[[grpc.aio.Server], None]


@dataclass(frozen=True)
class ServiceParts:
    """What a service serves: its KServe plane, plus any routes and gRPC services of its own."""

    plane: KServePlane
    routes: Sequence[BaseRoute] = ()
    grpc: Sequence[GrpcRegistrar] = ()
    batch: BatchHandler | None = None  # answers the gateway's envelopes (the sidecar)


async def serve(app: ASGIApp, registrars: Sequence[GrpcRegistrar],
                unary: Mapping[str, Unary], settings: ServerSettings, name: str) -> None:
    """Serve until SIGINT/SIGTERM, then stop both front doors gracefully; ``unary`` are
    the gRPC methods the lean front answers itself (``server.grpc_server: h2``)."""
    in_flight = InFlight(settings.max_concurrent_requests)
    # The limit interceptor runs first, so an overloaded process does no other work.
    server = grpc.aio.server(
        interceptors=[GrpcLimits(in_flight), ErrorInterceptor()],
        options=[*grpc_options(settings.max_body_bytes),
                 ("grpc.max_metadata_size", settings.max_header_bytes)])
    for register in registrars:
        register(server)
    grpc_address = f"{settings.host}:{settings.grpc_port}"
    lean: GrpcFront | None = None
    if settings.grpc_server == "h2":
        # grpcio answers on loopback what the lean front relays to it.
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        lean = GrpcFront(unary, (LOOPBACK, port), settings, in_flight)
    elif server.add_insecure_port(grpc_address) == 0:
        raise OSError(f"{name}: cannot bind gRPC on {grpc_address}")
    await server.start()
    front = RestLimits(app, in_flight)
    http = H1Server(front, settings) if settings.http_server == "h1" else UvicornServer(
        front, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if lean is not None:
            await lean.start()
        await http.start()  # a port in use raises here, and gRPC still stops below
        logger.info("%s: REST on http://%s:%d, gRPC on %s", name, settings.host,
                    settings.http_port, grpc_address)
        await stop.wait()
    finally:
        await http.shutdown()
        if lean is not None:
            await lean.shutdown()
        await server.stop(GRPC_GRACE_S)
        logger.info("%s: stopped", name)


# Opens a service's parts on its metrics registry and tracing.
PartsOpener = Callable[[CollectorRegistry, Tracing], AbstractAsyncContextManager[ServiceParts]]


async def run_service(name: str, open_parts: PartsOpener, settings: ServerSettings,
                      tracing: TracingSettings) -> None:
    """Open a service, serve it over REST and gRPC until a signal, close it."""
    registry = CollectorRegistry()
    with open_tracing(tracing) as spans:
        await _serve_parts(name, open_parts(registry, spans), settings, registry)


async def _serve_parts(name: str, open_parts: AbstractAsyncContextManager[ServiceParts],
                       settings: ServerSettings, registry: CollectorRegistry) -> None:
    async with open_parts as parts:
        # Some clients check the server's name: it can be presented as Triton's.
        server_name = "triton" if settings.present_as_triton else parts.plane.server_name
        handler = kserve_grpc_handler(
            parts.plane, server_name,
            StreamLimits(settings.stream_max_messages, settings.stream_idle_s),
            settings.max_streams)
        app = ModelCalls(create_rest_app([*kserve_routes(parts.plane, registry, server_name),
                                          *parts.routes]),
                         parts.plane, settings.max_body_bytes, parts.batch)
        await serve(app, [lambda s: s.add_generic_rpc_handlers((handler,)), *parts.grpc],
                    kserve_unary(parts.plane, server_name), settings, name)
