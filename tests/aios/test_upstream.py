"""What crosses a hop: the client's content and trace headers, never its credentials or
identity claims (only the gateway sets x-aios-*)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from aios.config import UpstreamSettings
from aios.errors import UpstreamConnectFailed, UpstreamUnavailable
from aios.upstream import TRITON_CLIENT_ERRORS, GrpcUpstream, client_error_status, outgoing
from tests.helpers import free_ports


@pytest.mark.parametrize(("name", "passes"), [
    ("content-type", True),
    ("inference-header-content-length", True),
    ("content-encoding", True),
    ("traceparent", True),
    ("tracestate", True),
    ("x-request-id", True),
    ("authorization", False),
    ("cookie", False),
    ("x-aios-tenant", False),
    ("x-aios-subject", False),
    ("host", False),
    ("content-length", False),
    ("connection", False),
])
def test_only_content_and_trace_headers_cross_a_hop(name: str, passes: bool) -> None:
    assert outgoing([(name, "v")], None) == ([(name, "v")] if passes else [])


def test_our_headers_win_over_the_clients() -> None:
    sent = outgoing([("traceparent", "client"), ("x-aios-tenant", "forged"),
                     ("content-type", "application/json")],
                    {"traceparent": "ours", "x-aios-tenant": "verified"})
    assert sent == [("content-type", "application/json"), ("traceparent", "ours"),
                    ("x-aios-tenant", "verified")]


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, b'{"error":"Unable to parse \'data\': attempt to access JSON non-number as double"}',
     400),
    (500, b'{"error":"failed to parse the request JSON buffer: Invalid value. at 1"}', 400),
    (500, b'{"error":"an internal failure of the backend"}', 500),
    (503, b'{"error":"Unable to parse \'data\': x"}', 503),
    (400, b'{"error":"unexpected inference input"}', 400),
])
def test_triton_client_errors_sent_as_500_are_400(status: int, body: bytes,
                                                  expected: int) -> None:
    assert client_error_status(status, body, TRITON_CLIENT_ERRORS) == expected
    assert client_error_status(status, body, ()) == status


async def test_a_grpc_backend_nobody_listens_on_is_a_connect_failure() -> None:
    [port] = free_ports(1)
    settings = UpstreamSettings(http="127.0.0.1:1", grpc=f"127.0.0.1:{port}")
    async with GrpcUpstream("b", settings, 1 << 20) as upstream:
        with pytest.raises(UpstreamConnectFailed, match="backend 'b' unreachable"):
            await upstream.call("/x/y", b"", ())


async def test_a_grpc_backend_that_dies_under_a_call_is_not_a_connect_failure() -> None:
    """The call reached the backend: it must not be sent again elsewhere as unsent."""
    async def never_answers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(30)
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "x", {"y": grpc.unary_unary_rpc_method_handler(never_answers)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = UpstreamSettings(http="127.0.0.1:1", grpc=f"127.0.0.1:{port}")
    async with GrpcUpstream("b", settings, 1 << 20) as upstream:
        call = asyncio.ensure_future(upstream.call("/x/y", b"", ()))
        await asyncio.sleep(0.3)
        await server.stop(0)
        with pytest.raises(UpstreamUnavailable, match="backend 'b' unavailable") as info:
            await call
    assert not isinstance(info.value, UpstreamConnectFailed)
