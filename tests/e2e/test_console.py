"""The console in a real browser (Debian's chromium, driven by Playwright) against a real
gateway in front of the session stack's sidecar and Triton: sign in with a token, change
a weight with a reason and find it in history and in `aios routes list`, meet a stale
revision, start, watch and abort a rollout, see no edit controls without `routes:write`
(and a 403 if trying anyway), find a decision by its claim id and open it; a reason
holding `<script>` is shown as text; the page's headers refuse framing and foreign
scripts; no cookie can act for the token."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from aios.checkpoint import write_key_pair
from aios_cli.claims import synthesize_claims
from tests.conftest import Stack
from tests.e2e.conftest import shot
from tests.helpers import (
    MODEL_REPO,
    REPO,
    free_ports,
    gateway_config,
    infer_json,
    running,
    token,
)

OPS = token("routes:read routes:write audit:read review:read review:decide", subject="olga")
READER = token("routes:read audit:read", subject="rita")
XSS = "<script>alert('x')</script> ramp after review"


@pytest.fixture(scope="module")
def console(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with a two-target claims_risk, the audit and review APIs, in front of a
    sidecar of its own (on the stack's Triton) whose review gate sends every decision to
    people (flag mode: the answer goes out, the item waits)."""
    tmp = tmp_path_factory.mktemp("console")
    key, public = tmp / "signing.pem", tmp / "signing.pub.pem"
    write_key_pair(key, public)
    store = str(tmp / "reviews.db")
    s_http, s_grpc = free_ports(2)
    sidecar = {"sidecar": {
        "server": {"http_port": s_http, "grpc_port": s_grpc},
        "triton": {"http": stack.triton_http, "grpc": stack.triton_grpc},
        "decision_log": {"directory": str(tmp / "decisions"), "signing_key_file": str(key),
                         "checkpoint_every_records": 1, "checkpoint_every_s": 0.2},
        # A small drift window, so the health page's drift table fills within the test.
        "parity": {"model_repository": str(MODEL_REPO), "drift_window": 50, "drift_every": 10},
        "review": {"enabled": True, "store_url": store, "gates_poll_s": 0.2,
                   "finish_every_s": 0.1, "models": {"claims_risk": {"gates": [
                       {"name": "every", "band": {"output": "risk_score", "low": 0.0,
                                                  "high": 1.0}}]}}}}}
    audit = {"logs": {"local": {"directory": str(tmp / "decisions"),
                                "public_key_file": str(public)}},
             "model_repository": str(MODEL_REPO),
             "access_log": {"directory": str(tmp / "audit-reads"),
                            "signing_key_file": str(key)}}
    models = {"claims_risk": {"sticky": "header:x-claim-id", "targets": {
        "stable": {"backend": "local", "version": "2", "weight": 90},
        "canary": {"backend": "local", "version": "1", "weight": 10}}}}
    config, http_port, _ = gateway_config(f"127.0.0.1:{s_http}", f"127.0.0.1:{s_grpc}",
                                          models, audit=audit,
                                          review={"store_url": store, "lease_s": 60},
                                          # Rollout steps a browser can watch in seconds.
                                          routing={"rollout_interval_s": 0.3,
                                                   "rollout_lease_s": 2.0})
    with running("sidecar", sidecar, s_http, tmp), running("gateway", config, http_port, tmp):
        yield f"http://127.0.0.1:{http_port}"


def sign_in(page: Page, console: str, with_token: str) -> None:
    page.goto(f"{console}/console/")
    page.get_by_label("Bearer token").fill(with_token)
    page.get_by_role("button", name="Sign in").click()


def table(console: str) -> dict[str, Any]:
    resp = httpx.get(f"{console}/admin/routes/claims_risk",
                     headers={"authorization": f"Bearer {OPS}"})
    doc: dict[str, Any] = resp.json()
    return doc


