"""Identity: JWT bearer tokens (pyjwt) and per-model scopes. Deny unless a scope allows.

Keys: an HS256 shared secret and/or RS256/ES256 public keys from a JWKS file or URL.
Each key allows only its own family of algorithms, so a token can never be checked as
HS256 against a public key, and ``none`` is never accepted. Verified tokens are cached
(bounded, until they expire) so the hot path does not re-check signatures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt
from prometheus_client import CollectorRegistry, Counter

from aios.config import AuthSettings, load_auth
from aios.errors import Forbidden, Unauthenticated

logger = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256"})
PUBLIC_KEY_ALGORITHMS = {"RSA": frozenset({"RS256"}), "EC": frozenset({"ES256"})}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, for which tenant, allowed to do what, until when."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    expires_at: float | None

    def allows(self, scope: str) -> bool:
        """Whether one of the token's scopes grants ``scope`` (``infer:*`` grants any model)."""
        if scope in self.scopes:
            return True
        family = scope.split(":", 1)[0]
        return f"{family}:*" in self.scopes


def authorize(principal: Principal, scope: str) -> None:
    """Raise Forbidden unless ``principal`` holds ``scope``."""
    if not principal.allows(scope):
        raise Forbidden(f"token lacks the scope '{scope}'")


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'")
    return token.strip()


class TokenVerifier(Protocol):
    """Turns a bearer token into a Principal, or raises Unauthenticated."""

    async def verify(self, token: str) -> Principal:
        """Verify ``token``."""
        ...


