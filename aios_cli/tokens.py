"""Mint development tokens (HS256 with the configured shared secret)."""

from __future__ import annotations

import time

import jwt

from aios.config import AuthSettings, ConfigError, load_auth

DEV_TOKEN_TTL_S = 24 * 3600


def mint_token(auth: AuthSettings, subject: str, tenant: str, scopes: str,
               ttl_s: int = DEV_TOKEN_TTL_S, now: float | None = None) -> str:
    """A signed JWT for ``subject`` of ``tenant`` with space-separated ``scopes``;
    ConfigError when no HS256 secret is configured."""
    auth = load_auth(auth)
    if auth.hs256_secret is None:
        raise ConfigError("gateway.auth.hs256_secret_file: not set, so there is no key to "
                          "sign development tokens with")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": auth.issuer, "aud": auth.audience, "sub": subject,
        auth.tenant_claim: tenant, "scope": scopes,
        "iat": issued, "nbf": issued, "exp": issued + ttl_s,
    }
    return jwt.encode(claims, auth.hs256_secret, algorithm="HS256")
