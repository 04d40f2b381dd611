"""Human review on a real stack: the suite's Triton, a sidecar with review gates, a
gateway with the review API, a review store (SQLite file; PostgreSQL where said), a
redis-server of the module's own for the decided events, and a real webhook receiver.

Gates queue exactly the decisions they fire on (counted against the decision log);
callers are told (REST headers, gRPC metadata, the response's parameters) or held (202);
reviewers claim and decide over REST, gRPC and the CLI, and of two at once one wins;
each decision lands in the hash chain beside the model's record and is announced on the
Redis stream and to the signed, retried webhook; `aios review simulate` agrees with the
live gates; a kill -9 of the sidecar and a PostgreSQL restart lose and duplicate nothing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import redis
from tritonclient.grpc import service_pb2

from aios.auditlog import records, verify
from aios.checkpoint import write_key_pair
from aios.reviewstore import open_review_store
from aios_cli.claims import synthesize_claims
from proto import review_pb2 as pb
from proto import review_pb2_grpc as pb_grpc
from tests.conftest import Stack
from tests.e2e.test_decisions import grpc_claim
from tests.e2e.test_errors import INFER
from tests.helpers import (
    MODEL_REPO,
    REPO,
    bearer,
    free_ports,
    gateway_config,
    infer_json,
    running,
    token,
    wait_until,
)
from tests.postgres import PostgresServer
from tests.redis_server import RedisServer
from tests.webhook import WebhookReceiver

BAND = (0.35, 0.75)
GATES = {"claims_risk": {"gates": [
    {"name": "unsure", "band": {"output": "risk_score", "low": BAND[0], "high": BAND[1]}},
]}}
SECRET = b"webhook-secret-for-the-tests-0123456789"
STREAM = "aios:reviews:test"


def webhook() -> WebhookReceiver:
    """A receiver that answers 503 to the first delivery of each event (so every event is
    retried), 200 after."""
    return WebhookReceiver(lambda event, attempt: 503 if attempt == 1 else 200)


@dataclass
class Desk:
    gateway_http: str
    gateway_grpc: str
    sidecar_http: str
    decisions: Path
    store_url: str
    config: Path  # the sidecar's config (for the CLI)
    redis_url: str
    hook: WebhookReceiver
    triton_http: str


def review_sidecar(stack: Stack, tmp: Path, store_url: str, redis_url: str,
                   hook: WebhookReceiver, gates: dict[str, Any] | None = None) -> tuple[
                       dict[str, Any], int, int]:
    http_port, grpc_port = free_ports(2)
    key = tmp / "signing.pem"
    if not key.exists():
        write_key_pair(key, tmp / "signing.pub.pem")
    (tmp / "hook.secret").write_bytes(SECRET)
    return {"sidecar": {
        "server": {"http_port": http_port, "grpc_port": grpc_port},
        "triton": {"http": stack.triton_http, "grpc": stack.triton_grpc},
        "decision_log": {"directory": str(tmp / "decisions"), "signing_key_file": str(key)},
        "parity": {"model_repository": str(MODEL_REPO)},
        "review": {"enabled": True, "store_url": store_url, "models": gates or GATES,
                   "gates_poll_s": 0.2, "finish_every_s": 0.1,
                   "events": {"redis_stream_url": redis_url, "stream_key": STREAM,
                              "webhook_url": hook.url,
                              "webhook_secret_file": str(tmp / "hook.secret"),
                              "webhook_backoff_s": 0.05}}}}, http_port, grpc_port


@pytest.fixture(scope="module")
def desk(stack: Stack, redis_server: RedisServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    tmp = tmp_path_factory.mktemp("review")
    store = str(tmp / "reviews.db")
    hook = webhook()
    sidecar, s_http, s_grpc = review_sidecar(stack, tmp, store, redis_server.url, hook)
    config_path = tmp / f"sidecar-{s_http}.yaml"
    gateway, g_http, g_grpc = gateway_config(
        f"127.0.0.1:{s_http}", f"127.0.0.1:{s_grpc}",
        {"claims_risk": {"backend": "local", "sticky": "header:x-claim-id"}},
        review={"store_url": store, "lease_s": 60, "stats_every_s": 0.2})
    with running("sidecar", sidecar, s_http, tmp), running("gateway", gateway, g_http, tmp):
        yield Desk(f"127.0.0.1:{g_http}", f"127.0.0.1:{g_grpc}", f"127.0.0.1:{s_http}",
                   tmp / "decisions", store, config_path, redis_server.url, hook,
                   stack.triton_http)
    hook.close()


def reviewer(subject: str, scope: str = "review:read review:decide") -> dict[str, str]:
    return {"authorization": f"Bearer {token(scope, subject=subject)}"}


def score_rest(desk: Desk, rows: list[list[float]], claim: str) -> httpx.Response:
    return httpx.post(f"http://{desk.gateway_http}/v2/models/claims_risk/infer",
                      content=infer_json(rows), headers={**bearer(), "x-claim-id": claim},
                      timeout=30)


def in_band(score: float) -> bool:
    return BAND[0] <= score <= BAND[1]


@functools.cache
def _scored(triton: str, seed: int) -> tuple[tuple[list[float], float], ...]:
    x, _ = synthesize_claims(600, seed=seed)
    scores: list[float] = []
    for i in range(0, len(x), 50):  # within the model's max_batch_size (64)
        resp = httpx.post(f"http://{triton}/v2/models/claims_risk/infer",
                          content=infer_json(x[i:i + 50].tolist()), timeout=30)
        scores += resp.json()["outputs"][0]["data"]
    return tuple(zip(x.tolist(), scores, strict=True))


def claims_in_band(desk: Desk, n: int, seed: int, inside: bool = True) -> list[list[float]]:
    """``n`` synthetic claims the model scores in the band (or outside it), found by
    scoring them directly on the stack's Triton."""
    found = [row for row, s in _scored(desk.triton_http, seed) if in_band(s) == inside]
    assert len(found) >= n
    return found[:n]


