"""REST adapter of the audit API, under /admin/audit (scope audit:read)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios.errors import NotFound
from gateway.admin_rest import AdminAuth
from gateway.audit import AuditReader, parse_search

SCOPE = "audit:read"


def audit_routes(reader: AuditReader | None, auth: AdminAuth) -> list[BaseRoute]:
    """The /admin/audit endpoints (answering 404 when no audit log is configured)."""

    async def ready(request: Request) -> tuple[AuditReader, str]:
        who = await auth.subject(request.headers.get("authorization"), SCOPE)
        if reader is None:
            raise NotFound("no audit logs are configured (gateway.audit.logs)")
        return reader, who

    async def decision(request: Request) -> Response:
        audit, who = await ready(request)
        return JSONResponse(await audit.decision(who, request.path_params["id"]))

    async def proof(request: Request) -> Response:
        audit, who = await ready(request)
        return JSONResponse(await audit.proof(who, request.path_params["id"]))

    async def search(request: Request) -> Response:
        audit, who = await ready(request)
        return JSONResponse(await audit.search(who, parse_search(request.query_params)))

    async def checkpoints(request: Request) -> Response:
        audit, who = await ready(request)
        return JSONResponse(await audit.checkpoints(who))

    return [
        Route("/admin/audit/decisions", search, methods=["GET"]),
        Route("/admin/audit/decisions/{id}", decision, methods=["GET"]),
        Route("/admin/audit/decisions/{id}/proof", proof, methods=["GET"]),
        Route("/admin/audit/checkpoints", checkpoints, methods=["GET"]),
    ]
