"""Console sign-in at an OpenID provider, in a real browser: the authorization-code flow
with PKCE against a real provider over HTTP (oidc-provider-mock: a Flask/Authlib OpenID
provider made for tests, with discovery, a login form, a token endpoint and its JWKS),
in front of a gateway that trusts that provider's issuer and keys. A person signs in
at the provider and lands on the console signed in; a denial, an answer no sign-in in
this tab asked for, and a token the gateway does not accept each end on the sign-in page
saying why; a provider that does not answer leaves pasting a token working; the token
endpoint refuses bad input naming the field."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import oidc_provider_mock
import pytest
import werkzeug.serving
from playwright.sync_api import Page, expect

from tests.conftest import Stack
from tests.e2e.conftest import shot
from tests.helpers import TEST_AUTH, free_ports, gateway_config, running, token

CLIENT_ID = "aios-console"
OLGA = {"scope": "routes:read routes:write audit:read", "tenant": "acme", "name": "Olga"}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The OpenID provider, on loopback (its issuer is the address it is called at)."""
    server = werkzeug.serving.make_server("127.0.0.1", 0, oidc_provider_mock.app(),
                                          threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    for sub, claims in (("olga", OLGA), ("nobody", {"scope": "routes:read"})):
        assert httpx.put(f"{url}/users/{sub}", json=claims).status_code == 204
    yield url
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def console(stack: Stack, provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose tokens come from the provider; its console signs in there."""
    tmp = tmp_path_factory.mktemp("console-oidc")
    secret = tmp / "client-secret"
    secret.write_text("a confidential client's secret\n")
    models = {"claims_risk": {"targets": {"stable": {"backend": "local", "version": "2"}}}}
    config, http_port, _ = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, models,
        console={"oidc": {"issuer": provider, "client_id": CLIENT_ID, "token": "id_token",
                          "client_secret_file": str(secret)}})
    # The ID token's audience is the client: the gateway checks tokens for that audience.
    config["gateway"]["auth"] = {"issuer": provider, "audience": CLIENT_ID,
                                 "jwks_url": f"{provider}/jwks"}
    with running("gateway", config, http_port, tmp):
        yield f"http://127.0.0.1:{http_port}"


def at_provider(page: Page, console: str) -> None:
    page.goto(f"{console}/console/")
    page.get_by_role("button", name="Sign in with your identity provider").click()
    page.wait_for_url("**/oauth2/authorize?**")


def test_sign_in_at_the_identity_provider(console: str, provider: str, page: Page) -> None:
    at_provider(page, console)
    asked = httpx.URL(page.url).params
    assert (asked["response_type"], asked["client_id"], asked["code_challenge_method"]) == (
        "code", CLIENT_ID, "S256")
    assert asked["redirect_uri"] == f"{console}/console/"
    assert len(asked["code_challenge"]) == 43 and len(asked["state"]) >= 32
    page.get_by_placeholder("sub").fill("olga")
    page.get_by_role("button", name="Authorize").click()
    expect(page.locator("#who")).to_contain_text("olga · tenant acme")
    # The code and state are gone from the address; the admin API takes the token.
    assert "code=" not in page.url
    page.get_by_role("link", name="Routes").click()
    expect(page.get_by_role("region", name="model claims_risk")).to_contain_text("stable")
    expect(page.get_by_role("button", name="Apply")).to_have_count(0)  # one target only
    shot(page, "sign-in-oidc")
    assert page.evaluate("sessionStorage.getItem('aios-console-oidc')") is None


def test_a_denied_sign_in_says_so(console: str, page: Page) -> None:
    at_provider(page, console)
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Sign-in refused by the identity provider: access_denied"
        " (The resource owner or authorization server denied the request)")
    expect(page.locator("#who")).to_have_text("")


def test_an_answer_no_sign_in_here_asked_for_is_refused(console: str, page: Page) -> None:
    # A code sent to the victim's console by someone else (login CSRF): no state matches.
    page.goto(f"{console}/console/?code=stolen&state=made-up")
    expect(page.get_by_role("alert")).to_have_text(
        "Sign-in refused: the answer does not belong to a sign-in started in this tab; "
        "start again.")
    expect(page.locator("#who")).to_have_text("")


def test_a_token_the_gateway_does_not_accept_is_refused_saying_why(
        console: str, page: Page) -> None:
    at_provider(page, console)
    page.get_by_placeholder("sub").fill("nobody")  # no tenant claim
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Sign-in refused: signed in at the identity provider, but this gateway does not "
        "accept its id_token: token lacks the 'tenant' claim")
    expect(page.locator("#who")).to_have_text("")


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"code": "x", "code_verifier": "short", "redirect_uri": "{console}/console/"}, 400,
     "code_verifier: 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636)"),
    ({"code": "x", "code_verifier": "v" * 43, "redirect_uri": "https://evil.example/console/"},
     400, "redirect_uri: must be this console, http(s)://{host}/console/, got "
          "'https://evil.example/console/'"),
    ({"code_verifier": "v" * 43, "redirect_uri": "{console}/console/"}, 400,
     "code: the provider's code, 1 to 2048 characters"),
    ([], 400, "body: a JSON object with code, code_verifier and redirect_uri"),
    ({"code": "not-issued", "code_verifier": "v" * 43, "redirect_uri": "{console}/console/"},
     401, "the identity provider refused the sign-in: invalid_grant"),
])
def test_the_token_endpoint_refuses_bad_input_naming_it(
        console: str, body: object, status: int, error: str) -> None:
    host = console.removeprefix("http://")
    filled = {k: v.format(console=console) for k, v in body.items()} \
        if isinstance(body, dict) else body
    resp = httpx.post(f"{console}/console/oidc/token", json=filled)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"].startswith(error.format(host=host))


def test_the_page_is_told_where_to_sign_in(console: str, provider: str) -> None:
    resp = httpx.get(f"{console}/console/oidc")
    assert resp.status_code == 200
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.json() == {"enabled": True, "issuer": provider,
                           "authorization_endpoint": f"{provider}/oauth2/authorize",
                           "client_id": CLIENT_ID, "scope": "openid profile email"}


def test_a_gateway_without_a_provider_says_so(tmp_path: Path, stack: Stack) -> None:
    config, http_port, _ = gateway_config(stack.sidecar_http, stack.sidecar_grpc, {})
    with running("gateway", config, http_port, tmp_path):
        url = f"http://127.0.0.1:{http_port}"
        assert httpx.get(f"{url}/console/oidc").json() == {"enabled": False}
        resp = httpx.post(f"{url}/console/oidc/token", json={})
        assert (resp.status_code, resp.json()) == (404, {
            "error": "this gateway has no OpenID provider (gateway.console.oidc)"})


def test_a_provider_that_does_not_answer_leaves_token_sign_in_working(
        stack: Stack, page: Page, tmp_path: Path) -> None:
    (dead,) = free_ports(1)  # nothing listens there
    issuer = f"http://127.0.0.1:{dead}"
    config, http_port, _ = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, {},
        console={"oidc": {"issuer": issuer, "client_id": CLIENT_ID, "timeout_s": 2}})
    config["gateway"]["auth"] = {**TEST_AUTH, "issuer": issuer, "jwks_url": f"{issuer}/jwks"}
    with running("gateway", config, http_port, tmp_path):
        url = f"http://127.0.0.1:{http_port}"
        resp = httpx.get(f"{url}/console/oidc")
        assert resp.status_code == 502
        assert resp.json()["error"].startswith(
            f"the identity provider at {issuer}/.well-known/openid-configuration could not "
            "be reached")
        page.goto(f"{url}/console/")
        expect(page.get_by_role("alert")).to_contain_text(
            "Sign-in at the identity provider is unavailable: the identity provider at")
        expect(page.get_by_role("button", name="Sign in with your identity provider")
               ).to_have_count(0)
        # A pasted token still signs in (HS256, the gateway's own secret, this issuer).
        page.get_by_label("Bearer token").fill(token("routes:read", subject="paula",
                                                     issuer=issuer))
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#who")).to_contain_text("paula")
