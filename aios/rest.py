"""The REST adapter: KServe v2 routes over a `KServePlane`, errors in KServe's shape.

This is one of the two places where `AiosError` becomes a response (the other is the
gRPC interceptor in `aios.grpc_service`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios import __version__
from aios.errors import AiosError, NotFound, PayloadTooLarge
from aios.kserve import error_body, json_header_length, validate_infer_request
from aios.plane import CALL_KINDS, KServePlane, ModelCall

logger = logging.getLogger(__name__)

_MODEL_PATH = re.compile(
    r"^(?P<model>[A-Za-z0-9_.\-]+)(?:/versions/(?P<version>[0-9]+))?(?P<tail>/[a-z]+)?$")
JSON_ERROR = "application/json"


def parse_model_path(rest: str) -> tuple[str, str, str]:
    """Split ``<model>[/versions/<v>][<tail>]`` (the part after /v2/models/)."""
    match = _MODEL_PATH.match(rest)
    if match is None or (match["tail"] or "") not in CALL_KINDS or match["model"] in (".", ".."):
        raise NotFound(f"no such endpoint: /v2/models/{rest}")
    return match["model"], match["version"] or "", match["tail"] or ""


def error_response(exc: AiosError) -> Response:
    """The REST rendering of an AiosError."""
    return Response(error_body(exc.message), status_code=exc.http_status,
                    headers=exc.headers(), media_type=JSON_ERROR)


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
    """Read the body, refusing (413) past ``limit`` bytes without buffering beyond it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def kserve_routes(plane: KServePlane, max_body_bytes: int,
                  registry: CollectorRegistry) -> list[BaseRoute]:
    """The KServe v2 REST surface (health, server metadata, model calls) and /metrics."""

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        ok = await plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": plane.server_name, "version": __version__,
                             "extensions": ["binary_tensor_data"]})

    async def model_call(request: Request) -> Response:
        model, version, tail = parse_model_path(request.path_params["rest"])
        body = await read_body(request, max_body_bytes) if request.method == "POST" else b""
        batch = 1
        if tail == "/infer":
            header = request.headers.get("inference-header-content-length")
            batch = validate_infer_request(body, json_header_length(header, len(body)))
        call = ModelCall(model, version, tail, request.method, body, request.headers.items(),
                         batch)
        reply = await plane.forward_rest(call)
        return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/{rest:path}", model_call, methods=["GET", "POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


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
