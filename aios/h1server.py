"""The REST front door: a lean HTTP/1.1 server, httptools' parser (uvicorn's) under a
minimal ASGI driver.

uvicorn's protocol and ASGI cycle cost about a quarter of each service's CPU per model
call, and it sends a response in two writes (head, body), which wakes the caller twice.
This server does what a front door of these services needs and no more:

- a response with a known length leaves in one write; otherwise it is chunked;
- request headers must arrive within ``header_timeout_s`` of a request's start, a body
  the app waits for must not stall that long between bytes, and a whole body must arrive
  within ``body_timeout_s``, else 408 and close; at most ``max_uploads_per_client``
  bodies arrive at once from one address (beyond: 503 and close)
  (slowloris, slow body); more than ``max_headers`` headers or ``max_header_bytes`` bytes
  (request line included) is a 431 while parsing, before anything is buffered beyond it;
- idle keep-alive connections close after ``keepalive_timeout_s``;
- a body is streamed to the app with backpressure (reading pauses while the app has not
  taken what arrived), so the app's body limit holds in bounded memory;
- ``Expect: 100-continue`` is answered when the app first reads the body;
- pipelined requests are answered in order;
- invalid HTTP gets a 400 with a KServe error body, and the connection closes; behind
  pipelined requests, after their answers (they ran: the client must see them);
- on shutdown: stop accepting, close idle connections, let requests in flight finish
  (within ``SHUTDOWN_GRACE_S``), then close the rest.

Timeouts are one sweep every ``SWEEP_S`` over the open connections rather than a timer
armed and cancelled per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message

from aios.config import ServerSettings
from aios.errors import (
    AiosError,
    HeadersTooLarge,
    InvalidInput,
    Overloaded,
    RequestTimeout,
    error_parts,
)
from aios.tasks import Tasks, sweep_forever

logger = logging.getLogger(__name__)

SWEEP_S = 0.1
# Body bytes buffered for the app before the connection stops reading.
HIGH_WATER_BYTES = 64 * 1024
SHUTDOWN_GRACE_S = 30.0

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ASGI = {"version": "3.0", "spec_version": "2.4"}


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()


def _refusal(exc: AiosError) -> bytes:
    """A complete response that ends the connection: the error's KServe rendering."""
    status, given, body = error_parts(exc)
    headers = {k.lower(): v for k, v in given.items()}
    headers.update({"connection": "close", "content-length": str(len(body))})
    return _status_line(status) + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1") + b"\r\n" + body


def _well_formed(head: bytes, lines: int) -> bool:
    """Whether a response head of ``lines`` lines has CR and LF only as their ends, and no
    NUL: counted, not scanned by line, as it is on every response."""
    return head.count(b"\r") == lines == head.count(b"\n") and b"\0" not in head


