"""A lean keep-alive HTTP/1.1 client for one next hop, on asyncio protocols and httptools.

Every model call crosses one or two of these hops, so the client does only what a hop
needs: write a request with a known length, parse the response with httptools (the
parser uvicorn uses), keep the connection for the next call. No cookies, redirects,
decompression or per-request objects beyond the reply. Errors are plain `OSError`
subclasses (`aios.http1errors`) and `TimeoutError`; `aios.upstream` translates them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools

from aios.config import split_address
from aios.http1errors import BadResponse, ConnectFailed, ConnectionClosed

# A value with a line break would end the header early (header injection).
_UNSAFE_VALUE = re.compile(r"[\r\n\0]")
MAX_IDLE_CONNECTIONS = 256


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: status, lower-case headers as received, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._status = 0
        self.received = False  # any byte of the current response
        self.reusable = True
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: the connection is out of step
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionClosed("connection closed before the response was complete"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self.reusable = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, b"".join(self._body)))

    # -- use -----------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def roundtrip(self, request: bytes, timeout_s: float) -> Response:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self._headers, self._body, self.received = [], [], False
        self._transport.write(request)
        # A bare timer rather than asyncio.timeout: this runs on every hop of every call.
        timer = loop.call_later(timeout_s, self._fail, TimeoutError("no response in time"))
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class Http1Pool:
    """Keep-alive connections to one ``host:port``."""

    def __init__(self, address: str, connect_timeout_s: float) -> None:
        self._host, self._port = split_address(address)
        self._authority = address.encode("latin-1")
        self._connect_timeout = connect_timeout_s
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(_Connection, self._host, self._port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _head(self, method: str, path: str, length: int,
              headers: Iterable[tuple[str, str]]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1\r\nhost: ".encode("latin-1"), self._authority,
                 b"\r\ncontent-length: ", str(length).encode(), b"\r\n"]
        for name, value in headers:
            if _UNSAFE_VALUE.search(value):
                raise ValueError(f"header {name!r} has a line break in its value")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def request(self, method: str, path: str, body: bytes,
                      headers: Iterable[tuple[str, str]], timeout_s: float) -> Response:
        """Send one request and read its response within ``timeout_s``."""
        message = self._head(method, path, len(body), headers) + body
        deadline = time.monotonic() + timeout_s
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await self._send(conn, message, deadline - time.monotonic())
            except ConnectionClosed:
                # The hop closed an idle connection as we reused it: if it sent
                # nothing back, it never read the request, so a new connection may.
                if conn.received:
                    raise
        conn = await self._connect()
        left = deadline - time.monotonic()
        if left <= 0:
            conn.close()
            raise TimeoutError("no response in time")
        return await self._send(conn, message, left)

    async def _send(self, conn: _Connection, message: bytes, timeout_s: float) -> Response:
        done = False
        try:
            response = await conn.roundtrip(message, timeout_s)
            done = True
            return response
        finally:
            if done and conn.reusable and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
            else:
                conn.close()  # failed, cancelled, timed out or not keep-alive

    async def aclose(self) -> None:
        """Close every idle connection."""
        for conn in self._idle:
            conn.close()
        self._idle.clear()
