"""REST adapter of replays, under /admin/replays (`gateway.replay`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios.errors import Forbidden
from gateway.admin_rest import AdminAuth, read_json
from gateway.replay import Replays

RUN, READ = "replay:run", "audit:read"


def replay_routes(replays: Replays, auth: AdminAuth) -> list[BaseRoute]:
    """Start a replay (202, then poll it), list them, read one."""

    async def reader(request: Request) -> None:
        principal = await auth.identify(request.headers.get("authorization"))
        if not (principal.allows(RUN) or principal.allows(READ)):
            raise Forbidden(f"token lacks the scope '{RUN}' (or '{READ}')")

    async def start(request: Request) -> Response:
        who = await auth.subject(request.headers.get("authorization"), RUN)
        return JSONResponse(replays.start(who, await read_json(request)), status_code=202)

    async def listing(request: Request) -> Response:
        await reader(request)
        return JSONResponse(replays.jobs())

    async def one(request: Request) -> Response:
        await reader(request)
        return JSONResponse(replays.job(request.path_params["id"]))

    return [Route("/admin/replays", start, methods=["POST"]),
            Route("/admin/replays", listing, methods=["GET"]),
            Route("/admin/replays/{id}", one, methods=["GET"])]
