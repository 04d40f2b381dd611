"""The REST adapter: KServe v2 routes over a `KServePlane`, errors in KServe's shape
(`aios.errors.error_parts`)."""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from aios import __version__
from aios.envelope import BATCH_PATH
from aios.errors import (
    JSON_ERROR,
    AiosError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    error_body,
    error_parts,
)
from aios.kserve import json_header_length, validate_infer_request
from aios.plane import (
    CALL_KINDS,
    MODEL_NAME,
    KServePlane,
    ModelCall,
    header_value,
    valid_model_name,
)
from aios.unsupported import EXTENSIONS, MODEL_TRACE, UNSUPPORTED, Unsupported
from aios.upstream import HttpReply

logger = logging.getLogger(__name__)

PREFIX = "/v2/models/"

_MODEL_PATH = re.compile(
    rf"^(?P<model>{MODEL_NAME})(?:/versions/(?P<version>[0-9]+))?(?P<tail>/[a-z]+)?$")


def parse_model_path(rest: str) -> tuple[str, str, str]:
    """Split ``<model>[/versions/<v>][<tail>]`` (the part after /v2/models/)."""
    if rest.endswith("/trace/setting"):
        raise MODEL_TRACE.refusal()
    match = _MODEL_PATH.match(rest)
    if match is None or (match["tail"] or "") not in CALL_KINDS or not valid_model_name(
            match["model"]):
        raise NotFound(f"no such endpoint: /v2/models/{rest}")
    return match["model"], match["version"] or "", match["tail"] or ""


def error_response(exc: AiosError) -> Response:
    """An AiosError as a Starlette response."""
    status, headers, body = error_parts(exc)
    return Response(body, status_code=status, headers=headers)


async def _aios_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AiosError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return Response(error_body(exc.detail), status_code=exc.status_code,
                    headers=exc.headers, media_type=JSON_ERROR)


async def _unexpected(_: Request, exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc)
    return Response(error_body("internal error"), status_code=500, media_type=JSON_ERROR)


async def read_body(request: Request, limit: int) -> bytes:
    """A Starlette request's body, read as `ModelCalls` reads one (413 past ``limit``)."""
    try:
        return await _receive_body(request.receive, request.headers.get("content-length"),
                                   limit)
    except ClientGone as exc:
        raise ClientDisconnect() from exc


async def _receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Read the body, refusing (413) past ``limit`` bytes without buffering beyond it."""
    if declared is not None and declared.isascii() and declared.isdigit() \
            and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(send: Send, status: int, headers: Mapping[str, str],
                        body: bytes) -> None:
    """Send a complete response (with its length: no chunking) on a plain ASGI path."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# A service that takes the gateway's envelopes of calls (`aios.envelope`): the sidecar.
BatchHandler = Callable[[bytes], Awaitable[HttpReply]]


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class ModelCalls:
    """Plain ASGI for /v2/models/...: the hot path skips Starlette's routing and
    middleware layers; everything else goes to ``app``."""

    PREFIX = PREFIX

    def __init__(self, app: ASGIApp, plane: KServePlane, max_body_bytes: int,
                 batch: BatchHandler | None = None) -> None:
        self._app = app
        self._plane = plane
        self._limit = max_body_bytes
        self._batch = batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        batch = self._batch is not None and path == BATCH_PATH
        if scope["type"] != "http" or not (path.startswith(self.PREFIX) or batch) or scope[
                "method"] not in ("GET", "POST") or (batch and scope["method"] != "POST"):
            await self._app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            if batch:
                assert self._batch is not None
                reply = await self._batch(await _receive_body(
                    receive, header_value(headers, "content-length"), self._limit))
                status, out, body = reply.status, reply.headers, reply.body
            else:
                status, out, body = await self._call(scope, path, headers, receive)
        except ClientGone:
            return
        except AiosError as exc:
            status, out, body = error_parts(exc)
        except Exception as exc:
            logger.error("unhandled error", exc_info=exc)
            status, out, body = 500, {"content-type": JSON_ERROR}, error_body("internal error")
        await send_response(send, status, out, body)

    async def _call(self, scope: Scope, path: str, headers: list[tuple[str, str]],
                    receive: Receive) -> tuple[int, Mapping[str, str], bytes]:
        model, version, tail = parse_model_path(path[len(self.PREFIX):])
        method: str = scope["method"]
        await self._plane.precheck(CALL_KINDS[tail], model, headers)
        body, infer = b"", None
        if method == "POST":
            body = await _receive_body(receive, header_value(headers, "content-length"),
                                       self._limit)
            encoding = header_value(headers, "content-encoding")
            if encoding is not None:
                # Checked and forwarded decoded: every check below reads what Triton will.
                body = decode_content(body, encoding, self._limit)
                headers = [(k, v) for k, v in headers if k != "content-encoding"]
        if tail == "/infer":
            length = json_header_length(
                header_value(headers, "inference-header-content-length"), len(body))
            infer = validate_infer_request(body, length)
        reply = await self._plane.forward_rest(
            ModelCall(model, version, tail, method, body, headers, infer))
        return reply.status, reply.headers, reply.body


