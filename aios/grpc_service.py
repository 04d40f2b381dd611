"""The gRPC adapter: KServe v2's `inference.GRPCInferenceService` over a `KServePlane`.

Messages arrive and leave as serialized bytes (no deserializer is registered), so tensors
are never decoded here. `ErrorInterceptor` is the one place where an `AiosError` becomes a
gRPC status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import grpc.aio
from tritonclient.grpc import service_pb2

from aios import __version__
from aios.errors import AiosError, StreamExhausted
from aios.plane import KServePlane
from aios.streaming import STREAM_METHOD, StreamLimits, serve_stream
from aios.unsupported import EXTENSIONS, UNSUPPORTED, Unsupported

logger = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
# Model-level calls that are forwarded to the next hop as they are.
FORWARDED_METHODS = ("ModelReady", "ModelMetadata", "ModelInfer", "ModelConfig",
                     "ModelStatistics")

# A unary handler: the request's bytes and its call (grpc.aio's, or `aios.h2server`'s).
Unary = Callable[[bytes, Any], Awaitable[bytes]]


def method_path(name: str) -> str:
    """The full gRPC path of a KServe method."""
    return f"/{SERVICE}/{name}"


def kserve_unary(plane: KServePlane, server_name: str) -> dict[str, Unary]:
    """The KServe unary methods a proxy answers (server metadata naming it
    ``server_name``), and those it refuses, by full method path."""

    async def server_live(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
        return bytes(service_pb2.ServerLiveResponse(live=True).SerializeToString())

    async def server_ready(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
        ok = await plane.ready()
        return bytes(service_pb2.ServerReadyResponse(ready=ok).SerializeToString())

    async def server_metadata(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
        meta = service_pb2.ServerMetadataResponse(
            name=server_name, version=__version__, extensions=list(EXTENSIONS))
        return bytes(meta.SerializeToString())

    async def repository_index(_: bytes, context: grpc.aio.ServicerContext) -> bytes:
        models = await plane.repository_index(context.invocation_metadata() or ())
        return bytes(service_pb2.RepositoryIndexResponse(models=[
            service_pb2.RepositoryIndexResponse.ModelIndex(**m) for m in models
        ]).SerializeToString())

    def unsupported(api: Unsupported) -> Unary:
        async def call(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
            if not api.empty:
                raise api.refusal()
            # An empty registry: the method's response with nothing in it.
            return b""

        return call

    def forward(name: str) -> Unary:
        path = method_path(name)

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            reply = await plane.forward_grpc(path, request, context.invocation_metadata() or ())
            if reply.trailing:
                context.set_trailing_metadata(reply.trailing)
            return reply.payload

        return call

    methods: dict[str, Unary] = {
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ServerMetadata": server_metadata,
        "RepositoryIndex": repository_index,
        **{name: forward(name) for name in FORWARDED_METHODS},
        **{u.grpc_method: unsupported(u) for u in UNSUPPORTED if u.grpc_method},
    }
    return {method_path(name): fn for name, fn in methods.items()}


def kserve_grpc_handler(plane: KServePlane, server_name: str, limits: StreamLimits,
                        max_streams: int) -> grpc.GenericRpcHandler:
    """A generic handler for every KServe method (`kserve_unary`, and ModelStreamInfer
    with at most ``max_streams`` streams at once, each within ``limits``)."""
    streams = [0]  # open now; a list, so the handler below can count in this closure

    async def stream_infer(requests: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if streams[0] >= max_streams:
            await abort(context, StreamExhausted(
                f"this server has {max_streams} streams open, its limit: try again later"))
        streams[0] += 1
        try:
            session = plane.open_stream(context.invocation_metadata() or ())
            async for response in serve_stream(session, requests, limits):
                yield response
        except AiosError as exc:
            await abort(context, exc)
        except Exception:
            logger.exception("unhandled error in %s", STREAM_METHOD)
            await abort(context, AiosError("internal error"))
        finally:
            streams[0] -= 1

    handlers = {path.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(fn)
                for path, fn in kserve_unary(plane, server_name).items()}
    handlers[STREAM_METHOD] = grpc.stream_stream_rpc_method_handler(stream_infer)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class UnaryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that wraps each unary handler with `wrap`."""

    def wrap(self, inner: Handler, method: str) -> Handler:
        """The handler to run instead of ``inner`` for ``method``."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, handler_call_details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def abort(context: grpc.aio.ServicerContext, exc: AiosError) -> NoReturn:
    """The gRPC rendering of an AiosError: its code and message as the call's status."""
    await context.abort(exc.grpc_code, exc.message)
    raise AssertionError("unreachable: abort raises")


class ErrorInterceptor(UnaryInterceptor):
    """Maps AiosError to its gRPC status; anything unexpected to INTERNAL, logged here."""

    def wrap(self, inner: Handler, method: str) -> Handler:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except AiosError as exc:
                await abort(context, exc)
            except Exception:
                logger.exception("unhandled error in %s", method)
                await abort(context, AiosError("internal error"))

        return guarded