def test_sign_in_change_a_weight_with_a_reason_and_find_it_everywhere(
        console: str, page: Page, tmp_path: Path) -> None:
    sign_in(page, console, OPS)
    expect(page.get_by_role("navigation")).to_contain_text("Routes")
    expect(page.get_by_role("navigation")).to_contain_text("Decisions")
    expect(page.locator("#who")).to_contain_text("olga")
    page.get_by_role("link", name="Routes").click()
    card = page.get_by_role("region", name="model claims_risk")
    expect(card).to_contain_text("stable")
    card.get_by_label("weight of canary").fill("25")
    card.get_by_label("weight of stable").fill("75")
    card.get_by_label("reason").fill(XSS)
    card.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_contain_text("Saved claims_risk: revision")
    card.get_by_role("button", name="History").click()
    history = card.get_by_role("table", name="history of claims_risk")
    expect(history).to_contain_text(XSS)  # as text: the page's own dialog check passes
    expect(history).to_contain_text("canary 10 → 25; stable 90 → 75")
    expect(history).to_contain_text("olga")
    shot(page, "routes")
    assert {n: t["weight"] for n, t in table(console)["targets"].items()} == {
        "stable": 75, "canary": 25}
    listed = subprocess.run(
        [sys.executable, "-m", "aios_cli", "routes", "list", "--url", console,
         "--token", OPS], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines() if "claims_risk" in line
            or line.strip().startswith(("stable", "canary"))]
    assert any("canary" in r and "25" in r for r in rows), listed.stdout
    assert any("stable" in r and "75" in r for r in rows), listed.stdout


def test_a_stale_revision_is_shown_not_swallowed(console: str, page: Page) -> None:
    sign_in(page, console, OPS)
    page.get_by_role("link", name="Routes").click()
    card = page.get_by_role("region", name="model claims_risk")
    expect(card).to_contain_text("revision")
    current = table(console)
    moved = httpx.put(f"{console}/admin/routes/claims_risk/weights",
                      headers={"authorization": f"Bearer {OPS}"},
                      json={"base_revision": current["revision"], "reason": "someone else",
                            "weights": {"stable": 60, "canary": 40}})
    assert moved.status_code == 200
    card.get_by_label("weight of canary").fill("50")
    card.get_by_label("weight of stable").fill("50")
    card.get_by_label("reason").fill("mine")
    card.get_by_role("button", name="Apply").click()
    alert = card.get_by_role("alert")
    expect(alert).to_contain_text(f"The table now shows revision {moved.json()['revision']}")
    expect(alert).to_contain_text("Not saved:")
    expect(card.get_by_label("weight of canary")).to_have_value("40")
    assert {n: t["weight"] for n, t in table(console)["targets"].items()} == {
        "stable": 60, "canary": 40}, "nothing was overwritten"


def test_without_routes_write_there_are_no_edit_controls_and_trying_is_403(
        console: str, page: Page) -> None:
    sign_in(page, console, READER)
    page.get_by_role("link", name="Routes").click()
    card = page.get_by_role("region", name="model claims_risk")
    expect(card).to_contain_text("stable")
    expect(card.get_by_role("button", name="Apply")).to_have_count(0)
    expect(card.get_by_label("weight of canary")).to_have_count(0)
    expect(page.get_by_role("navigation")).not_to_contain_text("Reviews")
    status = page.evaluate("""async (revision) => (await fetch(
        "/admin/routes/claims_risk/weights", {method: "PUT", headers: {
          authorization: "Bearer " + sessionStorage.getItem("aios-console-token"),
          "content-type": "application/json"},
          body: JSON.stringify({base_revision: revision, weights: {stable: 1, canary: 99}})})
        ).status""", table(console)["revision"])
    assert status == 403


