"""Four-eyes routing changes on two gateway replicas sharing their tables in Redis: a
change to claims_risk waits as a proposal; its proposer's own approval is refused naming
the rule; a second subject's approval (on the other replica) applies it, and the history
names both subjects and both reasons; a rejected one never applies; a stale one fails at
approval; an emergency rollback needs no approval; gRPC says which proposal a change
became; the CLI lists and approves."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from proto import routing_admin_pb2 as pb
from proto import routing_admin_pb2_grpc as pb_grpc
from tests.conftest import Stack
from tests.helpers import REPO, gateway_config, running, token
from tests.redis_server import RedisServer

MODEL = "claims_risk"


def who(subject: str, scope: str = "routes:read routes:write routes:approve") -> dict[str, str]:
    return {"authorization": f"Bearer {token(scope, subject=subject)}"}


ALICE, CAROL, DAVE = who("alice"), who("carol"), who("dave")
BOB = who("bob", "routes:read routes:write")


@pytest.fixture(scope="module")
def replicas(stack: Stack, redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, str]]]:
    tmp = tmp_path_factory.mktemp("four-eyes")
    routing = {"store": "redis", "redis_url": redis_server.url,
               "key_prefix": f"aios:test-4eyes-{time.time_ns()}:", "four_eyes": [MODEL]}
    models = {MODEL: {"targets": {
        "stable": {"backend": "local", "version": "2", "weight": 90},
        "canary": {"backend": "local", "version": "1", "weight": 10}}}}
    with contextlib.ExitStack() as services:
        out = []
        for _ in range(2):
            config, http_port, grpc_port = gateway_config(
                stack.sidecar_http, stack.sidecar_grpc, models, routing=routing)
            services.enter_context(running("gateway", config, http_port, tmp))
            out.append((f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"))
        yield out


def table(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{url}/admin/routes/{MODEL}", headers=ALICE).json()
    return doc


def weights(url: str) -> dict[str, int]:
    return {n: t["weight"] for n, t in table(url)["targets"].items()}


def propose(url: str, stable: int, canary: int, headers: dict[str, str] = ALICE,
            base: int | None = None) -> dict[str, Any]:
    resp = httpx.put(f"{url}/admin/routes/{MODEL}/weights", headers=headers, json={
        "base_revision": table(url)["revision"] if base is None else base,
        "reason": f"to {canary}%", "weights": {"stable": stable, "canary": canary}})
    assert resp.status_code == 202, resp.text
    proposal: dict[str, Any] = resp.json()["proposal"]
    return proposal


def settle(url: str, expected: dict[str, int]) -> None:
    deadline = time.monotonic() + 5
    while weights(url) != expected:
        assert time.monotonic() < deadline, weights(url)
        time.sleep(0.1)


def test_a_change_waits_for_a_second_subject_and_records_both(
        replicas: list[tuple[str, str]]) -> None:
    (a, _), (b, _) = replicas
    before = weights(a)
    proposal = propose(a, 50, 50)
    assert (proposal["state"], proposal["proposer"]) == ("pending", "alice")
    assert weights(a) == weights(b) == before, "nothing applies before approval"
    own = httpx.post(f"{a}/admin/proposals/{proposal['id']}/approve", headers=ALICE,
                     json={"reason": "mine"})
    assert (own.status_code, own.json()) == (403, {"error": (
        f"four-eyes: 'alice' proposed this change to '{MODEL}' and cannot approve it; a "
        "second subject with routes:approve must")})
    unscoped = httpx.post(f"{a}/admin/proposals/{proposal['id']}/approve", headers=BOB)
    assert (unscoped.status_code, unscoped.json()) == (
        403, {"error": "token lacks the scope 'routes:approve'"})
    listed = httpx.get(f"{b}/admin/proposals?state=pending", headers=CAROL).json()
    assert proposal["id"] in [p["id"] for p in listed["proposals"]], "both replicas see it"
    done = httpx.post(f"{b}/admin/proposals/{proposal['id']}/approve", headers=CAROL,
                      json={"reason": "replay agrees 98%"})
    assert done.status_code == 200, done.text
    assert (done.json()["proposal"]["state"], done.json()["proposal"]["resolver"]) == (
        "applied", "carol")
    settle(a, {"stable": 50, "canary": 50})
    assert weights(b) == {"stable": 50, "canary": 50}
    change = httpx.get(f"{a}/admin/routes/{MODEL}/history?limit=1", headers=ALICE
                       ).json()["changes"][0]
    assert (change["who"], change["reason"], change["approved_by"],
            change["approval_reason"], change["proposal_id"]) == (
        "alice", "to 50%", "carol", "replay agrees 98%", proposal["id"])
    again = httpx.post(f"{a}/admin/proposals/{proposal['id']}/approve", headers=DAVE)
    assert again.status_code == 409
    assert again.json()["error"].startswith(f"proposal {proposal['id']} is applied by 'carol'")


def test_a_rejected_change_never_applies(replicas: list[tuple[str, str]]) -> None:
    (a, _), (b, _) = replicas
    before = weights(a)
    proposal = propose(a, 0, 100)
    resp = httpx.post(f"{b}/admin/proposals/{proposal['id']}/reject", headers=DAVE,
                      json={"reason": "too early"})
    assert resp.status_code == 200
    assert (resp.json()["proposal"]["state"], resp.json()["proposal"]["resolution"]) == (
        "rejected", "too early")
    time.sleep(1.0)
    assert weights(a) == weights(b) == before


def test_a_stale_proposal_fails_at_approval(replicas: list[tuple[str, str]]) -> None:
    (a, _), (b, _) = replicas
    stale = propose(a, 70, 30)
    fresh = propose(a, 80, 20)
    assert httpx.post(f"{b}/admin/proposals/{fresh['id']}/approve", headers=CAROL
                      ).status_code == 200
    settle(a, {"stable": 80, "canary": 20})
    resp = httpx.post(f"{a}/admin/proposals/{stale['id']}/approve", headers=CAROL)
    assert resp.status_code == 409
    assert "not" in resp.json()["error"] and "revision" in resp.json()["error"]
    kept = httpx.get(f"{a}/admin/proposals?model={MODEL}&state=failed", headers=ALICE).json()
    assert stale["id"] in [p["id"] for p in kept["proposals"]]
    assert weights(a) == {"stable": 80, "canary": 20}


def test_an_emergency_rollback_needs_no_approval(replicas: list[tuple[str, str]]) -> None:
    (a, _), (b, _) = replicas
    before = weights(a)
    proposal = propose(a, 10, 90)
    assert httpx.post(f"{b}/admin/proposals/{proposal['id']}/approve", headers=CAROL
                      ).status_code == 200
    settle(a, {"stable": 10, "canary": 90})
    resp = httpx.post(f"{a}/admin/routes/{MODEL}/rollback", headers=BOB,
                      json={"reason": "canary errors"})
    assert resp.status_code == 200, resp.text
    assert {n: t["weight"] for n, t in resp.json()["targets"].items()} == before
    settle(b, before)
    change = httpx.get(f"{a}/admin/routes/{MODEL}/history?limit=1", headers=ALICE
                       ).json()["changes"][0]
    assert (change["who"], change["action"], change["approved_by"]) == (
        "bob", "rollback", "")


def test_the_whole_four_eyes_flow_over_grpc(replicas: list[tuple[str, str]]) -> None:
    (a, grpc_a), (_, grpc_b) = replicas
    before = table(a)

    def as_(headers: dict[str, str]) -> tuple[tuple[str, str]]:
        return (("authorization", headers["authorization"]),)

    with grpc.insecure_channel(grpc_a) as one, grpc.insecure_channel(grpc_b) as other:
        a_admin, b_admin = pb_grpc.RoutingAdminStub(one), pb_grpc.RoutingAdminStub(other)
        reply = a_admin.SetWeights(pb.SetWeightsRequest(
            model=MODEL, base_revision=before["revision"], reason="over gRPC",
            weights={"stable": 60, "canary": 40}), metadata=as_(ALICE))
        assert reply.proposal_id and reply.revision == before["revision"]
        listed = b_admin.ListProposals(pb.ListProposalsRequest(model=MODEL, state="pending"),
                                       metadata=as_(CAROL))
        assert reply.proposal_id in [p.id for p in listed.proposals]
        with pytest.raises(grpc.RpcError) as own:
            a_admin.Approve(pb.AnswerRequest(id=reply.proposal_id), metadata=as_(ALICE))
        assert own.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (own.value.details() or "").startswith("four-eyes: 'alice' proposed")
        done = b_admin.Approve(pb.AnswerRequest(id=reply.proposal_id, reason="ok"),
                               metadata=as_(CAROL))
        assert (done.state, done.resolver, done.proposer) == ("applied", "carol", "alice")
        assert json.loads(done.body_json)["weights"] == {"stable": 60, "canary": 40}
        settle(a, {"stable": 60, "canary": 40})
        change = a_admin.History(pb.HistoryRequest(model=MODEL, limit=1),
                                 metadata=as_(ALICE)).changes[0]
        assert (change.who, change.approved_by, change.proposal_id) == (
            "alice", "carol", reply.proposal_id)
        back = a_admin.Rollback(pb.RollbackRequest(model=MODEL, reason="emergency"),
                                metadata=as_(BOB))
        assert {t.name: t.weight for t in back.targets} == {
            n: t["weight"] for n, t in before["targets"].items()}


def test_the_cli_lists_and_approves(replicas: list[tuple[str, str]]) -> None:
    (a, _), _ = replicas
    proposal = propose(a, 55, 45)

    def cli(*args: str, who: dict[str, str] = CAROL) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aios_cli", "routes", *args, "--url", a,
                               "--token", who["authorization"].removeprefix("Bearer ")],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    listed = cli("proposals", "--state", "pending")
    assert listed.returncode == 0, listed.stderr
    assert proposal["id"] in listed.stdout and "alice" in listed.stdout
    approved = cli("approve", proposal["id"], "--reason", "looks right")
    assert approved.returncode == 0, approved.stderr
    assert "applied by carol" in approved.stdout
    assert weights(a) == {"stable": 55, "canary": 45}
    history = cli("history", MODEL, "--limit", "1")
    assert "alice, approved by carol" in history.stdout
