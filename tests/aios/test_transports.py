"""The libraries our transports are measured against answer as ours do."""

from __future__ import annotations

import json

import pytest
from starlette.types import Receive, Scope, Send

from aios.config import ServerSettings
from aios.http1 import Http1Pool
from aios.http1errors import ConnectFailed
from aios.transports import AiohttpPool, UvicornServer
from tests.helpers import free_ports, refused_ports


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"x-seen", body)]})
    await send({"type": "http.response.body",
                "body": json.dumps({"path": scope["path"], "bytes": len(body)}).encode()})


async def test_uvicorn_and_aiohttp_answer_as_ours() -> None:
    [port] = free_ports(1)
    server = UvicornServer(echo, ServerSettings(http_port=port, grpc_port=1))
    await server.start()
    try:
        answers = []
        for pool in (Http1Pool(f"127.0.0.1:{port}", 1.0), AiohttpPool(f"127.0.0.1:{port}", 1.0)):
            try:
                for _ in range(2):  # the second on a kept-alive connection
                    resp = await pool.request("POST", "/v2/models/m/infer", b"abc",
                                              [("content-type", "application/json")], 5.0)
                    answers.append((resp.status, dict(resp.headers)["x-seen"], resp.body))
            finally:
                await pool.aclose()
    finally:
        await server.shutdown()
    assert answers == [(201, "abc", b'{"path": "/v2/models/m/infer", "bytes": 3}')] * 4


@pytest.mark.parametrize("pool_type", [Http1Pool, AiohttpPool])
async def test_a_refused_connection_is_connect_failed(pool_type: type) -> None:
    with refused_ports(1) as [port]:
        pool = pool_type(f"127.0.0.1:{port}", 1.0)
        with pytest.raises(ConnectFailed):
            await pool.request("GET", "/", b"", [], 5.0)
        await pool.aclose()