def test_find_a_decision_by_its_claim_id_and_open_it(console: str, page: Page) -> None:
    claim_id = "C-CONSOLE-<b>7</b>"
    decision = score(console, claim_id)
    sign_in(page, console, OPS)
    page.get_by_role("link", name="Decisions").click()
    page.get_by_label("claim id").fill(claim_id)
    page.get_by_role("button", name="Search").click()
    found = page.get_by_role("table", name="decisions found")
    expect(found).to_contain_text(decision)
    expect(found).to_contain_text(claim_id)
    shot(page, "decisions")
    found.get_by_role("link", name=decision).click()
    detail = page.locator("#decision-detail")
    expect(detail).to_contain_text(f"Decision {decision}")
    expect(detail).to_contain_text("Chain: ")
    expect(detail.get_by_role("table", name="features")).to_contain_text("claim_amount")
    shot(page, "decision")


def test_the_page_refuses_framing_and_foreign_scripts_and_cookies_act_for_no_one(
        console: str) -> None:
    resp = httpx.get(f"{console}/console/")
    assert resp.status_code == 200
    assert resp.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert "script-src 'self';" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(f"{console}/console/app.js").headers["content-type"].startswith(
        "text/javascript")
    assert httpx.get(f"{console}/console/../admin/routes").status_code in (401, 404)
    # A cross-site form posts with the browser's cookies, never with the console's token.
    forged = httpx.put(f"{console}/admin/routes/claims_risk/weights",
                       headers={"origin": "https://evil.example", "cookie": f"token={OPS}",
                                "content-type": "application/x-www-form-urlencoded"},
                       content=b"weights=stable%3D0")
    assert forged.status_code == 401
    assert forged.json() == {"error": "missing bearer token"}


@contextlib.contextmanager
def traffic(console: str, prefix: str, pause_s: float) -> Iterator[None]:
    """Decisions scored one after another (claim ids ``prefix``-N) while the block runs."""
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            score(console, f"{prefix}-{i}")
            i += 1
            time.sleep(pause_s)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(10)


def score(console: str, claim_id: str) -> str:
    """A decision through the console's gateway; its decision id."""
    resp = httpx.post(f"{console}/v2/models/claims_risk/infer",
                      content=infer_json([[4200.0, 18, 1, 9, 41, 6, 0, 1]]),
                      headers={"authorization": f"Bearer {token()}", "x-claim-id": claim_id})
    assert resp.status_code == 200, resp.text
    return resp.headers["x-aios-decision-id"]


def test_decide_a_review_item(console: str, page: Page) -> None:
    decision = score(console, "C-REVIEW-1")
    auth = {"authorization": f"Bearer {OPS}"}
    item = httpx.get(f"{console}/admin/reviews/{decision}", headers=auth).json()
    sign_in(page, console, OPS)
    page.get_by_role("link", name="Reviews").click()
    queue = page.get_by_role("table", name="review queue")
    expect(queue).to_contain_text("C-REVIEW-1")
    shot(page, "reviews")
    queue.get_by_role("link", name=item["id"]).click()
    detail = page.locator("#review-detail")
    expect(detail).to_contain_text(f"Review {item['id']}")
    expect(detail).to_contain_text("risk_score")
    detail.get_by_role("button", name="Claim").click()
    expect(page.get_by_role("status")).to_contain_text(f"Review {item['id']}: claim done.")
    detail.get_by_label("reason").fill("documents checked <img src=x onerror=alert(1)>")
    detail.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text(f"Review {item['id']}: decision done.")
    decided = httpx.get(f"{console}/admin/reviews/{item['id']}", headers=auth).json()
    assert (decided["state"], decided["decided_by"], decided["reason"]) == (
        "decided", "olga", "documents checked <img src=x onerror=alert(1)>")


