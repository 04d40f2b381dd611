"""JWT verification: the attack table, key families, JWKS rotation without refresh storms."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from aios.config import AuthSettings
from aios.errors import Forbidden, Unauthenticated
from gateway.auth import JwksKeys, JwtVerifier, Principal, authorize, bearer_token
from tests.helpers import TEST_HS256_SECRET

# pyjwt checks exp/nbf/iat against the real clock.
# Tables are built at import; TTL keeps their tokens valid for any suite's length.
NOW = int(time.time())
TTL = 6 * 3600
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROTATED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    doc: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    doc["kid"] = kid
    return doc


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": "aios-dev", "aud": "aios-gateway", "sub": "alice", "tenant": "acme",
            "scope": "infer:claims_risk routes:read", "iat": NOW, "nbf": NOW, "exp": NOW + TTL}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(payload: dict[str, Any], secret: bytes, **header: Any) -> str:
    """Sign by hand: pyjwt refuses a PEM public key as an HMAC secret, attackers don't."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def unsigned(payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}." \
           f"{b64(json.dumps(payload).encode())}."


def hs(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, TEST_HS256_SECRET, algorithm="HS256")


def rs(payload: dict[str, Any], kid: str = "rsa-1", key: Any = RSA_KEY) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def es(payload: dict[str, Any], kid: str = "ec-1") -> str:
    return jwt.encode(payload, EC_KEY, algorithm="ES256", headers={"kid": kid})


def tamper_payload(token: str) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64(json.dumps(claims(tenant='other')).encode())}.{sig}"


def tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    return f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"


RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]}))
    return path


def verifier(jwks: Path | None = None, **settings: Any) -> JwtVerifier:
    auth = AuthSettings(jwks_file=jwks, **{"hs256_secret": TEST_HS256_SECRET, **settings})
    return JwtVerifier(auth, JwksKeys(auth) if jwks else None, clock=lambda: NOW + 1)


ATTACKS = {
    "alg none": (unsigned(claims()), "token algorithm 'none' is not allowed"),
    "HS256 signed with the RSA public key": (
        forge_hs256(claims(), RSA_PUBLIC_PEM, kid="rsa-1"), "token signature is invalid"),
    "expired": (hs(claims(exp=NOW - 120)), "token expired"),
    "not yet valid": (hs(claims(nbf=NOW + TTL, exp=NOW + 2 * TTL)), "token not yet valid"),
    "wrong issuer": (hs(claims(iss="evil")), "token issuer is not accepted"),
    "wrong audience": (hs(claims(aud="other-service")), "token audience is not accepted"),
    "tampered payload": (tamper_payload(rs(claims())), "token signature is invalid"),
    "tampered signature": (tamper_signature(es(claims())), "token signature is invalid"),
    "unknown kid": (rs(claims(), kid="nope"), "token signing key 'nope' is unknown"),
    "no kid, two keys in the set": (jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
                                    "token has no key id ('kid') and the key set holds "
                                    "more than one key"),
    "empty kid": (rs(claims(), kid=""), "token key id ('kid') must be a non-empty string"),
    "missing exp": (hs(claims(exp=None)), "token lacks the 'exp' claim"),
    "missing tenant": (hs(claims(tenant=None)), "token lacks the 'tenant' claim"),
    "garbage": ("not.a.token", "token is malformed"),
    "two segments": ("abc.def", "token is malformed"),
    "EC token naming an RSA key": (es(claims(), kid="rsa-1"),
                                   "token algorithm 'ES256' does not match its key"),
    "RS384 not allowed": (jwt.encode(claims(), RSA_KEY, algorithm="RS384",
                                     headers={"kid": "rsa-1"}),
                          "token algorithm 'RS384' is not allowed"),
}