# Content-Encoding → zlib's wbits: gzip framing, or the zlib framing HTTP's "deflate" means
# (raw deflate, as some clients send it, is tried when that fails).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """A request body decoded from its Content-Encoding, never beyond ``limit`` bytes
    (a zip bomb stops there: 413); InvalidInput for an encoding or data we cannot read."""
    name = encoding.strip().lower()
    if name == "identity":
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported (use gzip or "
                           "deflate)")
    for attempt in (wbits, -zlib.MAX_WBITS) if name == "deflate" else (wbits,):
        decoder = zlib.decompressobj(attempt)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            error = exc
            continue
        if len(out) > limit:
            raise PayloadTooLarge(f"request body decodes to more than {limit} bytes")
        if not decoder.eof:
            raise InvalidInput(f"request body is truncated {name} data")
        return out
    raise InvalidInput(f"request body is not valid {name} data: {error}")


def kserve_routes(plane: KServePlane, registry: CollectorRegistry,
                  server_name: str) -> list[BaseRoute]:
    """Health, server metadata (naming the server ``server_name``), /metrics, and the
    APIs not proxied (`aios.unsupported`); model calls are `ModelCalls`."""

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        ok = await plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": server_name, "version": __version__,
                             "extensions": list(EXTENSIONS)})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def repository_index(request: Request) -> Response:
        return JSONResponse(await plane.repository_index(
            [(k, v) for k, v in request.headers.items()]))

    return [
        Route("/v2/health/live", _Endpoint(live), methods=["GET"]),
        Route("/v2/health/ready", _Endpoint(ready), methods=["GET"]),
        Route("/v2", _Endpoint(server_metadata), methods=["GET"]),
        Route("/metrics", _Endpoint(metrics), methods=["GET"]),
        Route("/v2/repository/index", _Endpoint(repository_index), methods=["POST"]),
        *(Route(u.rest_path, _Endpoint(_unsupported(u)), methods=[u.rest_method])
          for u in UNSUPPORTED),
    ]


class _Endpoint:
    """A request handler as an ASGI app. Starlette tells a handler from an app by
    `inspect.isfunction`, which a function compiled by mypyc (`make wheel`) is not: handed
    over bare, it would be called as an app, with (scope, receive, send)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self._app = request_response(handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _unsupported(api: Unsupported) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(_: Request) -> Response:
        if not api.empty:
            raise api.refusal()
        # An empty registry: no regions (status), nothing to unregister (an empty body).
        return JSONResponse([]) if api.rest_path.endswith("/status") else Response(b"")

    return endpoint


def create_rest_app(
    routes: Sequence[BaseRoute],
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[Any]] | None = None,
) -> Starlette:
    """A Starlette app over ``routes`` with every error rendered as KServe JSON."""
    return Starlette(
        routes=list(routes),
        lifespan=lifespan,
        exception_handlers={
            AiosError: _aios_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