def api(desk: Desk, method: str, path: str, who: str = "ann", body: Any = None,
        scope: str = "review:read review:decide") -> httpx.Response:
    return httpx.request(method, f"http://{desk.gateway_http}/admin/reviews{path}",
                         headers=reviewer(who, scope), json=body, timeout=30)


def queued(desk: Desk, claim: str, seed: int) -> str:
    """A decision the gate queued: its review id."""
    resp = score_rest(desk, claims_in_band(desk, 1, seed), claim)
    assert resp.status_code == 200 and resp.headers["x-aios-review"] == "pending", resp.text
    return resp.headers["x-aios-review-id"]


def model_records(directory: Path) -> dict[str, Any]:
    return {r.decision_id: r for r in records(directory) if not r.kind}


def test_a_band_gate_queues_exactly_the_decisions_in_the_band(desk: Desk) -> None:
    x, _ = synthesize_claims(1000, seed=2101)
    claims = [f"BAND-{i}" for i in range(len(x))]

    def one(i: int) -> httpx.Response:
        return score_rest(desk, [x[i].tolist()], claims[i])

    with ThreadPoolExecutor(16) as pool:  # concurrent: the sidecar merges some calls
        answers = list(pool.map(one, range(len(x))))
    assert [a.status_code for a in answers] == [200] * len(x)
    by_decision = {a.headers["x-aios-decision-id"]: a for a in answers}

    logged = {d: r for d, r in model_records(desk.decisions).items() if d in by_decision}
    assert len(logged) == len(x)
    score = {d: float(np.frombuffer(r.outputs[0].contents, "<f4")[0])
             for d, r in logged.items()}
    expected = {d for d, s in score.items() if in_band(s)}
    assert 20 < len(expected) < 980, "the band holds some of the claims, not all"

    store = open_review_store(desk.store_url)
    try:
        items = {i.decision_id: i for i in store.items(None, "unsure", None, 5000,
                                                       time.time_ns())
                 if i.decision_id in by_decision}
    finally:
        store.close()
    assert set(items) == expected
    for d, answer in by_decision.items():
        body = answer.json()
        if d in expected:
            assert answer.headers["x-aios-review"] == "pending"
            review_id = answer.headers["x-aios-review-id"]
            assert body["parameters"] == {"aios_review": "pending",
                                          "aios_review_id": review_id}
            assert (items[d].id, logged[d].review_id, logged[d].review_gate) == (
                review_id, review_id, "unsure")
            assert items[d].outputs["risk_score"] == [pytest.approx(score[d], abs=1e-6)]
            row = items[d].inputs["features"]["rows"][0]
            assert row["claim_amount"]["unit"] == "EUR"
        else:
            assert "x-aios-review" not in answer.headers and "parameters" not in body
            assert logged[d].review_id == ""