@pytest.mark.parametrize(("token", "reason"), ATTACKS.values(), ids=ATTACKS.keys())
async def test_attacks_are_rejected_with_the_reason(jwks_file: Path, token: str,
                                                    reason: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        await verifier(jwks_file).verify(token)
    assert info.value.message.startswith(reason), info.value.message
    assert info.value.http_status == 401
    assert "BEGIN" not in info.value.message and TEST_HS256_SECRET not in info.value.message


async def test_hs256_refused_when_only_public_keys_are_configured(jwks_file: Path) -> None:
    with pytest.raises(Unauthenticated, match="token algorithm 'HS256' is not allowed"):
        await verifier(jwks_file, hs256_secret=None).verify(
            forge_hs256(claims(), RSA_PUBLIC_PEM, kid="rsa-1"))


@pytest.mark.parametrize("token", [hs(claims()), rs(claims()), es(claims())],
                         ids=["HS256", "RS256", "ES256"])
async def test_valid_tokens_give_the_principal(jwks_file: Path, token: str) -> None:
    principal = await verifier(jwks_file).verify(token)
    assert principal == Principal("alice", "acme",
                                  frozenset({"infer:claims_risk", "routes:read"}), NOW + TTL)


async def test_a_token_without_kid_takes_a_one_key_set_s_key(tmp_path: Path) -> None:
    # OpenID Connect Core 10.1: with one key in the set, a token need not name it.
    path = tmp_path / "one-key.json"
    path.write_text(json.dumps({"keys": [jwk(RSA_KEY, "rsa-1")]}))
    unnamed = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert (await verifier(path).verify(unnamed)).subject == "alice"
    with pytest.raises(Unauthenticated, match="token signature is invalid"):
        await verifier(path).verify(jwt.encode(claims(), ROTATED_KEY, algorithm="RS256"))


async def test_leeway_admits_small_clock_skew() -> None:
    principal = await verifier(leeway_s=30).verify(hs(claims(nbf=NOW + 20)))
    assert principal.subject == "alice"


async def test_exp_optional_when_configured() -> None:
    principal = await verifier(require_exp=False).verify(hs(claims(exp=None)))
    assert principal.expires_at is None


@pytest.mark.parametrize(("scopes", "scope", "allowed"), [
    ("infer:claims_risk", "infer:claims_risk", True),
    ("infer:*", "infer:claims_risk", True),
    ("infer:fraud", "infer:claims_risk", False),
    ("routes:read", "infer:claims_risk", False),
    ("routes:*", "routes:write", True),
    ("", "infer:claims_risk", False),
    ("infer:claims_risk_v2", "infer:claims_risk", False),
])
def test_scopes(scopes: str, scope: str, allowed: bool) -> None:
    principal = Principal("a", "t", frozenset(scopes.split()), None)
    if allowed:
        authorize(principal, scope)
    else:
        with pytest.raises(Forbidden, match=f"token lacks the scope '{scope}'"):
            authorize(principal, scope)


@pytest.mark.parametrize(("scope", "scopes"), [
    ("infer:a routes:read", {"infer:a", "routes:read"}),
    ("infer:a  routes:read ", {"infer:a", "routes:read"}),
    ("infer:a\u00a0routes:read", {"infer:a\u00a0routes:read"}),
    ("infer:a\troutes:read", {"infer:a\troutes:read"}),
    ("infer:a\nroutes:read", {"infer:a\nroutes:read"}),
    ("infer:a\u2003routes:read", {"infer:a\u2003routes:read"}),
], ids=["space", "spaces", "nbsp", "tab", "newline", "em space"])
async def test_scopes_are_split_on_spaces_only(scope: str, scopes: set[str]) -> None:
    principal = await verifier().verify(hs(claims(scope=scope)))
    assert principal.scopes == scopes
    assert principal.allows("routes:read") == ("routes:read" in scopes)


@pytest.mark.parametrize(("value", "error"), [
    (None, "missing bearer token"),
    ("", "missing bearer token"),
    ("Basic dXNlcjpwYXNz", "authorization must be 'Bearer <token>'"),
    ("Bearer ", "authorization must be 'Bearer <token>'"),
])
def test_bearer_token_parsing(value: str | None, error: str) -> None:
    with pytest.raises(Unauthenticated, match=error):
        bearer_token(value)
    assert bearer_token("bearer abc") == "abc"


class CountingKeys:
    """One real RSA key, counting how often a signature check asks for it: the cache's
    savings seen from outside the verifier (which `make wheel` compiles, so a test can no
    longer subclass it)."""

    def __init__(self) -> None:
        self.asked = 0
        self._key = jwt.PyJWK(jwk(RSA_KEY, "rsa-1"))

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        self.asked += 1
        return self._key if kid == "rsa-1" else None


async def test_cache_serves_until_expiry_and_is_bounded() -> None:
    start = int(time.time())
    now = [float(start)]
    keys = CountingKeys()
    v = JwtVerifier(AuthSettings(token_cache_size=2, leeway_s=0), keys, clock=lambda: now[0])
    token = rs(claims(iat=start, nbf=start, exp=start + 10))
    for _ in range(5):
        assert (await v.verify(token)).subject == "alice"
    assert keys.asked == 1
    now[0] = start + 11  # past exp by our clock: the cached entry is not served
    await v.verify(token)  # (checked again: pyjwt's own clock still finds it valid)
    assert keys.asked == 2
    others = [rs(claims(sub=f"user{i}")) for i in range(2)]
    for other in others:
        await v.verify(other)
    await v.verify(token)  # evicted by the two newer entries: checked again
    assert keys.asked == 5


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A real JWKS endpoint on loopback whose key set the test can rotate."""
    state: dict[str, Any] = {"keys": [jwk(RSA_KEY, "rsa-1")], "hits": 0}

    async def serve(_: web.Request) -> web.Response:
        state["hits"] += 1
        return web.json_response({"keys": state["keys"]})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/jwks.json", state
    await runner.cleanup()


async def test_jwks_rotation_and_no_refresh_storm(
        jwks_server: tuple[str, dict[str, Any]]) -> None:
    url, state = jwks_server
    clock = [0.0]
    auth = AuthSettings(jwks_url=url, jwks_refresh_interval_s=30, jwks_cache_ttl_s=300)
    keys = JwksKeys(auth, clock=lambda: clock[0])
    v = JwtVerifier(auth, keys, clock=lambda: NOW + 1)
    assert (await v.verify(rs(claims()))).tenant == "acme"
    assert state["hits"] == 1

    # A flood of tokens with made-up kids: at most one refresh per interval.
    forged = [rs(claims(sub=f"x{i}"), kid=f"made-up-{i}") for i in range(50)]
    results = await asyncio.gather(*(v.verify(t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert state["hits"] == 1, "the first fetch is younger than the refresh interval"
    clock[0] = 31
    results = await asyncio.gather(*(v.verify(t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert state["hits"] == 2

    # The issuer rotates in a new key: its kid is unknown until the next allowed refresh.
    state["keys"] = [jwk(RSA_KEY, "rsa-1"), jwk(ROTATED_KEY, "rsa-2")]
    clock[0] = 62
    assert (await v.verify(rs(claims(sub="bob"), kid="rsa-2", key=ROTATED_KEY))).subject == "bob"
    assert state["hits"] == 3


async def test_jwks_outage_keeps_the_known_keys(jwks_server: tuple[str, dict[str, Any]],
                                                ) -> None:
    url, state = jwks_server
    clock = [0.0]
    auth = AuthSettings(jwks_url=url, jwks_cache_ttl_s=10)
    keys = JwksKeys(auth, clock=lambda: clock[0])
    assert await keys.key("rsa-1") is not None
    state["keys"] = "broken"  # the endpoint now serves garbage
    clock[0] = 11
    assert await keys.key("rsa-1") is not None