def test_live_health_per_model_version(console: str, page: Page) -> None:
    claims, _ = synthesize_claims(64, seed=7)
    for version in ("1", "2"):  # a drift window's worth of rows on each version
        resp = httpx.post(f"{console}/v2/models/claims_risk/versions/{version}/infer",
                          content=infer_json(claims.tolist()),
                          headers={"authorization": f"Bearer {token()}"})
        assert resp.status_code == 200, resp.text
    sign_in(page, console, OPS)
    page.get_by_role("link", name="Health").click()
    requests = page.get_by_role("table", name="requests per model version")
    expect(requests).to_contain_text("claims_risk (as routed)")
    expect(page.get_by_role("img", name="requests per second of claims_risk (as routed)")
           ).to_have_count(1)
    parity = page.get_by_role("table", name="golden parity on local")
    expect(parity).to_contain_text("claims_risk v2")
    expect(parity).to_contain_text("passing")
    drift = page.get_by_role("table", name="drift on local")
    expect(drift).to_contain_text("claimant_age")
    with traffic(console, "C-HEALTH", 0.05):  # while the page polls: a rate shows
        routed = requests.locator("tr", has_text="claims_risk (as routed)")
        expect(routed.locator("td").first).not_to_have_text("0.0", timeout=10000)
        shot(page, "health")


def test_replay_recorded_decisions_against_a_candidate(console: str, page: Page) -> None:
    for i in range(3):
        score(console, f"C-REPLAY-{i}")
    before = httpx.get(f"{console}/admin/reviews?limit=500",
                       headers={"authorization": f"Bearer {OPS}"}).json()["count"]
    sign_in(page, console, token("replay:run audit:read", subject="mara"))
    page.get_by_role("link", name="Replays").click()
    page.get_by_label("candidate version").fill("1")
    page.get_by_role("button", name="Replay").click()
    detail = page.locator("#replay-detail")
    expect(detail).to_contain_text("Agreement at 0.5:", timeout=30000)
    expect(detail.get_by_role("table", name="confusion matrix")).to_contain_text("at or above")
    expect(detail.get_by_role("img", name="score delta quantiles")).to_have_count(1)
    expect(detail.get_by_role("table", name="largest disagreements").locator("tbody tr")
           ).to_have_count(10)
    shot(page, "replay")
    after = httpx.get(f"{console}/admin/reviews?limit=500",
                      headers={"authorization": f"Bearer {OPS}"}).json()["count"]
    assert after == before, "a replay goes to no review gate"


def test_start_watch_and_abort_a_rollout(console: str, page: Page) -> None:
    sign_in(page, console, OPS)
    page.get_by_role("link", name="Rollouts").click()
    form = page.get_by_role("form", name="start a rollout")
    form.get_by_label("candidate (target or version)").fill("canary")
    form.get_by_label("stable target").fill("stable")
    form.get_by_label("steps (%").fill("0,50,100")
    form.get_by_label("dwell per step").fill("1")
    form.get_by_label("min requests per step").fill("10")
    # The same few claims over and over are no real input distribution: the drift gate
    # would flag them and roll the candidate back before there is anything to watch.
    form.get_by_label("no drift flag").uncheck()
    form.get_by_label("reason (kept in history)").fill(XSS)
    form.get_by_role("button", name="Start rollout").click()
    expect(page.get_by_role("status")).to_contain_text("of claims_risk started")
    detail = page.locator("#rollout-detail")
    expect(detail).to_contain_text("running")
    with traffic(console, "C-ROLLOUT", 0.02):
        gates = detail.get_by_role("table", name="gates")
        # Step 1 (shadow only): agreement measured on mirrored decisions, with its sample.
        expect(gates.locator("tr", has_text="agreement")).to_contain_text("n = ", timeout=20000)
        step = detail.get_by_role("list", name="steps").locator('[aria-current="step"]')
        expect(step).to_have_text("50%", timeout=30000)
        # Live traffic on the candidate: its error rate and p99 against their bounds.
        expect(gates.locator("tr", has_text="error_rate").first).to_contain_text("2.00%")
        expect(gates.locator("tr", has_text="p99_ms")).to_contain_text("1000 ms")
        shot(page, "rollouts")
    detail.get_by_label("reason").fill("claims team asked to stop <b>now</b>")
    detail.get_by_role("button", name="Abort").click()
    expect(page.get_by_role("status")).to_contain_text("abort done, now aborted")
    expect(detail.locator("strong")).to_have_text("aborted")
    expect(detail.get_by_role("button", name="Abort")).to_have_count(0)
    detail.get_by_text("Events (").click()
    events = detail.get_by_role("table", name="rollout events")
    expect(events).to_contain_text("claims team asked to stop <b>now</b>")
    expect(events).to_contain_text(XSS)
    assert table(console)["targets"]["canary"]["weight"] == 0
    listed = page.get_by_role("table", name="rollouts")
    expect(listed).to_contain_text("aborted")
    # Without routes:write: the rollout can be read, not started or acted on.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, console, READER)
    page.get_by_role("link", name="Rollouts").click()
    listed.get_by_role("link").first.click()
    expect(detail.get_by_role("table", name="gates")).to_contain_text("agreement")
    expect(page.get_by_role("form", name="start a rollout")).to_have_count(0)
    expect(page.get_by_role("button", name="Abort")).to_have_count(0)
    status = page.evaluate("""async () => (await fetch("/admin/rollouts/claims_risk/resume", {
        method: "POST", headers: {
          authorization: "Bearer " + sessionStorage.getItem("aios-console-token")}})).status""")
    assert status == 403