def test_grpc_callers_see_the_review_in_metadata_and_parameters(desk: Desk) -> None:
    row = claims_in_band(desk, 1, seed=2102)[0]
    with grpc.insecure_channel(desk.gateway_grpc) as channel:
        payload, call = channel.unary_unary(INFER).with_call(
            grpc_claim(row), timeout=10, metadata=tuple(bearer().items()))
    trailing = dict(call.trailing_metadata())
    response = service_pb2.ModelInferResponse.FromString(payload)
    assert trailing["x-aios-review"] == "pending"
    assert response.parameters["aios_review_id"].string_param == trailing["x-aios-review-id"]
    assert len(response.raw_output_contents) == 1  # flag mode: the score is there


Decide = Callable[[Desk, str, str, str, str, dict[str, list[float]] | None], tuple[int, Any]]


def rest_decide(desk: Desk, who: str, rid: str, action: str, reason: str,
                value: dict[str, list[float]] | None) -> tuple[int, Any]:
    body: dict[str, Any] = {"action": action, "reason": reason}
    if value is not None:
        body["value"] = value
    resp = api(desk, "POST", f"/{rid}/decision", who, body)
    return resp.status_code, resp.json()


GRPC_STATUS = {grpc.StatusCode.ABORTED: 409, grpc.StatusCode.INVALID_ARGUMENT: 400,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.UNAUTHENTICATED: 401}


def grpc_decide(desk: Desk, who: str, rid: str, action: str, reason: str,
                value: dict[str, list[float]] | None) -> tuple[int, Any]:
    with grpc.insecure_channel(desk.gateway_grpc) as channel:
        stub = pb_grpc.ReviewApiStub(channel)
        try:
            doc = stub.Decide(pb.DecideRequest(id=rid, action=action, reason=reason,
                                               value_json=json.dumps(value) if value else ""),
                              metadata=tuple(reviewer(who).items()), timeout=30)
        except grpc.RpcError as exc:
            return GRPC_STATUS[exc.code()], {"error": exc.details()}
    return 200, json.loads(doc.json)


