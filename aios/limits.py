"""Process-wide edge limits, the same on both front doors, and path normalisation.

REST: a plain ASGI layer in front of everything normalises the path and, beyond the
in-flight cap (a request with a body counts once its body has arrived), answers a fast
503 with Retry-After (header sizes and timeouts are the
server's, `aios.h1server`). gRPC: an interceptor applies the same cap (metadata size is bounded
by the server option).
"""

from __future__ import annotations

import re
from typing import Any

import grpc
import grpc.aio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aios.errors import AiosError, InvalidInput, Overloaded, error_parts
from aios.grpc_service import Handler, UnaryInterceptor, abort
from aios.rest import send_response


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


# Methods whose requests carry a body: they count against the in-flight cap only once it
# has arrived, so a body trickled in holds no slot (`server.body_timeout_s` and the
# per-address upload cap bound such uploads themselves).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RestLimits:
    """Path normalisation and the in-flight cap, before any other work is done."""

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self._app = app
        self._in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        in_flight = self._in_flight
        entered = scope["method"] not in BODY_METHODS
        try:
            scope = normalized(scope)
            if entered:
                in_flight.enter()
        except AiosError as exc:
            await send_response(send, *error_parts(exc))
            return

        async def receive_counted() -> Message:
            nonlocal entered
            message = await receive()
            if not entered and message["type"] == "http.request" and not message.get(
                    "more_body", False):
                in_flight.enter()  # Overloaded: the app answers it as it answers any error
                entered = True
            return message

        try:
            await self._app(scope, receive if entered else receive_counted, send)
        finally:
            if entered:
                in_flight.leave()


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
                await abort(context, exc)
            try:
                return await inner(request, context)
            finally:
                in_flight.leave()

        return limited