@pytest.fixture(scope="module")
def governed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose claims_risk is under the four-eyes policy."""
    tmp = tmp_path_factory.mktemp("console-four-eyes")
    models = {"claims_risk": {"targets": {
        "stable": {"backend": "local", "version": "2", "weight": 90},
        "canary": {"backend": "local", "version": "1", "weight": 10}}}}
    config, http_port, _ = gateway_config(stack.sidecar_http, stack.sidecar_grpc, models,
                                          routing={"four_eyes": ["claims_risk"]})
    with running("gateway", config, http_port, tmp):
        yield f"http://127.0.0.1:{http_port}"


def test_a_four_eyes_change_is_proposed_by_one_and_approved_by_another(
        governed: str, browser: Browser) -> None:
    scopes = "routes:read routes:write routes:approve"
    pages = []
    for subject in ("alice", "carol"):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pages.append(context.new_page())
        sign_in(pages[-1], governed, token(scopes, subject=subject))
        pages[-1].get_by_role("link", name="Routes").click()
    alice, carol = pages
    card = alice.get_by_role("region", name="model claims_risk")
    card.get_by_label("weight of canary").fill("30")
    card.get_by_label("weight of stable").fill("70")
    card.get_by_label("reason (kept in history)").fill("replay agrees")
    card.get_by_role("button", name="Apply").click()
    expect(alice.get_by_role("status")).to_contain_text("waits for a second subject")
    expect(card.get_by_role("table", name="pending changes of claims_risk")).to_contain_text(
        "canary → 30")
    carol.reload()
    theirs = carol.get_by_role("region", name="model claims_risk")
    pending = theirs.get_by_role("table", name="pending changes of claims_risk")
    expect(pending).to_contain_text("alice")
    theirs.get_by_label("reason for your answer").fill("checked the replay")
    pending.get_by_role("button", name="Approve").click()
    expect(carol.get_by_role("status")).to_contain_text(": applied.")
    theirs.get_by_role("button", name="History").click()
    expect(theirs.get_by_role("table", name="history of claims_risk")).to_contain_text(
        "alice, approved by carol (checked the replay)")
    shot(carol, "four-eyes")
    resp = httpx.get(f"{governed}/admin/routes/claims_risk",
                     headers={"authorization": f"Bearer {token(scopes, subject='x')}"})
    assert {n: t["weight"] for n, t in resp.json()["targets"].items()} == {
        "stable": 70, "canary": 30}
    for opened in pages:
        opened.context.close()