def cli(desk: Desk, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`aios review ARGS` against the desk's gateway, as ``who``."""
    return subprocess.run(
        [sys.executable, "-m", "aios_cli", "review", *args, "--url",
         f"http://{desk.gateway_http}", "--token",
         token("review:read review:decide", subject=who)],
        capture_output=True, text=True, cwd=REPO, timeout=60)


def cli_decide(desk: Desk, who: str, rid: str, action: str, reason: str,
               value: dict[str, list[float]] | None) -> tuple[int, Any]:
    extra = [f"--value={k}={','.join(map(str, v))}" for k, v in (value or {}).items()]
    done = cli(desk, who, "decide", rid, action, "--reason", reason, *extra, "--json")
    if done.returncode:
        status = int(done.stderr.removeprefix("error: ").split(":", 1)[0])
        return status, {"error": done.stderr.strip().split(": ", 2)[-1]}
    return 200, json.loads(done.stdout)


@pytest.fixture(params=["rest", "grpc", "cli"])
def decide(request: pytest.FixtureRequest) -> Decide:
    return {"rest": rest_decide, "grpc": grpc_decide, "cli": cli_decide}[request.param]


def test_claim_approve_and_override_over_each_interface(desk: Desk, decide: Decide) -> None:
    first, second = queued(desk, "CLM-A1", 2103), queued(desk, "CLM-A2", 2103)
    claimed = api(desk, "POST", f"/{first}/claim", "ann", {"lease_s": 30})
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "ann"
    taken = api(desk, "POST", f"/{first}/claim", "bob")
    assert (taken.status_code, taken.json()["error"]) == (
        409, f"review {first} is claimed by ann until their lease ends: cannot claim it")
    status, doc = decide(desk, "bob", first, "approve", "", None)
    assert status == 409 and "claimed by ann" in doc["error"]

    status, doc = decide(desk, "ann", first, "approve", "looks right", None)
    assert status == 200, doc
    assert (doc["state"], doc["action"], doc["decided_by"], doc["final"]) == (
        "decided", "approve", "ann", doc["outputs"])
    status, doc = decide(desk, "bob", second, "override", "prior fraud on this policy",
                         {"risk_score": [0.97]})
    assert status == 200, doc
    assert (doc["action"], doc["final"]) == ("override", {"risk_score": [0.97]})
    status, doc = decide(desk, "carl", second, "approve", "", None)
    assert (status, doc["error"]) == (
        409, f"review {second} was already decided (override by bob): cannot decide it")


@pytest.mark.parametrize(("body", "message"), [
    ({"action": "reject"}, "action: must be one of approve, override, escalate, got 'reject'"),
    ({"action": "override", "reason": "x"}, "value: an override needs the reviewer's outputs"),
    ({"action": "override", "reason": "x", "value": {"score": [1.0]}},
     "value.score: the model gave no output 'score' (outputs: risk_score)"),
    ({"action": "approve", "extra": 1}, "extra: Extra inputs are not permitted"),
    ({"action": "approve", "value": {"risk_score": ["x"]}}, "value.risk_score.0: Input"),
])
def test_bad_decisions_are_400_naming_the_field(desk: Desk, body: dict[str, Any],
                                                message: str) -> None:
    rid = queued(desk, "CLM-BAD", 2104)
    resp = api(desk, "POST", f"/{rid}/decision", "ann", body)
    assert resp.status_code == 400 and resp.json()["error"].startswith(message), resp.text


@pytest.mark.parametrize(("method", "path", "scope", "status", "message"), [
    ("GET", "", "infer:*", 403, "token lacks the scope 'review:read'"),
    ("POST", "/X/decision", "review:read", 403, "token lacks the scope 'review:decide'"),
    ("PUT", "/gates/claims_risk", "review:read review:decide", 403,
     "token lacks the scope 'review:admin'"),
    ("GET", "/NOPE", "review:read", 404, "no review 'NOPE' (nor one of a decision with "
                                         "that id)"),
    ("GET", "?state=done", "review:read", 400, "state: must be one of pending, claimed, "
                                               "decided, got 'done'"),
    ("GET", "?limit=0", "review:read", 400, "limit: must be an integer between 1 and 1000"),
    ("GET", "?sort=age", "review:read", 400, "sort: unknown parameter"),
])
def test_who_may_do_what_and_bad_queries(desk: Desk, method: str, path: str, scope: str,
                                         status: int, message: str) -> None:
    resp = api(desk, method, path, "ann", {"action": "approve"} if method != "GET" else None,
               scope=scope)
    assert resp.status_code == status and resp.json()["error"].startswith(message), resp.text
    no_token = httpx.get(f"http://{desk.gateway_http}/admin/reviews", timeout=10)
    assert no_token.status_code == 401


def test_the_grpc_api_claims_releases_lists_and_counts(desk: Desk) -> None:
    rid = queued(desk, "CLM-GRPC", 2106)
    metadata = tuple(reviewer("dana").items())
    with grpc.insecure_channel(desk.gateway_grpc) as channel:
        stub = pb_grpc.ReviewApiStub(channel)
        claimed = json.loads(stub.Claim(pb.ClaimRequest(id=rid, lease_s=30),
                                        metadata=metadata, timeout=30).json)
        assert (claimed["state"], claimed["claimed_by"]) == ("claimed", "dana")
        listed = json.loads(stub.List(pb.ListRequest(state="claimed", limit=1000),
                                      metadata=metadata, timeout=30).json)
        assert rid in [r["id"] for r in listed["reviews"]]
        released = json.loads(stub.Release(pb.ItemRequest(id=rid), metadata=metadata,
                                           timeout=30).json)
        assert released["state"] == "pending"
        shown = json.loads(stub.Get(pb.ItemRequest(id=claimed["decision_id"]),
                                    metadata=metadata, timeout=30).json)
        assert shown["id"] == rid and [h["action"] for h in shown["history"]] == [
            "queued", "claim", "release"]
        stats = json.loads(stub.Stats(pb.StatsRequest(), metadata=metadata, timeout=30).json)
        assert stats["open"]["unsure"] >= 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetGates(pb.SetGatesRequest(model="claims_risk", gates_json="{}"),
                          metadata=metadata, timeout=30)
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED, "token lacks the scope 'review:admin'")