class KeySet(Protocol):
    """Public keys by ``kid``."""

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key with id ``kid`` (None: the set's only key), refreshing the set if it is
        unknown (rate-limited)."""
        ...


class JwksKeys:
    """Public keys from a JWKS file or URL, cached; an unknown kid refreshes at most once
    per interval, so a flood of tokens with made-up kids cannot cause a refresh storm."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self._settings = settings
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self) -> Any:
        if self._settings.jwks_file is not None:
            return json.loads(self._settings.jwks_file.read_text())
        assert self._settings.jwks_url is not None
        timeout = aiohttp.ClientTimeout(total=self._settings.jwks_fetch_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(self._settings.jwks_url) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def _refresh(self) -> None:
        try:
            doc = await self._fetch()
            entries = doc.get("keys") if isinstance(doc, dict) else None
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise ValueError("the JWKS document has no list of 'keys'")
            keys = {}
            for entry in entries:
                key = jwt.PyJWK.from_dict(entry)
                if key.key_id and key.key_type in PUBLIC_KEY_ALGORITHMS:
                    keys[key.key_id] = key
            self._keys = keys
        except (OSError, ValueError, aiohttp.ClientError, jwt.PyJWKError) as exc:
            # Keep the keys we had: a JWKS outage must not log everyone out.
            logger.warning("cannot refresh JWKS: %s", exc)
        finally:
            self._loaded_at = self._clock()

    def _needs_refresh(self, kid: str | None) -> bool:
        if self._loaded_at is None:
            return True
        age = self._clock() - self._loaded_at
        if age >= self._settings.jwks_cache_ttl_s:
            return True
        return kid not in self._keys and age >= self._settings.jwks_refresh_interval_s

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key with id ``kid``, refreshing the set when stale or when kid is unknown;
        None: the set's key if it holds just one (OpenID Connect Core 10.1 lets a token
        name no kid then)."""
        if self._needs_refresh(kid):
            async with self._lock:
                # Another task may have refreshed while this one waited.
                if self._needs_refresh(kid):
                    await self._refresh()
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


_FAILURES: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidIssuedAtError, "token issued-at time is invalid"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm is not allowed"),
    (jwt.DecodeError, "token is malformed"),
)


def _describe(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the '{exc.claim}' claim"
    for kind, message in _FAILURES:
        if isinstance(exc, kind):
            return message
    return "token is invalid"


class JwtVerifier:
    """Verifies JWTs against the configured keys, with a bounded cache of verified tokens."""

    def __init__(self, settings: AuthSettings, keys: KeySet | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        required = ["sub", "iat"] + (["exp"] if settings.require_exp else [])
        self._options: jwt.types.Options = {"require": required}

    async def verify(self, token: str) -> Principal:
        """The Principal of a valid token; Unauthenticated saying why otherwise."""
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at is None or cached.expires_at + self._settings.leeway_s > \
                    self._clock():
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
        principal = await self._verify(token)
        if self._settings.token_cache_size:
            self._cache[token] = principal
            if len(self._cache) > self._settings.token_cache_size:
                self._cache.popitem(last=False)
        return principal

    async def _signing_key(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise Unauthenticated("token is malformed") from exc
        alg = header.get("alg")
        if alg in HMAC_ALGORITHMS and self._settings.hs256_secret:
            return self._settings.hs256_secret, alg
        if self._keys is not None and isinstance(alg, str) and any(
                alg in algs for algs in PUBLIC_KEY_ALGORITHMS.values()):
            kid = header.get("kid")
            if kid is not None and (not isinstance(kid, str) or not kid):
                raise Unauthenticated("token key id ('kid') must be a non-empty string")
            key = await self._keys.key(kid)
            if key is None:
                raise Unauthenticated(f"token signing key '{kid}' is unknown" if kid else
                                      "token has no key id ('kid') and the key set holds "
                                      "more than one key")
            if alg not in PUBLIC_KEY_ALGORITHMS.get(key.key_type or "", frozenset()):
                raise Unauthenticated(f"token algorithm '{alg}' does not match its key")
            return key.key, alg
        raise Unauthenticated(f"token algorithm '{alg}' is not allowed")

    async def _verify(self, token: str) -> Principal:
        key, alg = await self._signing_key(token)
        s = self._settings
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=s.audience,
                                issuer=s.issuer, leeway=s.leeway_s, options=self._options)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(_describe(exc)) from exc
        tenant = claims.get(s.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"token lacks the '{s.tenant_claim}' claim")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise Unauthenticated("token 'scope' must be a space-separated string")
        exp = claims.get("exp")
        # RFC 6749 3.3: scopes are separated by U+0020 alone; any other character,
        # other white space included, is part of an (opaque) scope.
        scopes = frozenset(part for part in scope.split(" ") if part)
        return Principal(str(claims["sub"]), tenant, scopes,
                         float(exp) if isinstance(exp, int | float) else None)


class Authenticator:
    """Bearer token → Principal, counting failures by reason."""

    def __init__(self, verifier: TokenVerifier, registry: CollectorRegistry) -> None:
        self._verifier = verifier
        self._failures = Counter("aios_gateway_auth_failures", "Requests refused by auth",
                                 ("reason",), registry=registry)

    async def authenticate(self, authorization: str | None) -> Principal:
        """Verify the Authorization value; Unauthenticated (counted) if it does not hold."""
        try:
            return await self._verifier.verify(bearer_token(authorization))
        except Unauthenticated as exc:
            # The reason without quoted parts (kids, algorithms): bounded label values.
            self._failures.labels(exc.message.split("'")[0].strip()).inc()
            raise

    def check(self, principal: Principal, scope: str) -> None:
        """Forbidden (counted) unless ``principal`` holds ``scope``."""
        try:
            authorize(principal, scope)
        except Forbidden:
            self._failures.labels("missing scope").inc()
            raise


def build_authenticator(settings: AuthSettings, registry: CollectorRegistry) -> Authenticator:
    """The authenticator for ``settings``: HS256 secret and/or JWKS keys; ConfigError
    when they are unusable (read here, once, at start)."""
    settings = load_auth(settings)
    keys = JwksKeys(settings) if settings.jwks_file or settings.jwks_url else None
    return Authenticator(JwtVerifier(settings, keys), registry)
