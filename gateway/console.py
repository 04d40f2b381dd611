"""The console: the static page in `gateway/console/` (plain JavaScript over the admin
API, bundled here: nothing is loaded from elsewhere), served under /console, and the live
health figures it polls (`gateway.health`).

The files hold no data and need no token; every figure on the page comes from the admin
API, which checks the token's scopes on each call. The headers keep the page from being
framed (clickjacking), from running any script but its own (XSS), and from leaking its
address; the token is sent as a header, never a cookie, so another site cannot make the
browser act with it (CSRF).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from aios.errors import NotFound
from gateway.admin_rest import AdminAuth, read_json
from gateway.health import HealthReader
from gateway.oidc import OidcLogin

ASSETS = Path(__file__).parent / "console"
TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' blob: data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def console_routes(health: HealthReader, auth: AdminAuth,
                   oidc: OidcLogin | None) -> list[BaseRoute]:
    """/console/ and its files (read once, at start), the live figures its health page
    polls (/admin/health, scope routes:read), and sign-in at an OpenID provider when one
    is configured (`gateway.console.oidc`)."""
    files = {name: (ASSETS / name).read_bytes() for name in TYPES}

    async def figures(request: Request) -> Response:
        await auth.subject(request.headers.get("authorization"), "routes:read")
        return JSONResponse(await health.health())

    async def asset(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        if name not in files:
            raise NotFound(f"no console file {name!r}")
        return Response(files[name], headers={"content-type": TYPES[name], **SECURITY_HEADERS})

    async def sign_in_config(_: Request) -> Response:
        doc = {"enabled": False} if oidc is None else await oidc.page_config()
        return JSONResponse(doc, headers=SECURITY_HEADERS)

    async def sign_in_token(request: Request) -> Response:
        if oidc is None:
            raise NotFound("this gateway has no OpenID provider (gateway.console.oidc)")
        answer = await oidc.exchange(await read_json(request), request.headers.get("host", ""))
        return JSONResponse(answer, headers=SECURITY_HEADERS)

    async def to_page(_: Request) -> Response:
        return RedirectResponse("/console/", headers=SECURITY_HEADERS)

    return [Route("/admin/health", figures, methods=["GET"]),
            Route("/console", to_page, methods=["GET"]),
            Route("/console/oidc", sign_in_config, methods=["GET"]),
            Route("/console/oidc/token", sign_in_token, methods=["POST"]),
            Route("/console/", asset, methods=["GET"]),
            Route("/console/{name}", asset, methods=["GET"])]
