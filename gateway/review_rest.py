"""REST adapter of the review API, under /admin/reviews."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios.errors import NotFound
from gateway.admin_rest import AdminAuth, read_json
from gateway.review import ADMIN, DECIDE, READ, ReviewApi, Reviewer

NOT_CONFIGURED = "no review store is configured (gateway.review.store_url)"


def review_routes(api: ReviewApi | None, auth: AdminAuth) -> list[BaseRoute]:
    """The /admin/reviews endpoints (404 saying so when no store is configured)."""

    async def ready(request: Request, scope: str) -> tuple[ReviewApi, Reviewer]:
        principal = await auth.principal(request.headers.get("authorization"), scope)
        if api is None:
            raise NotFound(NOT_CONFIGURED)
        return api, Reviewer.of(principal)

    async def body(request: Request) -> Any:
        return await read_json(request, optional=True)

    async def listing(request: Request) -> Response:
        reviews, who = await ready(request, READ)
        return JSONResponse(await reviews.listing(who, request.query_params))

    async def stats(request: Request) -> Response:
        reviews, _ = await ready(request, READ)
        return JSONResponse(await reviews.stats())

    async def item(request: Request) -> Response:
        reviews, who = await ready(request, READ)
        return JSONResponse(await reviews.item(who, request.path_params["id"]))

    async def gates(request: Request) -> Response:
        reviews, _ = await ready(request, READ)
        return JSONResponse(await reviews.gates(request.path_params["model"]))

    async def set_gates(request: Request) -> Response:
        reviews, who = await ready(request, ADMIN)
        return JSONResponse(await reviews.set_gates(who.subject, request.path_params["model"],
                                                    await body(request)))

    async def claim(request: Request) -> Response:
        reviews, who = await ready(request, DECIDE)
        return JSONResponse(await reviews.claim(who, request.path_params["id"],
                                                await body(request)))

    async def release(request: Request) -> Response:
        reviews, who = await ready(request, DECIDE)
        return JSONResponse(await reviews.release(who, request.path_params["id"]))

    async def decision(request: Request) -> Response:
        reviews, who = await ready(request, DECIDE)
        return JSONResponse(await reviews.decide(who, request.path_params["id"],
                                                 await body(request)))

    return [
        Route("/admin/reviews", listing, methods=["GET"]),
        Route("/admin/reviews/stats", stats, methods=["GET"]),
        Route("/admin/reviews/gates/{model}", gates, methods=["GET"]),
        Route("/admin/reviews/gates/{model}", set_gates, methods=["PUT"]),
        Route("/admin/reviews/{id}", item, methods=["GET"]),
        Route("/admin/reviews/{id}/claim", claim, methods=["POST"]),
        Route("/admin/reviews/{id}/release", release, methods=["POST"]),
        Route("/admin/reviews/{id}/decision", decision, methods=["POST"]),
    ]