class _Cycle:
    """One request: its scope, its body as it arrives, the state of its response."""

    __slots__ = (
        "body",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "expect_100",
        "head_sent",
        "headers",
        "keep_alive",
        "more_body",
        "scope",
        "started",
        "status",
        "waiter",
    )

    def __init__(self, conn: _Connection, scope: dict[str, Any], expect_100: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.waiter: asyncio.Future[None] | None = None
        self.expect_100 = expect_100
        self.keep_alive = True
        self.started = False
        self.head_sent = False
        self.complete = False
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        conn = self.conn
        if conn.lost or self.complete:
            return {"type": "http.disconnect"}
        if self.expect_100 and not self.started:
            self.expect_100 = False
            conn.write(_CONTINUE)
        while not self.body and self.more_body:
            self.waiter = conn.loop.create_future()
            conn.update_reading()
            conn.body_deadline = conn.loop.time() + conn.server.settings.header_timeout_s
            await self.waiter
            conn.body_deadline = None
            self.waiter = None
            if conn.lost:
                return {"type": "http.disconnect"}
        chunk = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        conn.update_reading()
        return {"type": "http.request", "body": chunk, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has already started")
            self.started = True
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
            return
        if kind != "http.response.body" or not self.started or self.complete:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        conn = self.conn
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if conn.lost:
            if not more:
                self.complete = True
            return
        head: bytes | None = b""
        if not self.head_sent:
            head = self._head(None if more else len(body))
            if head is None:
                # A header value that would end the line (response splitting): nothing of
                # it leaves; the client gets a 500 and the connection closes.
                logger.error("refused to send a response header with CR, LF or NUL to %s %s",
                             self.scope["method"], self.scope["path"])
                self.complete = True
                conn.refuse(AiosError("internal error"))
                return
            self.head_sent = True
        if self.scope["method"] == "HEAD":
            body = b""
        elif self.chunked and body:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        if not more:
            self.complete = True
            if self.chunked:
                body += b"0\r\n\r\n"
        conn.write(head + body if head else body)
        if self.complete:
            conn.response_done(self)
        elif conn.write_paused:
            await conn.drained()

    def _head(self, length: int | None) -> bytes | None:
        """The response's status line and headers (None: a header would break a line)."""
        parts = [_status_line(self.status)]
        if self.conn.server.stopping:
            self.keep_alive = False
        has_length = False
        for name, value in self.headers:
            low = name.lower()
            if low == b"content-length":
                has_length = True
            elif low == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue
            parts.append(b"%b: %b\r\n" % (name, value))
        if not has_length and self.status not in (204, 304):  # these carry no length
            if length is not None:
                parts.append(b"content-length: %d\r\n" % length)
            elif self.scope["method"] != "HEAD":
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        return head if _well_formed(head, len(parts)) else None


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the app for each, in order."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.lost = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._read_paused = False
        self._cycle: _Cycle | None = None  # the request the app is answering
        self._parsing: _Cycle | None = None  # the request being parsed
        self._pipeline: deque[_Cycle] = deque()
        # The answer to a malformed request that came behind requests still being
        # answered: sent after theirs, then the connection closes.
        self._refusal: bytes | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self.header_deadline: float | None = None
        self.body_deadline: float | None = None  # while the app waits for body bytes
        self.upload_deadline: float | None = None  # while a request's body is arriving
        self._uploading = False  # counted in the server's uploads of this peer
        self.idle_deadline: float | None = None
        self._peer: Any = None
        self._sock: Any = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self._peer = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self._sock = tuple(sock[:2]) if isinstance(sock, tuple) else None
        self.header_deadline = self.loop.time() + self.server.settings.header_timeout_s
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self._refusal is not None:
            return
        self.idle_deadline = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # about the request just parsed: at once
            self.refuse(InvalidInput("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self.refuse_incoming(InvalidInput(f"invalid HTTP request: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self._upload_done()
        for cycle in (self._cycle, self._parsing, *self._pipeline):
            if cycle is not None:
                cycle.wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drained(self) -> None:
        """Wait until the transport's buffer is below its high-water mark again."""
        if self.write_paused and not self.lost:
            self._drain = self.loop.create_future()
            await self._drain

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        if self.header_deadline is None:
            self.header_deadline = self.loop.time() + self.server.settings.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        limit = self.server.settings.max_headers
        if len(self._headers) > limit:
            self.refuse_incoming(HeadersTooLarge(f"more than {limit} request headers"))
            raise httptools.HttpParserError("too many headers")
        self._count(len(name) + len(value))

    def _count(self, size: int) -> None:
        self._header_bytes += size
        limit = self.server.settings.max_header_bytes
        if self._header_bytes > limit:
            self.refuse_incoming(HeadersTooLarge(
                f"request headers exceed the {limit}-byte limit"))
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        self.header_deadline = None
        # Any: httptools' stub says `query: bytes`, but it is None when the URL has none
        # (a compiled build checks the stub's types at run time, and refused it).
        parsed: Any = httptools.parse_url(self._url)
        raw_path: bytes = parsed.path
        query: bytes | None = parsed.query
        method = self.parser.get_method().decode("ascii")
        expect_100 = has_body = False
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                expect_100 = True
            elif (name == b"content-length" and value.strip(b"0 ")) or \
                    name == b"transfer-encoding":
                has_body = True
        if has_body and not self._upload_started():
            raise httptools.HttpParserError("too many uploads from this address")
        scope = {
            "type": "http", "asgi": _ASGI, "http_version": self.parser.get_http_version(),
            "server": self._sock, "client": self._peer, "scheme": "http", "method": method,
            "root_path": "", "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path, "query_string": query or b"",
            "headers": self._headers,
        }
        cycle = _Cycle(self, scope, expect_100)
        cycle.keep_alive = self.parser.should_keep_alive() and not self.server.stopping
        self._parsing = cycle
        if self._cycle is None:
            self._start(cycle)
        else:  # pipelined behind the request being answered
            self._pipeline.append(cycle)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is None or cycle.complete:
            return
        cycle.body.append(body)
        cycle.buffered += len(body)
        cycle.wake()
        if cycle.buffered > HIGH_WATER_BYTES:
            self.update_reading()

    def on_message_complete(self) -> None:
        self._upload_done()
        cycle = self._parsing
        self._parsing = None
        if cycle is not None:
            cycle.more_body = False
            cycle.wake()

    # -- requests and responses -------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        self._cycle = cycle
        self.server.spawn(self._run(cycle))

    async def _run(self, cycle: _Cycle) -> None:
        try:
            await self.server.app(cycle.scope, cycle.receive, cycle.send)
        except Exception as exc:
            logger.error("unhandled error answering %s %s", cycle.scope["method"],
                         cycle.scope["path"], exc_info=exc)
            if not cycle.started:
                cycle.keep_alive = False
                self.refuse(AiosError("internal error"))
                return
        if not cycle.complete and not self.lost:
            if not cycle.started:
                logger.error("no response to %s %s", cycle.scope["method"],
                             cycle.scope["path"])
                self.refuse(AiosError("internal error"))
            else:  # a response cut short: the client can only see it by the connection
                self.close()

    def response_done(self, cycle: _Cycle) -> None:
        """The app has sent the whole response to ``cycle``."""
        if not cycle.keep_alive or cycle.more_body:
            # Not reading the rest of an unread body: the connection cannot be reused.
            self.close()
            return
        self._cycle = None
        if self._pipeline:
            self._start(self._pipeline.popleft())
        elif self._refusal is not None:
            self.write(self._refusal)
            self.close()
        elif self.server.stopping:
            self.close()
        else:
            self.idle_deadline = self.loop.time() + self.server.settings.keepalive_timeout_s
        self.update_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def update_reading(self) -> None:
        """Read while the app keeps up: pause on a pipelined request or a full buffer."""
        if self.transport is None or self.lost:
            return
        cycle = self._parsing
        full = cycle is not None and cycle.buffered > HIGH_WATER_BYTES
        pause = bool(self._pipeline) or full or self._refusal is not None
        if pause and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        elif not pause and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def _upload_started(self) -> bool:
        """Count this connection's body against its peer's uploads and start the body's
        deadline; False (and refused) when the peer has too many uploads already."""
        settings = self.server.settings
        peer = self._peer[0] if self._peer else None
        uploads = self.server.uploads
        if uploads.get(peer, 0) >= settings.max_uploads_per_client:
            self.refuse_incoming(Overloaded(
                f"more than {settings.max_uploads_per_client} request bodies arriving from "
                "this address; retry shortly"))
            return False
        uploads[peer] = uploads.get(peer, 0) + 1
        self._uploading = True
        self.upload_deadline = self.loop.time() + settings.body_timeout_s
        return True

    def _upload_done(self) -> None:
        self.upload_deadline = None
        if self._uploading:
            self._uploading = False
            peer = self._peer[0] if self._peer else None
            left = self.server.uploads[peer] - 1
            if left:
                self.server.uploads[peer] = left
            else:
                del self.server.uploads[peer]

    def refuse_incoming(self, exc: AiosError) -> None:
        """Refuse the request being received. Behind a request still being answered (and
        not that request's own body), the refusal waits for the answers before it: they
        ran, so the client must see them. Nothing more is read either way."""
        if self._refusal is not None:  # the parser's own error after a limit's refusal
            return
        if self._cycle is None or self._parsing is self._cycle:
            self.refuse(exc)
            return
        if self._parsing is not None:  # a pipelined request whose body is broken
            self._pipeline.remove(self._parsing)
            self._parsing = None
        self._refusal = _refusal(exc)
        self.update_reading()

    def refuse(self, exc: AiosError) -> None:
        """Answer with an error and close (the request stream cannot be trusted)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_refusal(exc))
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def sweep(self, now: float) -> None:
        """Apply the header, body and keep-alive timeouts."""
        if self.header_deadline is not None and now >= self.header_deadline:
            self.header_deadline = None
            self.refuse_incoming(RequestTimeout("request headers not received in time"))
        elif self.body_deadline is not None and now >= self.body_deadline:
            self.body_deadline = None
            self.refuse(RequestTimeout("request body not received in time"))
        elif self.upload_deadline is not None and now >= self.upload_deadline:
            self.upload_deadline = None
            self.refuse(RequestTimeout(f"request body not received within "
                                       f"{self.server.settings.body_timeout_s:g} s"))
        elif self.idle_deadline is not None and now >= self.idle_deadline:
            self.close()

    def idle(self) -> bool:
        return self._cycle is None and self._parsing is None


class H1Server:
    """Serves ``app`` over HTTP/1.1 on one listening socket."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        # Per client address, its requests whose body is still arriving.
        self.uploads: dict[Any, int] = {}
        self.stopping = False
        self._tasks = Tasks()  # the requests being answered
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on the settings' host and HTTP port."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), self.settings.host, self.settings.http_port,
            reuse_address=True, backlog=2048)
        self._sweeper = asyncio.create_task(sweep_forever(self.connections, SWEEP_S))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def shutdown(self) -> None:
        """Stop accepting; close idle connections; let requests in flight finish."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + SHUTDOWN_GRACE_S
        while True:
            for conn in list(self.connections):
                if conn.idle():
                    conn.close()
            if not (self._tasks or self.connections) or self.loop.time() >= deadline:
                break
            await asyncio.sleep(SWEEP_S)
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
