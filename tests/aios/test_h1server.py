"""The REST front door's HTTP/1.1 server, over real loopback sockets with a small ASGI app.

The edge limits (431, 408, 413 streamed, keep-alive idle, in-flight 503) are exercised
against the real services in tests/e2e/test_limits.py; this covers the protocol itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from aios.config import ServerSettings
from aios.h1server import HIGH_WATER_BYTES, H1Server
from tests.helpers import free_ports


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes what it was asked; a few paths behave badly on purpose."""
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("a bug")
    if path == "/silent":
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if path == "/slow":
        await asyncio.sleep(0.5)
    body = json.dumps({"method": scope["method"], "path": path,
                       "query": scope["query_string"].decode(),
                       "bytes": sum(map(len, chunks)), "reads": len(chunks)}).encode()
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[H1Server]:
    [port] = free_ports(1)
    srv = H1Server(app, ServerSettings(http_port=port, grpc_port=1, keepalive_timeout_s=1,
                                       header_timeout_s=1))
    await srv.start()
    yield srv
    await srv.shutdown()


async def exchange(server: H1Server, raw: bytes, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.http_port)
    writer.write(raw)
    out = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                out += chunk
                if not until_close and out.endswith(b"}"):
                    break
    finally:
        writer.close()
    return out


def responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a byte stream of responses with content-length into (status line, headers, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", len(rest)))
        out.append((lines[0], headers, rest[:length]))
        raw = rest[length:]
    return out


async def test_pipelined_requests_are_answered_in_order(server: H1Server) -> None:
    raw = b"".join(f"POST /{p}?n={i} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                   .encode() for i, p in enumerate(["slow", "a", "b"]))
    got = responses(await exchange(server, raw + b"GET /last HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n"))
    assert [json.loads(body)["path"] for _, _, body in got] == ["/slow", "/a", "/b", "/last"]
    assert [json.loads(body)["query"] for _, _, body in got][:3] == ["n=0", "n=1", "n=2"]
    assert got[-1][1]["connection"] == "close"


@pytest.mark.parametrize(("request_line", "status", "error"), [
    (b"GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request", "invalid HTTP request"),
    (b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
     "HTTP/1.1 400 Bad Request", "protocol upgrades are not supported"),
    (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 500 Internal Server Error",
     "internal error"),
    (b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 500 Internal Server Error",
     "internal error"),
])
async def test_what_cannot_be_answered_gets_a_kserve_error_and_a_close(
        server: H1Server, request_line: bytes, status: str, error: str) -> None:
    [(line, headers, body)] = responses(await exchange(server, request_line))
    assert line == status
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"].startswith(error)


async def test_unknown_length_is_chunked_head_and_204_have_no_body(server: H1Server) -> None:
    streamed = await exchange(server, b"GET /stream HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n")
    head, _, body = streamed.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"
    head_only = await exchange(server, b"HEAD /x HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
    assert b"content-length: " in head_only
    no_content = await exchange(server, b"DELETE /empty HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert no_content == b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"


async def test_expect_continue_is_answered_when_the_body_is_read(server: H1Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.http_port)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == \
            b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
    finally:
        writer.close()


async def test_a_large_body_reaches_the_app_in_bounded_pieces(server: H1Server) -> None:
    size = 16 * HIGH_WATER_BYTES
    raw = (f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
           f"Connection: close\r\n\r\n").encode() + b"x" * size
    [(_, _, body)] = responses(await exchange(server, raw))
    doc: dict[str, Any] = json.loads(body)
    assert doc["bytes"] == size
    assert doc["reads"] > 1, "the body was streamed, not buffered whole"


async def test_shutdown_finishes_requests_in_flight_and_closes_idle(server: H1Server) -> None:
    port = server.settings.http_port
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    busy = asyncio.create_task(exchange(server, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
    await asyncio.sleep(0.2)
    await server.shutdown()
    [(line, headers, _)] = responses(await busy)
    assert line == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close", "a stopping server does not keep the connection"
    assert await asyncio.wait_for(idle_r.read(), 1) == b"", "idle connection closed"
    idle_w.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_stalled_body_is_cut_off_with_408(server: H1Server) -> None:
    started = time.monotonic()
    answer = await exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                            b"\r\nabc")
    assert 0.9 < time.monotonic() - started < 3
    [(line, headers, body)] = responses(answer)
    assert (line, headers["connection"]) == ("HTTP/1.1 408 Request Timeout", "close")
    assert json.loads(body) == {"error": "request body not received in time"}


GOOD_POST = b"POST /%b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
BAD_AFTER_GOOD = {
    "a bad request line": b"GARBAGE\r\n\r\n",
    "a bad header": b"GET /c HTTP/1.1\r\nHost x\r\n\r\n",
    "a broken chunked body": b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\nzz\r\nabc\r\n",
    "too many headers": b"GET /c HTTP/1.1\r\n" + b"".join(
        b"x-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
}


@pytest.mark.parametrize("path", [b"a", b"slow"])
@pytest.mark.parametrize("bad", BAD_AFTER_GOOD.values(), ids=BAD_AFTER_GOOD.keys())
async def test_a_bad_pipelined_request_is_answered_after_the_good_ones(
        server: H1Server, path: bytes, bad: bytes) -> None:
    got = responses(await exchange(server, GOOD_POST % path + GOOD_POST % b"b" + bad))
    assert [line for line, _, _ in got] == ["HTTP/1.1 200 OK"] * 2 + [got[-1][0]]
    assert [json.loads(body)["path"] for _, _, body in got[:2]] == [f"/{path.decode()}", "/b"]
    assert got[-1][0] in ("HTTP/1.1 400 Bad Request",
                          "HTTP/1.1 431 Request Header Fields Too Large")
    assert got[-1][1]["connection"] == "close" and "error" in json.loads(got[-1][2])


SMUGGLING = {
    "Content-Length and Transfer-Encoding": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "Transfer-Encoding can't be present with Content-Length"),
    "Transfer-Encoding and Content-Length": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        b"\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "Content-Length can't be present with Transfer-Encoding"),
    "two Content-Lengths": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        "Duplicate Content-Length"),
    "two equal Content-Lengths": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "Duplicate Content-Length"),
    "a Content-Length list": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
        "Invalid character in Content-Length"),
    "a negative Content-Length": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "Invalid character in Content-Length"),
    "obs-fold": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
                 "Unexpected whitespace after header value"),
    "bare LF": (b"GET /a HTTP/1.1\nHost: x\n\n", "Expected CRLF after version"),
    "bare CR": (b"GET /a HTTP/1.1\rHost: x\r\n\r\n", "Expected CRLF after version"),
    "chunk-size overflow": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n", "Chunk size overflow"),
    "a coding other than chunked": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        "Request has invalid `Transfer-Encoding`"),
    "xchunked": (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n", "Request has invalid `Transfer-Encoding`"),
    "chunked, identity": (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, "
                          b"identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                          "Invalid `Transfer-Encoding` header value"),
    "a space before the colon": (b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc",
                                 "Invalid header field char"),
    "NUL in a value": (b"GET /a HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
                       "Invalid header value char"),
}


@pytest.mark.parametrize(("raw", "error"), SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_request_smuggling_is_refused(server: H1Server, raw: bytes, error: str) -> None:
    [(line, headers, body)] = responses(await exchange(server, raw))
    assert (line, headers["connection"]) == ("HTTP/1.1 400 Bad Request", "close")
    assert json.loads(body) == {"error": f"invalid HTTP request: {error}"}


async def splitting_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes the X-Echo request header into a response header, as an app might."""
    echo = dict(scope["headers"]).get(b"x-echo", b"")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-echo", echo)]})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.parametrize(("value", "sent"), [
    (b"a\r\nX-Injected: 1", False), (b"a\nX-Injected: 1", False), (b"a\rX-Injected: 1", False),
    (b"a\x00b", False), (b"a\tb c", True),
])
async def test_a_response_header_that_would_split_the_response_is_never_sent(
        value: bytes, sent: bool) -> None:
    [port] = free_ports(1)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # The value reaches the app by another route than the request (httptools refuses
        # it there): what the app sends is what is checked.
        await splitting_app({**scope, "headers": [(b"x-echo", value)]}, receive, send)

    srv = H1Server(app, ServerSettings(http_port=port, grpc_port=1))
    await srv.start()
    try:
        [(line, headers, body)] = responses(await exchange(
            srv, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    finally:
        await srv.shutdown()
    assert "x-injected" not in headers
    if sent:
        assert (line, headers["x-echo"], body) == ("HTTP/1.1 200 OK", value.decode(), b"{}")
    else:
        assert (line, "x-echo" in headers) == ("HTTP/1.1 500 Internal Server Error", False)
        assert json.loads(body) == {"error": "internal error"}
