"""Anything unexpected is 500 / INTERNAL with a generic message; details only in our log.

A bug cannot be caused for real on purpose, so this is the one place that uses a fake:
a data plane that raises.
"""

from __future__ import annotations

import grpc
import grpc.aio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from aios.config import ServerSettings
from aios.grpc_service import ErrorInterceptor, kserve_grpc_handler
from aios.plane import ModelCall
from aios.rest import ModelCalls, create_rest_app, kserve_routes
from aios.streaming import Outbox, StreamLimits
from aios.upstream import GrpcReply, HttpReply, Metadata
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import free_ports, infer_json

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


class BrokenPlane:
    """A plane with a bug in it."""

    server_name = "broken"

    async def ready(self) -> bool:
        return True

    async def precheck(self, kind: str, model: str, headers: object) -> None:
        return None

    async def forward_rest(self, call: ModelCall) -> HttpReply:
        raise RuntimeError("secret internal detail")

    async def forward_grpc(self, method: str, payload: bytes, metadata: Metadata) -> GrpcReply:
        raise RuntimeError("secret internal detail")

    async def repository_index(self, headers: object) -> list[dict[str, str]]:
        raise RuntimeError("secret internal detail")

    def open_stream(self, metadata: object) -> BrokenStream:
        return BrokenStream()


class BrokenStream:
    """A stream whose every message meets a bug."""

    def __init__(self) -> None:
        self.outbox = Outbox()

    async def send(self, message: bytes) -> None:
        raise RuntimeError("secret stream detail")

    async def finish(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_rest_bug_is_a_generic_500(caplog: pytest.LogCaptureFixture) -> None:
    plane = BrokenPlane()
    app = ModelCalls(create_rest_app(kserve_routes(plane, CollectorRegistry(), "broken")),
                     plane, 1 << 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        resp = await client.post("/v2/models/m/infer", content=infer_json([[1.0] * 8]))
    assert (resp.status_code, resp.json()) == (500, {"error": "internal error"})
    assert "secret internal detail" in caplog.text


async def test_grpc_bug_is_a_generic_internal(caplog: pytest.LogCaptureFixture) -> None:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers((kserve_grpc_handler(
        BrokenPlane(), "broken", StreamLimits(10, 5.0), 4),))
    port = free_ports(1)[0]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(INFER)(grpc_request(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                call = channel.stream_stream(STREAM)(iter([grpc_request()]), timeout=5)
                async for _ in call:
                    pass
    finally:
        await server.stop(0)
    for error in (info.value, streamed.value):
        assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert "secret internal detail" in caplog.text
    assert "secret stream detail" in caplog.text


def test_server_settings_defaults_are_the_documented_limits() -> None:
    s = ServerSettings(http_port=1, grpc_port=2)
    assert (s.max_body_bytes, s.max_header_bytes, s.max_headers, s.max_concurrent_requests,
            s.keepalive_timeout_s) == (64 * 1024 * 1024, 60 * 1024, 100, 1024, 5.0)
