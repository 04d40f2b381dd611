"""`aios.http1`: the hop client against a real asyncio HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from aios.http1 import Http1Pool
from aios.http1errors import ConnectFailed, ConnectionClosed
from tests.helpers import free_ports

Reply = Callable[[bytes], bytes]


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: " + \
        str(len(body)).encode() + b"\r\n\r\n" + body


@dataclass
class Server:
    """Answers each request with ``reply(request_body)``; counts connections."""

    reply: Reply = ok
    close_after_reply: bool = False
    delay_s: float = 0.0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await asyncio.sleep(self.delay_s)
                writer.write(self.reply(body))
                await writer.drain()
                if self.close_after_reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture()
async def server() -> AsyncIterator[Server]:
    state = Server()
    srv = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = srv.sockets[0].getsockname()[1]
    yield state
    srv.close()


def pool(server: Server) -> Http1Pool:
    return Http1Pool(f"127.0.0.1:{server.port}", connect_timeout_s=1.0)


async def test_keep_alive_reuses_one_connection(server: Server) -> None:
    client = pool(server)
    for i in range(3):
        resp = await client.request("POST", "/v2/models/m/infer", f"body{i}".encode(),
                                    [("content-type", "application/json")], 5.0)
        assert (resp.status, resp.body) == (200, f"body{i}".encode())
        assert ("content-type", "text/plain") in resp.headers
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n")
    assert head[0] == b"POST /v2/models/m/infer HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in head
    assert b"content-length: 5" in head and b"content-type: application/json" in head
    await client.aclose()


async def test_a_chunked_response_is_reassembled(server: Server) -> None:
    server.reply = lambda _: (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (await pool(server).request("GET", "/", b"", [], 5.0)).body == b"abcde"


async def test_a_stale_idle_connection_is_replaced(server: Server) -> None:
    """The hop closed the idle connection (keep-alive timeout): the next call, which it
    never read, goes out on a new connection."""
    server.close_after_reply = True
    client = pool(server)
    for _ in range(3):
        assert (await client.request("GET", "/", b"", [], 5.0)).status == 200
    assert server.connections == 3


async def test_timeout_closes_the_connection(server: Server) -> None:
    server.delay_s = 1.0
    client = pool(server)
    with pytest.raises(TimeoutError):
        await client.request("GET", "/", b"", [], 0.2)
    server.delay_s = 0.0
    assert (await client.request("GET", "/", b"", [], 5.0)).status == 200
    assert server.connections == 2  # the late reply's connection was not reused


async def test_a_response_cut_short_is_an_error(server: Server) -> None:
    server.reply = lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
    server.close_after_reply = True
    with pytest.raises(ConnectionClosed):
        await pool(server).request("GET", "/", b"", [], 5.0)


async def test_nothing_listening_is_connect_failed() -> None:
    (port,) = free_ports(1)
    with pytest.raises(ConnectFailed):
        await Http1Pool(f"127.0.0.1:{port}", 1.0).request("GET", "/", b"", [], 5.0)


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\0b"])
async def test_a_line_break_in_a_header_value_is_refused(server: Server, value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        await pool(server).request("GET", "/", b"", [("x-aios-tenant", value)], 5.0)
    assert server.requests == []
