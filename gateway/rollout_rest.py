"""REST adapter of governed rollouts, under /admin/rollouts (routes:read to read,
routes:write to start, pause, resume, abort and promote, routes:approve to approve or
reject a four-eyes model's start or promote)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aios.errors import InvalidInput
from gateway.admin import ResolveBody, parse
from gateway.admin_rest import AdminAuth, read_json
from gateway.proposals import APPROVE_SCOPE
from gateway.rollout import STATES, Plan
from gateway.rollouts import Rollouts, view

ACTION_SCOPES = {"pause": "routes:write", "resume": "routes:write", "abort": "routes:write",
                 "promote": "routes:write", "approve": APPROVE_SCOPE, "reject": APPROVE_SCOPE}


def rollout_routes(rollouts: Rollouts, auth: AdminAuth) -> list[BaseRoute]:
    async def who(request: Request, scope: str) -> str:
        return await auth.subject(request.headers.get("authorization"), scope)

    async def listing(request: Request) -> Response:
        await who(request, "routes:read")
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise InvalidInput(f"state: one of {', '.join(STATES)}, got {state!r}")
        found = await rollouts.list(request.query_params.get("model"))
        return JSONResponse({"rollouts": [view(r) for r in found
                                          if state is None or r.state == state]})

    async def current(request: Request) -> Response:
        await who(request, "routes:read")
        # Which replica answered: beside `driver`, it tells who drives the rollout.
        return JSONResponse({**view(await rollouts.current(request.path_params["model"])),
                             "answered_by": rollouts.replica})

    async def start(request: Request) -> Response:
        subject = await who(request, "routes:write")
        plan = parse(Plan, await read_json(request))
        rollout = await rollouts.start(request.path_params["model"], plan, subject)
        if rollout.state == "awaiting_approval":
            return JSONResponse({**view(rollout), "note": (
                f"'{rollout.model}' needs a second subject's approval ({APPROVE_SCOPE}): "
                f"POST /admin/rollouts/{rollout.model}/approve")}, status_code=202)
        return JSONResponse(view(rollout), status_code=201)

    async def act(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTION_SCOPES:
            raise InvalidInput(f"action: one of {', '.join(ACTION_SCOPES)}, got {action!r}")
        subject = await who(request, ACTION_SCOPES[action])
        body = parse(ResolveBody, await read_json(request, optional=True) or {})
        return JSONResponse(view(await rollouts.act(request.path_params["model"], action,
                                                    subject, body.reason)))

    return [
        Route("/admin/rollouts", listing, methods=["GET"]),
        Route("/admin/rollouts/{model}", current, methods=["GET"]),
        Route("/admin/rollouts/{model}", start, methods=["POST"]),
        Route("/admin/rollouts/{model}/{action}", act, methods=["POST"]),
    ]
