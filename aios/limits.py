"""Process-wide edge limits, the same on both front doors, and path normalisation.

REST: a plain ASGI layer in front of everything refuses oversized or too many headers
(431) and, beyond the in-flight cap, answers a fast 503 with Retry-After. gRPC: an
interceptor applies the same cap (metadata size is bounded by the server option).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import grpc.aio
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aios.config import ServerSettings
from aios.errors import AiosError, HeadersTooLarge, InvalidInput, Overloaded
from aios.grpc_service import Handler, UnaryInterceptor
from aios.kserve import error_body
from aios.rest import error_parts, send_response


def normalized(scope: Scope) -> Scope:
    """The scope with repeated slashes collapsed, so that auth, quota keys and routing all
    see one spelling of a path; dot segments are refused (400)."""
    path: str = scope["path"]
    if "//" in path:
        path = re.sub("/{2,}", "/", path)
    if any(part in (".", "..") for part in path.split("/")):
        raise InvalidInput("path must not contain '.' or '..' segments")
    return scope if path == scope["path"] else {**scope, "path": path}


class InFlight:
    """Counts requests in flight against one cap shared by both protocols."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.now = 0

    def enter(self) -> None:
        """Admit one request, or raise Overloaded."""
        if self.now >= self.cap:
            raise Overloaded(f"more than {self.cap} requests in flight; retry shortly")
        self.now += 1

    def leave(self) -> None:
        """One request is done."""
        self.now -= 1


class RestLimits:
    """Header limits and the in-flight cap, before any other work is done."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, in_flight: InFlight) -> None:
        self._app = app
        self._max_bytes = settings.max_header_bytes
        self._max_count = settings.max_headers
        self._in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            scope = normalized(scope)
            headers = scope["headers"]
            if len(headers) > self._max_count:
                raise HeadersTooLarge(f"more than {self._max_count} request headers")
            size = sum(len(k) + len(v) for k, v in headers)
            if size > self._max_bytes:
                raise HeadersTooLarge(f"request headers of {size} bytes exceed the "
                                      f"{self._max_bytes}-byte limit")
            self._in_flight.enter()
        except AiosError as exc:
            await send_response(send, *error_parts(exc))
            return
        try:
            await self._app(scope, receive, send)
        finally:
            self._in_flight.leave()


class GrpcLimits(UnaryInterceptor):
    """The in-flight cap for gRPC calls (RESOURCE_EXHAUSTED is for sizes; this is 503's
    UNAVAILABLE, which clients retry)."""

    def __init__(self, in_flight: InFlight) -> None:
        self._in_flight = in_flight

    def wrap(self, inner: Handler, method: str) -> Handler:
        in_flight = self._in_flight

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                in_flight.enter()
            except Overloaded as exc:
                await context.abort(exc.grpc_code, exc.message)
            try:
                return await inner(request, context)
            finally:
                in_flight.leave()

        return limited


_TIMED_OUT = error_body("request headers not received in time")
_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(_TIMED_OUT)).encode() +
        b"\r\n\r\n" + _TIMED_OUT)


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing connections whose request headers do not
    arrive within ``timeout_s`` (uvicorn itself only times idle keep-alive)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_408)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