def test_a_reviewer_sees_only_their_tenants_items_unless_allowed_all(desk: Desk) -> None:
    rid = queued(desk, "CLM-TENANT", 2107)  # scored by the test tenant
    base = f"http://{desk.gateway_http}/admin/reviews"

    def as_globex(scope: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token(scope, tenant='globex', subject='gina')}"}

    own = as_globex("review:read review:decide")
    listed = httpx.get(f"{base}?limit=1000", headers=own, timeout=30).json()["reviews"]
    assert rid not in [r["id"] for r in listed]
    unknown = f"no review {rid!r} (nor one of a decision with that id)"
    shown = httpx.get(f"{base}/{rid}", headers=own, timeout=30)
    assert (shown.status_code, shown.json()["error"]) == (404, unknown)
    decided = httpx.post(f"{base}/{rid}/decision", headers=own, json={"action": "approve"},
                         timeout=30)
    assert (decided.status_code, decided.json()["error"]) == (404, unknown)
    every = as_globex("review:read review:decide review:all-tenants")
    assert httpx.get(f"{base}/{rid}", headers=every, timeout=30).json()["id"] == rid
    assert rid in [r["id"] for r in httpx.get(f"{base}?limit=1000", headers=every,
                                              timeout=30).json()["reviews"]]


def test_two_reviewers_deciding_at_once_exactly_one_wins(desk: Desk) -> None:
    for n in range(5):
        rid = queued(desk, f"CLM-RACE-{n}", 2105 + n)
        barrier = threading.Barrier(2)

        def go(who: str, via: Decide, rid: str = rid,
               barrier: threading.Barrier = barrier) -> tuple[int, Any]:
            barrier.wait()
            return via(desk, who, rid, "approve", "", None)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(go, ["ann", "bob"], [rest_decide, grpc_decide]))
        assert sorted(s for s, _ in results) == [200, 409], results
        item = api(desk, "GET", f"/{rid}").json()
        assert [h["action"] for h in item["history"]].count("approve") == 1


def test_a_decision_is_chained_beside_the_models_record_and_announced(desk: Desk) -> None:
    rid = queued(desk, "CLM-CHAIN", 2110)
    status, doc = rest_decide(desk, "ann", rid, "override", "documents missing",
                              {"risk_score": [0.9]})
    assert status == 200
    wait_until(lambda: api(desk, "GET", f"/{rid}").json()["chained"], 10, "chained")
    found = [r for r in records(desk.decisions) if r.decision_id == doc["decision_id"]]
    assert [r.kind for r in found] == ["", "review"]
    model, human = found
    assert (model.review_id, human.review_id, human.subject, human.outcome) == (
        rid, rid, "ann", "override")
    assert json.loads(human.human_review.final_json) == {"risk_score": [0.9]}
    assert human.sequence > model.sequence and verify(desk.decisions).intact

    shown = subprocess.run(
        [sys.executable, "-m", "aios_cli", "audit", "show", doc["decision_id"], "--dir",
         str(desk.decisions), "--model-repo", str(MODEL_REPO)],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"sent to people by gate unsure (review {rid})" in shown.stdout
    assert f"review of decision {doc['decision_id']} by ann" in shown.stdout
    assert 'final         {"risk_score": [0.9]}' in shown.stdout

    wait_until(lambda: desk.hook.delivered(rid) is not None, 10, "webhook delivered")
    delivery = desk.hook.delivered(rid)
    assert delivery is not None
    expected = "sha256=" + hmac.new(SECRET, delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.signature, expected)
    assert desk.hook.attempts(rid) == 2, "the 503 was retried once"
    assert json.loads(delivery.body)["final"] == {"risk_score": [0.9]}
    stream = redis.Redis.from_url(desk.redis_url).xrange(STREAM)
    events = [json.loads(fields[b"event"]) for _, fields in stream]
    assert [e["action"] for e in events if e["review_id"] == rid] == ["override"]


def test_every_decided_item_gets_one_stream_event(desk: Desk) -> None:
    ids = [queued(desk, f"CLM-EV-{n}", 2120 + n) for n in range(4)]
    for rid in ids:
        assert rest_decide(desk, "ann", rid, "approve", "", None)[0] == 200

    def events() -> list[str]:
        stream = redis.Redis.from_url(desk.redis_url).xrange(STREAM)
        return [f[b"review_id"].decode() for _, f in stream]

    wait_until(lambda: set(ids) <= set(events()), 10, "events")
    assert all(events().count(rid) == 1 for rid in ids)


def test_the_cli_lists_shows_claims_and_prints_stats(desk: Desk) -> None:
    rid = queued(desk, "CLM-CLI", 2130)
    listing = cli(desk, "ann", "list", "--state", "pending", "--limit", "1000")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:4] == ["REVIEW", "STATE", "GATE", "PRIO"]
    assert rid in listing.stdout
    claimed = cli(desk, "ann", "claim", rid)
    assert claimed.returncode == 0 and "claimed by    ann" in claimed.stdout
    shown = cli(desk, "ann", "show", rid)
    assert "gate          unsure" in shown.stdout
    assert "claim_amount" in shown.stdout and "EUR" in shown.stdout
    refused = cli(desk, "bob", "decide", rid, "approve")
    assert refused.returncode == 1 and refused.stderr.startswith("error: 409: ")
    stats = cli(desk, "ann", "stats")
    assert stats.returncode == 0 and stats.stdout.splitlines()[0].split() == [
        "GATE", "OPEN", "OLDEST"]
    assert "override rate:" in stats.stdout


