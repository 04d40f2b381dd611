"""Console sign-in at an OpenID provider: the authorization-code flow with PKCE.

The page makes the PKCE verifier and the state, keeps both in its tab and sends the
person to the provider's authorization endpoint (read from the provider's discovery
document, served to the page by `GET /console/oidc`). The provider sends the person back
to /console/ with a code; the page checks the state and posts the code and its verifier
to `POST /console/oidc/token`, and the gateway exchanges them at the token endpoint (the
page's policy lets it talk to this gateway only, and a confidential client's secret
never reaches the browser). The token the provider gives is checked by the gateway's
own verifier before the page gets it, so a sign-in the admin API would refuse fails here,
saying why.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from aios.config import ConfigError, OidcSettings
from aios.errors import InvalidInput, Unauthenticated, UpstreamTimeout, UpstreamUnavailable
from gateway.auth import Authenticator, Principal

DISCOVERY_PATH = "/.well-known/openid-configuration"
# A discovery document is read again after this long (providers rotate endpoints rarely).
DISCOVERY_TTL_S = 3600.0
MAX_PROVIDER_ANSWER = 256 * 1024
# RFC 7636 4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
MAX_CODE_CHARS = 2048
CALLBACK_PATH = "/console/"


def check_exchange(body: Any, host: str) -> tuple[str, str, str]:
    """The code, verifier and redirect URI of a token request from the page, checked: the
    redirect URI must be this gateway's console page (the host the request came to)."""
    if not isinstance(body, dict):
        raise InvalidInput("body: a JSON object with code, code_verifier and redirect_uri")
    code, verifier, redirect = (body.get(k) for k in ("code", "code_verifier", "redirect_uri"))
    if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_CHARS:
        raise InvalidInput(f"code: the provider's code, 1 to {MAX_CODE_CHARS} characters")
    if not isinstance(verifier, str) or not VERIFIER.fullmatch(verifier):
        raise InvalidInput("code_verifier: 43 to 128 characters of A-Z a-z 0-9 - . _ ~ "
                           "(RFC 7636)")
    if not isinstance(redirect, str) or len(redirect) > MAX_CODE_CHARS:
        raise InvalidInput("redirect_uri: this console's address")
    parts = urlsplit(redirect)
    if parts.scheme not in ("http", "https") or parts.netloc != host \
            or parts.path != CALLBACK_PATH or parts.query or parts.fragment:
        raise InvalidInput(f"redirect_uri: must be this console, http(s)://{host}"
                           f"{CALLBACK_PATH}, got {redirect!r}")
    return code, verifier, redirect


class OidcLogin:
    """The provider's endpoints (discovered, cached) and the code exchange."""

    def __init__(self, settings: OidcSettings, client_secret: str | None,
                 session: aiohttp.ClientSession, auth: Authenticator) -> None:
        self._settings = settings
        self._secret = client_secret
        self._session = session
        self._auth = auth
        self._provider: dict[str, Any] | None = None
        self._read_at = 0.0

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: OidcSettings, auth: Authenticator) -> AsyncIterator[OidcLogin]:
        secret = None
        if settings.client_secret_file is not None:
            try:
                secret = settings.client_secret_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"gateway.console.oidc.client_secret_file: cannot read "
                                  f"{settings.client_secret_file}: {exc.strerror}") from exc
            if not secret:
                raise ConfigError("gateway.console.oidc.client_secret_file: the file is empty")
        timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield cls(settings, secret, session, auth)

    async def page_config(self) -> dict[str, Any]:
        """What the page needs to send a person to the provider."""
        provider = await self._discovered()
        return {"enabled": True, "issuer": self._settings.issuer,
                "authorization_endpoint": provider["authorization_endpoint"],
                "client_id": self._settings.client_id, "scope": self._settings.scope}

    async def exchange(self, body: Any, host: str) -> dict[str, Any]:
        """The provider's token for the page's code, once this gateway accepts it."""
        code, verifier, redirect = check_exchange(body, host)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                "code_verifier": verifier}
        auth = None
        if self._secret is None:
            form["client_id"] = self._settings.client_id
        else:
            auth = aiohttp.BasicAuth(self._settings.client_id, self._secret)
        endpoint = (await self._discovered())["token_endpoint"]
        status, answer = await self._call("POST", endpoint, data=form, auth=auth)
        if status != 200:
            error = answer.get("error", f"HTTP {status}")
            said = answer.get("error_description")
            raise Unauthenticated(f"the identity provider refused the sign-in: {error}"
                                  + (f" ({said})" if isinstance(said, str) else ""))
        token = answer.get(self._settings.token)
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(f"the identity provider's answer has no "
                                      f"{self._settings.token} (gateway.console.oidc.token)")
        principal = await self._accepted(token)
        return {"token": token, "subject": principal.subject, "tenant": principal.tenant,
                "scopes": sorted(principal.scopes), "expires_at": principal.expires_at}

    async def _accepted(self, token: str) -> Principal:
        try:
            return await self._auth.authenticate(f"Bearer {token}")
        except Unauthenticated as exc:
            hint = " (if the provider's access tokens are not JWTs for this gateway, set " \
                   "gateway.console.oidc.token: id_token)" \
                   if self._settings.token == "access_token" else ""
            raise Unauthenticated(f"signed in at the identity provider, but this gateway "
                                  f"does not accept its {self._settings.token}: "
                                  f"{exc.message}{hint}") from exc

    async def _discovered(self) -> dict[str, Any]:
        if self._provider is None or time.monotonic() - self._read_at > DISCOVERY_TTL_S:
            url = self._settings.issuer.rstrip("/") + DISCOVERY_PATH
            status, doc = await self._call("GET", url)
            endpoints = {k: doc.get(k) for k in ("authorization_endpoint", "token_endpoint")}
            if status != 200 or not all(isinstance(v, str) and v.startswith(("http://", "https://"))
                                        for v in endpoints.values()):
                raise UpstreamUnavailable(f"the identity provider's discovery document at "
                                          f"{url} has no authorization and token endpoints "
                                          f"(HTTP {status})")
            self._provider, self._read_at = endpoints, time.monotonic()
        return self._provider

    async def _call(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Status and JSON object of a call to the provider (errors translated here)."""
        try:
            async with self._session.request(method, url, **kwargs) as resp:
                raw = await resp.content.read(MAX_PROVIDER_ANSWER + 1)
                status = resp.status
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the identity provider at {url} did not answer within "
                                  f"{self._settings.timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"the identity provider at {url} could not be "
                                      f"reached: {exc}") from exc
        try:
            doc = orjson.loads(raw) if len(raw) <= MAX_PROVIDER_ANSWER else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamUnavailable(f"the identity provider at {url} answered HTTP {status} "
                                      "without a JSON object")
        return status, doc
