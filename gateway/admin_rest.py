"""REST adapter of the routing admin API, under /admin (scopes routes:read / routes:write)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios.errors import Forbidden, InvalidInput
from aios.rest import read_body
from gateway.admin import (
    ReplaceBody,
    ResolveBody,
    RoutingAdmin,
    ShadowBody,
    WeightsBody,
    parse,
)
from gateway.auth import Authenticator, Principal
from gateway.proposals import APPROVE_SCOPE, Proposal
from gateway.routing import ModelTable

MAX_ADMIN_BODY = 1 << 20


class AdminAuth:
    """Who may read and change routes; admin calls always need a token."""

    def __init__(self, auth: Authenticator | None) -> None:
        self._auth = auth

    async def subject(self, authorization: str | None, scope: str) -> str:
        """The caller's subject if it holds ``scope``."""
        return (await self.principal(authorization, scope)).subject

    async def principal(self, authorization: str | None, scope: str) -> Principal:
        """The caller if it holds ``scope``."""
        principal = await self.identify(authorization)
        assert self._auth is not None
        self._auth.check(principal, scope)
        return principal

    async def identify(self, authorization: str | None) -> Principal:
        """The caller, whatever its scopes."""
        if self._auth is None:
            raise Forbidden("the admin API needs auth, which is disabled")
        return await self._auth.authenticate(authorization)


async def read_json(request: Request, optional: bool = False) -> Any:
    """The request's JSON body (bounded in size); ``optional``: None for an empty one."""
    body = await read_body(request, MAX_ADMIN_BODY)
    if optional and not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc


def _limit(request: Request) -> int | None:
    raw = request.query_params.get("limit")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= 10_000:
        raise InvalidInput("limit: must be an integer between 1 and 10000")
    return int(raw)


def admin_routes(admin: RoutingAdmin, auth: AdminAuth) -> list[BaseRoute]:
    """The /admin/routes endpoints."""

    async def who(request: Request, scope: str) -> str:
        return await auth.subject(request.headers.get("authorization"), scope)

    async def whoami(request: Request) -> Response:
        """Who the token says the caller is, as the gateway verified it (the console shows
        the pages its scopes open)."""
        principal = await auth.identify(request.headers.get("authorization"))
        return JSONResponse({"subject": principal.subject, "tenant": principal.tenant,
                             "scopes": sorted(principal.scopes)})

    async def list_routes(request: Request) -> Response:
        await who(request, "routes:read")
        return JSONResponse({"routes": [admin.view(t) for t in admin.tables()]})

    async def get_route(request: Request) -> Response:
        await who(request, "routes:read")
        return JSONResponse(admin.view(admin.get(request.path_params["model"])))

    def change(body_type: type[BaseModel], apply: Callable[[str, Any, str],
                                                           Awaitable[ModelTable | Proposal]],
               ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            subject = await who(request, "routes:write")
            body = parse(body_type, await read_json(request))
            result = await apply(request.path_params["model"], body, subject)
            if isinstance(result, Proposal):  # a four-eyes model's: it waits for approval
                return JSONResponse({"proposal": result.to_json(), "note": (
                    f"'{result.model}' needs a second subject's approval "
                    f"({APPROVE_SCOPE}): POST /admin/proposals/{result.id}/approve")},
                    status_code=202)
            return JSONResponse(admin.view(result))

        return endpoint

    replace = change(ReplaceBody, admin.replace)
    weights = change(WeightsBody, admin.set_weights)
    shadow = change(ShadowBody, admin.set_shadow)

    async def proposals(request: Request) -> Response:
        await who(request, "routes:read")
        found = await admin.proposals(request.query_params.get("model"),
                                      request.query_params.get("state"))
        return JSONResponse({"proposals": [p.to_json() for p in found]})

    async def approve(request: Request) -> Response:
        subject = await who(request, APPROVE_SCOPE)
        body = parse(ResolveBody, await read_json(request, optional=True) or {})
        proposal, table = await admin.approve(request.path_params["id"], subject, body.reason)
        return JSONResponse({"proposal": proposal.to_json(), "route": admin.view(table)})

    async def reject(request: Request) -> Response:
        subject = await who(request, APPROVE_SCOPE)
        body = parse(ResolveBody, await read_json(request, optional=True) or {})
        proposal = await admin.reject(request.path_params["id"], subject, body.reason)
        return JSONResponse({"proposal": proposal.to_json()})

    async def rollback(request: Request) -> Response:
        subject = await who(request, "routes:write")
        body = parse(ResolveBody, await read_json(request, optional=True) or {})
        return JSONResponse(admin.view(await admin.rollback(request.path_params["model"],
                                                            subject, body.reason)))

    async def history(request: Request) -> Response:
        await who(request, "routes:read")
        changes = await admin.history(request.path_params.get("model"), _limit(request))
        return JSONResponse({"changes": [asdict(c) for c in changes]})

    return [
        Route("/admin/whoami", whoami, methods=["GET"]),
        Route("/admin/routes", list_routes, methods=["GET"]),
        Route("/admin/history", history, methods=["GET"]),
        Route("/admin/routes/{model}", get_route, methods=["GET"]),
        Route("/admin/routes/{model}", replace, methods=["PUT"]),
        Route("/admin/routes/{model}/weights", weights, methods=["PUT"]),
        Route("/admin/routes/{model}/shadow", shadow, methods=["PUT"]),
        Route("/admin/routes/{model}/history", history, methods=["GET"]),
        Route("/admin/routes/{model}/rollback", rollback, methods=["POST"]),
        Route("/admin/proposals", proposals, methods=["GET"]),
        Route("/admin/proposals/{id}/approve", approve, methods=["POST"]),
        Route("/admin/proposals/{id}/reject", reject, methods=["POST"]),
    ]