def test_queue_figures_in_the_gateways_metrics(desk: Desk) -> None:
    queued(desk, "CLM-MET", 2131)

    def figures() -> str:
        return httpx.get(f"http://{desk.gateway_http}/metrics", timeout=10).text

    wait_until(lambda: 'aios_review_open{gate="unsure"}' in figures(), 10, "metrics")
    text = figures()
    assert 'aios_review_oldest_open_seconds{gate="unsure"}' in text
    assert "aios_review_override_ratio" in text
    sidecar = httpx.get(f"http://{desk.sidecar_http}/metrics", timeout=10).text
    assert 'aios_review_queued_total{gate="unsure",model="claims_risk"}' in sidecar


def test_simulate_matches_the_live_gate_on_the_same_traffic(desk: Desk) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aios_cli", "review", "simulate", "--config",
         str(desk.config), "--model", "claims_risk", "--dir", str(desk.decisions), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["decisions"] >= 1000 and doc["gates"] == ["unsure"]
    assert doc["would_queue"] == doc["queued_live"] > 20
    assert doc["by_gate"] == doc["live_by_gate"]
    narrower = subprocess.run(
        [sys.executable, "-m", "aios_cli", "review", "simulate", "--config",
         str(desk.config), "--band", "risk_score:0.5:0.6", "--dir", str(desk.decisions)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert narrower.returncode == 0, narrower.stderr
    assert "would send" in narrower.stdout and "the live gates sent" in narrower.stdout


def test_gates_changed_through_the_api_take_effect_and_hold_mode_withholds_the_score(
        desk: Desk) -> None:
    admin = "review:read review:admin"
    current = api(desk, "GET", "/gates/claims_risk", scope=admin).json()
    hold = {"mode": "hold", "gates": [{"name": "big", "rule": "claim_amount > 0"}]}
    bad = api(desk, "PUT", "/gates/claims_risk", "ops", {
        "base_revision": current["revision"], "settings": {"gates": [
            {"name": "x", "rule": "__import__('os')"}]}}, scope=admin)
    assert bad.status_code == 400 and "call is not allowed" in bad.json()["error"]
    changed = api(desk, "PUT", "/gates/claims_risk", "ops", {
        "base_revision": current["revision"], "settings": hold, "reason": "test"},
        scope=admin)
    assert changed.status_code == 200, changed.text
    stale = api(desk, "PUT", "/gates/claims_risk", "ops", {
        "base_revision": current["revision"], "settings": hold}, scope=admin)
    assert stale.status_code == 409
    try:
        def held() -> bool:
            return score_rest(desk, claims_in_band(desk, 1, 2140), "CLM-HOLD").status_code == 202

        wait_until(held, 10, "hold mode in force")
        resp = score_rest(desk, claims_in_band(desk, 1, 2141, inside=False), "CLM-HOLD-2")
        body = resp.json()
        assert resp.status_code == 202 and "outputs" not in body
        assert body["parameters"]["aios_review_id"] == resp.headers["x-aios-review-id"]
        item = api(desk, "GET", f"/{resp.headers['x-aios-review-id']}").json()
        assert item["gate"] == "big" and item["outputs"]["risk_score"]
        with grpc.insecure_channel(desk.gateway_grpc) as channel:
            payload, _ = channel.unary_unary(INFER).with_call(
                grpc_claim(claims_in_band(desk, 1, 2142)[0]), timeout=10,
                metadata=tuple(bearer().items()))
        response = service_pb2.ModelInferResponse.FromString(payload)
        assert not response.outputs and not response.raw_output_contents
        assert response.parameters["aios_review"].string_param == "pending"
    finally:
        back = api(desk, "PUT", "/gates/claims_risk", "ops", {
            "base_revision": changed.json()["revision"], "settings": GATES["claims_risk"]},
            scope=admin)
        assert back.status_code == 200
        wait_until(lambda: score_rest(desk, claims_in_band(desk, 1, 2143, inside=False), "CLM-BACK")
                   .status_code == 200, 10, "flag mode again")


def test_nothing_lost_or_doubled_across_a_sidecar_kill_and_a_postgres_restart(
        stack: Stack, redis_server: RedisServer, tmp_path: Path) -> None:
    database = PostgresServer()
    database.start()
    hook = webhook()
    try:
        sidecar, s_http, s_grpc = review_sidecar(stack, tmp_path, database.url,
                                                 redis_server.url, hook)
        gateway, g_http, _ = gateway_config(
            f"127.0.0.1:{s_http}", f"127.0.0.1:{s_grpc}",
            {"claims_risk": {"backend": "local", "sticky": "header:x-claim-id"}},
            review={"store_url": database.url, "lease_s": 1})
        desk = Desk(f"127.0.0.1:{g_http}", "", f"127.0.0.1:{s_http}",
                    tmp_path / "decisions", database.url, Path(), redis_server.url, hook,
                    stack.triton_http)
        rows = claims_in_band(desk, 12, 2150)
        with running("gateway", gateway, g_http, tmp_path):
            with running("sidecar", sidecar, s_http, tmp_path) as process:
                ids = [score_rest(desk, [r], f"CLM-K-{i}").headers["x-aios-review-id"]
                       for i, r in enumerate(rows[:6])]
                claimed = api(desk, "POST", f"/{ids[0]}/claim", "ann").json()
                assert claimed["state"] == "claimed"
                process.kill()  # kill -9: no shutdown of any kind
                process.wait()
            database.stop()
            down = api(desk, "GET", "")
            assert down.status_code == 503 and "review store unavailable" in down.json()[
                "error"]
            database.start()
            with running("sidecar", sidecar, s_http, tmp_path):
                database.stop()  # a gated decision cannot be queued: 503, as the sync log
                refused = score_rest(desk, [rows[11]], "CLM-K-down")
                assert refused.status_code == 503, refused.text
                assert "review store unavailable" in refused.json()["error"]
                database.start()
                ids += [score_rest(desk, [r], f"CLM-K-{i}").headers["x-aios-review-id"]
                        for i, r in enumerate(rows[6:11], 6)]
                listing = api(desk, "GET", "?limit=1000").json()["reviews"]
                assert sorted(r["id"] for r in listing) == sorted(ids)
                time.sleep(1.1)  # ann's 1 s lease runs out
                assert api(desk, "GET", f"/{ids[0]}").json()["state"] == "pending"
                assert rest_decide(desk, "bob", ids[0], "approve", "", None)[0] == 200
                wait_until(lambda: api(desk, "GET", f"/{ids[0]}").json()["chained"], 10,
                           "chained after the restarts")
        logged = [r for r in records(tmp_path / "decisions") if r.review_id]
        assert sorted(r.review_id for r in logged if not r.kind) == sorted(ids)
        down = [r for r in records(tmp_path / "decisions") if r.business_key == "CLM-K-down"]
        assert [(r.outcome, r.review_id) for r in down] == [("503", "")]
        assert [r.review_id for r in logged if r.kind == "review"] == [ids[0]]
    finally:
        hook.close()
        database.remove()
