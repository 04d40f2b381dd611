"""Governed rollouts on the real stack: Triton serving claims_risk versions 1, 2 and a
test-only version 3 that disagrees with the others on about half the decisions, one
sidecar, two gateway replicas sharing tables, rollouts and counters in Redis, and claims
sent to both replicas all along.

A healthy candidate walks every step to 100% with each step in the route history and its
gate figures; the bad candidate is rolled back in the shadow step by the agreement gate,
naming its figures; killing the driving replica mid-rollout hands the rollout to the
other within 10 s, with no step repeated or skipped. A third gateway (a four-eyes model,
file store) shows a start and a promote waiting for a second subject, the proposer's own
approval refused naming the rule, and an abort needing nobody."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from aios_cli.claims import synthesize_claims
from proto import routing_admin_pb2 as pb
from proto import routing_admin_pb2_grpc as pb_grpc
from tests.helpers import (
    MODEL_REPO,
    REPO,
    STARTUP_TIMEOUT_S,
    StackPorts,
    aios,
    gateway_config,
    http_ready,
    infer_json,
    interrupt_and_wait,
    running,
    stack_config,
    token,
    wait_until,
    write_config,
)
from tests.redis_server import RedisServer

MODEL = "claims_risk"
INTERVAL_S, LEASE_S = 0.5, 2.0
THRESHOLD = 0.5


def who(subject: str, scope: str = "routes:read routes:write routes:approve") -> dict[str, str]:
    return {"authorization": f"Bearer {token(scope, subject=subject)}"}


ALICE, CAROL = who("alice"), who("carol")
BOB = who("bob", "routes:read routes:write")


def model_repo(tmp: Path) -> Path:
    """claims_risk with versions 1 and 2 as shipped and the test's version 3 (version 2's
    network, scores turned around for odd claim amounts; its golden set to match)."""
    repo = tmp / "model_repo"
    model = repo / MODEL
    model.mkdir(parents=True)
    shipped = MODEL_REPO / MODEL
    shutil.copy(shipped / "config.pbtxt", model)
    (model / "model.py").symlink_to(shipped / "model.py")
    for version in ("1", "2"):
        (model / version).symlink_to(shipped / version)
    three = model / "3"
    three.mkdir()
    shutil.copy(REPO / "tests" / "rollout_models" / "claims_risk_3" / "model.py", three)
    for name in ("model.pt", "profile.json"):
        (three / name).symlink_to(shipped / "2" / name)
    golden = json.loads((shipped / "2" / "golden.json").read_text())
    inputs = np.asarray(golden["inputs"], dtype=np.float32)
    scores = np.asarray(golden["outputs"], dtype=np.float32)
    odd = (inputs[:, 0].astype(np.int64) % 2 == 1).reshape(-1, 1)
    golden["outputs"] = np.where(odd, np.float32(1) - scores, scores).tolist()
    golden["version"] = 3
    (three / "golden.json").write_text(json.dumps(golden))
    return repo


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Triton and a sidecar (`aios up`) on the three-version repository."""
    tmp = tmp_path_factory.mktemp("rollout-stack")
    ports = StackPorts.allocate()
    config = stack_config(ports, tmp, model_repo(tmp))
    config["gateway"]["models"] = {MODEL: {"backend": "local"}}
    path = write_config(tmp / "stack.yaml", config)
    log = tmp / "stack.log"
    process = aios("up", "--config", str(path), "--log-dir", str(tmp / "logs"), log=log)
    try:
        wait_until(lambda: http_ready(ports.gateway_http), STARTUP_TIMEOUT_S, "stack ready",
                   process, log)
        yield f"127.0.0.1:{ports.sidecar_http}", f"127.0.0.1:{ports.sidecar_grpc}"
    finally:
        interrupt_and_wait(process)


TARGETS = {"one": {"backend": "local", "version": "1", "weight": 100},
           "two": {"backend": "local", "version": "2", "weight": 0},
           "three": {"backend": "local", "version": "3", "weight": 0}}


class Replica:
    def __init__(self, url: str, grpc_target: str, process: subprocess.Popen[bytes]) -> None:
        self.url, self.grpc, self.process = url, grpc_target, process


@pytest.fixture(scope="module")
def replicas(sidecar: tuple[str, str], redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    tmp = tmp_path_factory.mktemp("rollout-replicas")
    routing = {"store": "redis", "redis_url": redis_server.url,
               "key_prefix": f"aios:test-rollouts-{time.time_ns()}:",
               "rollout_interval_s": INTERVAL_S, "rollout_lease_s": LEASE_S}
    with contextlib.ExitStack() as services:
        out = []
        for _ in range(2):
            config, http_port, grpc_port = gateway_config(
                *sidecar, {MODEL: {"targets": TARGETS}}, routing=routing)
            process = services.enter_context(running("gateway", config, http_port, tmp))
            out.append(Replica(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}",
                               process))
        yield out


class Traffic:
    """Claims sent one per request, round robin over the live replicas, until stopped."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]

    def _run(self, seed: int) -> None:
        claims, _ = synthesize_claims(20_000, seed=100 + seed)
        headers = {"authorization": f"Bearer {token()}", "content-type": "application/json"}
        with httpx.Client(timeout=10) as client:
            for i, claim in enumerate(claims):
                if self._stop.is_set():
                    return
                url = self.urls[i % len(self.urls)]
                try:
                    resp = client.post(f"{url}/v2/models/{MODEL}/infer",
                                       content=infer_json([claim.tolist()]), headers=headers)
                    if resp.status_code != 200:
                        self.failed.append(f"{resp.status_code} {resp.text[:200]}")
                except httpx.TransportError as exc:
                    if url in self.urls:  # a replica the test killed: expected
                        self.failed.append(repr(exc))
                self.sent += 1
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.fixture(scope="module")
def traffic(replicas: list[Replica]) -> Iterator[Traffic]:
    with Traffic([r.url for r in replicas]) as running_traffic:
        yield running_traffic
    assert not running_traffic.failed, running_traffic.failed[:5]


def rollout(url: str, headers: dict[str, str] = ALICE) -> dict[str, Any]:
    resp = httpx.get(f"{url}/admin/rollouts/{MODEL}", headers=headers)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def settled(url: str, states: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (doc := rollout(url))["state"] not in states:
        assert time.monotonic() < deadline, json.dumps(doc, indent=1)[-3000:]
        time.sleep(0.2)
    return doc


def weights(url: str) -> dict[str, int]:
    doc = httpx.get(f"{url}/admin/routes/{MODEL}", headers=ALICE).json()
    return {n: t["weight"] for n, t in doc["targets"].items()}


def serving(url: str, target: str) -> dict[str, int]:
    """Put all of the model's traffic on ``target`` (each test starts from its own table)."""
    table = httpx.get(f"{url}/admin/routes/{MODEL}", headers=ALICE).json()
    wanted = {name: 100 if name == target else 0 for name in table["targets"]}
    if weights(url) != wanted:
        resp = httpx.put(f"{url}/admin/routes/{MODEL}/weights", headers=ALICE, json={
            "base_revision": table["revision"], "weights": wanted, "reason": "test setup"})
        assert resp.status_code == 200, resp.text
    return wanted


def start(url: str, plan: dict[str, Any], headers: dict[str, str] = ALICE,
          status: int = 201) -> dict[str, Any]:
    resp = httpx.post(f"{url}/admin/rollouts/{MODEL}", headers=headers, json={
        "output": "risk_score", "threshold": THRESHOLD, **plan})
    assert resp.status_code == status, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def rollout_changes(url: str, ident: str) -> list[dict[str, Any]]:
    """The route history's changes made by rollout ``ident``, oldest first."""
    changes = httpx.get(f"{url}/admin/routes/{MODEL}/history?limit=1000",
                        headers=ALICE).json()["changes"]
    return [c for c in reversed(changes) if c["who"] == f"rollout:{ident}"]


def test_a_healthy_candidate_walks_every_step_to_100_percent(
        replicas: list[Replica], traffic: Traffic) -> None:
    first, second = replicas
    serving(first.url, "one")
    begun = start(first.url, {"candidate": "2", "steps": [0, 50, 100], "dwell_s": 1,
                              "min_requests": 60, "reason": "v2 after replay",
                              "gates": {"min_agreement": 0.85, "max_p99_ms": 2000}})
    assert (begun["stable"], begun["candidate"], begun["state"]) == ("one", "two", "running")
    done = settled(second.url, ("completed", "rolled_back", "paused"), 90)
    assert done["state"] == "completed", done["events"]
    assert weights(first.url) == weights(second.url) == {"one": 0, "two": 100, "three": 0}
    steps = [(e["what"], e["step"], e["percent"]) for e in done["events"]]
    assert steps == [("started", 0, 0), ("step", 1, 50), ("step", 2, 100),
                     ("completed", 2, 100)]
    for event in done["events"][1:]:  # every move names the gates it went by, all passing
        assert {g["gate"] for g in event["gates"]} >= {"drift", "parity"}
        assert all(g["passed"] for g in event["gates"]), event
    changes = rollout_changes(first.url, done["id"])
    # Step 2 (100%) takes the shadow away too: completing it has nothing left to change.
    assert [(c["action"], c["evidence"]["step"], c["evidence"]["percent"]) for c in changes] \
        == [("rollout_step", 0, 0), ("rollout_step", 1, 50), ("rollout_step", 2, 100)]
    assert [c["after"].get("targets", {}).get("two", {}).get("weight") for c in changes[1:3]] \
        == [50, 100]
    agreement = next(g for g in changes[1]["evidence"]["gates"] if g["gate"] == "agreement")
    assert agreement["passed"] and agreement["n"] >= 60 and "95% CI" in agreement["detail"]
    mirrored = changes[0]["after"]["shadow"]
    assert (mirrored["version"], mirrored["threshold"], mirrored["fraction"]) == \
        ("2", THRESHOLD, 1.0)
    # The shadow the rollout measured agreement with is gone once it is over.
    table = httpx.get(f"{first.url}/admin/routes/{MODEL}", headers=ALICE).json()
    assert table["shadow"] is None


def test_a_candidate_that_disagrees_is_rolled_back_naming_the_gate(
        replicas: list[Replica], traffic: Traffic) -> None:
    first, second = replicas
    before = serving(first.url, "two")
    begun = start(second.url, {"candidate": "3", "steps": [0, 25, 100], "dwell_s": 1,
                               "min_requests": 60, "gates": {"min_agreement": 0.8}})
    assert begun["stable"] == "two"
    done = settled(first.url, ("completed", "rolled_back", "paused"), 60)
    assert done["state"] == "rolled_back", done["events"]
    rollback = done["events"][-1]
    assert rollback["what"] == "rollback" and rollback["step"] == 0
    assert "agreement" in rollback["note"] and "95% CI" in rollback["note"], rollback
    failed = {g["gate"]: g for g in rollback["gates"] if g["passed"] is False}
    assert "agreement" in failed and failed["agreement"]["value"] < 0.8
    assert weights(first.url) == weights(second.url) == before
    end = rollout_changes(first.url, done["id"])[-1]
    assert end["action"] == "rollout_end" and end["evidence"]["state"] == "rolled_back"
    assert any(g["gate"] == "agreement" and g["passed"] is False
               for g in end["evidence"]["gates"])
    metrics = httpx.get(f"{first.url}/metrics").text + httpx.get(f"{second.url}/metrics").text
    assert 'aios_rollout_rollbacks_total{gate="agreement",model="claims_risk"} 1.0' in metrics


def test_the_other_replica_takes_over_when_the_driver_dies(
        replicas: list[Replica], traffic: Traffic) -> None:
    serving(replicas[0].url, "one")
    begun = start(replicas[0].url, {"candidate": "2", "steps": [0, 25, 50, 75, 100],
                                    "dwell_s": 2.5, "min_requests": 30,
                                    # About the driver, not the evidence: once version 2 has
                                    # seen a few thousand of this traffic's rows its drift
                                    # test flags policy_tenure_months (seen here; followed
                                    # up in the issue), which would end the rollout early.
                                    "gates": {"min_agreement": 0.8, "drift": False}})
    deadline = time.monotonic() + 40
    while (doc := rollout(replicas[0].url))["step"] < 1 or not doc["applied"]:
        assert doc["state"] == "running" and time.monotonic() < deadline, doc["events"]
        time.sleep(0.1)
    by_replica = {rollout(r.url)["answered_by"]: r for r in replicas}
    driver = by_replica[doc["driver"]]
    survivor = next(r for r in replicas if r is not driver)
    traffic.urls.remove(driver.url)
    os.kill(driver.process.pid, signal.SIGKILL)
    driver.process.wait(10)
    killed = time.monotonic()
    survivor_id = rollout(survivor.url)["answered_by"]
    while rollout(survivor.url)["driver"] != survivor_id:
        assert time.monotonic() - killed < 10, "no replica took the rollout over in 10 s"
        time.sleep(0.1)
    done = settled(survivor.url, ("completed", "rolled_back", "paused"), 60)
    assert done["state"] == "completed", done["events"][-1]
    moves = [e["step"] for e in done["events"] if e["what"] == "step"]
    assert moves == [1, 2, 3, 4], done["events"]
    applied = [c["evidence"]["step"] for c in rollout_changes(survivor.url, begun["id"])
               if c["action"] == "rollout_step"]
    assert applied == [0, 1, 2, 3, 4], applied
    assert weights(survivor.url) == {"one": 0, "two": 100, "three": 0}


BAD_PLANS = [
    ({"candidate": "2", "steps": [0, 50, 40, 100]}, 400, "steps.2: steps must rise"),
    ({"candidate": "2", "steps": [0, 50]}, 400, "steps: the last step must be 100"),
    ({"candidate": "9"}, 400, "candidate: the table has no target named or serving version"),
    ({"candidate": "2", "colour": "red"}, 400, "colour"),
    ({"candidate": "2", "dwell_s": "long"}, 400, "dwell_s"),
]


@pytest.mark.parametrize(("plan", "status", "message"), BAD_PLANS)
def test_bad_plans_are_refused_naming_the_field(replicas: list[Replica], plan: dict[str, Any],
                                                status: int, message: str) -> None:
    url = next(r.url for r in replicas if r.process.poll() is None)
    resp = httpx.post(f"{url}/admin/rollouts/{MODEL}", headers=ALICE, json=plan)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


# -- four-eyes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def governed(sidecar: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Replica]:
    tmp = tmp_path_factory.mktemp("rollout-four-eyes")
    targets = {"one": {"backend": "local", "version": "1", "weight": 100},
               "two": {"backend": "local", "version": "2", "weight": 0}}
    config, http_port, grpc_port = gateway_config(
        *sidecar, {MODEL: {"targets": targets}},
        routing={"four_eyes": [MODEL], "rollout_interval_s": INTERVAL_S,
                 "state_file": str(tmp / "routes.json")})
    with running("gateway", config, http_port, tmp) as process:
        yield Replica(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process)


# About approvals, not evidence: by the time these run, this module's sidecar has seen
# thousands of rows, and the drift monitor's calibrated false alarms (~4% of 20,000-row
# stationary runs, loadtests/README.md) would now and then roll the rollout back between
# two of the test's calls (seen in a run: "is rolled_back: nothing to promote").
QUIET = {"drift": False}


def act(url: str, action: str, headers: dict[str, str], status: int = 200) -> dict[str, Any]:
    resp = httpx.post(f"{url}/admin/rollouts/{MODEL}/{action}", headers=headers,
                      json={"reason": f"{action} it"})
    assert resp.status_code == status, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def test_a_four_eyes_rollout_waits_for_a_second_subject(governed: Replica) -> None:
    url = governed.url
    waiting = start(url, {"candidate": "2", "dwell_s": 3600, "gates": QUIET}, status=202)
    assert waiting["state"] == "awaiting_approval" and "approve" in waiting["note"]
    assert weights(url) == {"one": 100, "two": 0}
    refused = act(url, "approve", ALICE, 403)
    assert refused["error"] == (
        "four-eyes: 'alice' asked for this rollout start of 'claims_risk' and cannot "
        "approve it; a second subject with routes:approve must")
    assert "routes:approve" in act(url, "approve", BOB, 403)["error"]
    assert act(url, "approve", CAROL)["state"] == "running"
    shadow = httpx.get(f"{url}/admin/routes/{MODEL}", headers=ALICE).json()["shadow"]
    assert (shadow["version"], shadow["threshold"]) == ("2", THRESHOLD)  # step 0: shadow
    asked = act(url, "promote", ALICE)
    assert (asked["state"], asked["promote_by"]) == ("running", "alice")
    assert weights(url) == {"one": 100, "two": 0}
    assert act(url, "approve", ALICE, 403)["error"].startswith(
        "four-eyes: 'alice' asked for this rollout promote")
    promoted = act(url, "approve", CAROL)
    assert promoted["state"] == "completed"
    assert weights(url) == {"one": 0, "two": 100}
    history = httpx.get(f"{url}/admin/routes/{MODEL}/history", headers=ALICE).json()
    end = history["changes"][0]
    assert (end["action"], end["evidence"]["percent"]) == ("rollout_end", 100)
    # The history names who asked, who approved, and why.
    assert (end["evidence"]["started_by"], end["evidence"]["approved_by"]) == ("alice", "carol")
    assert end["evidence"]["event"] == {"what": "approved promote", "who": "carol",
                                        "reason": "approve it"}


def test_an_abort_needs_no_approval_and_grpc_sees_the_same(governed: Replica) -> None:
    url = governed.url
    start(url, {"candidate": "one", "dwell_s": 3600, "gates": QUIET}, headers=BOB, status=202)
    assert act(url, "approve", CAROL)["state"] == "running"
    channel = grpc.insecure_channel(governed.grpc)
    stub = pb_grpc.RoutingAdminStub(channel)
    metadata = (("authorization", BOB["authorization"]),)
    got = stub.GetRollout(pb.GetRolloutRequest(model=MODEL), metadata=metadata)
    assert (got.state, got.stable, got.candidate, got.percent) == ("running", "two", "one", 0)
    aborted = stub.RolloutAction(pb.RolloutActionRequest(model=MODEL, action="abort",
                                                         reason="adjusters complain"),
                                 metadata=metadata)
    assert aborted.state == "aborted"
    assert json.loads(aborted.document_json)["events"][-1]["who"] == "bob"
    assert weights(url) == {"one": 0, "two": 100}
    with pytest.raises(grpc.RpcError) as caught:
        stub.RolloutAction(pb.RolloutActionRequest(model=MODEL, action="resume"),
                           metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.ABORTED  # a Conflict, as a stale revision
    assert "is aborted: nothing to resume" in str(caught.value.details())
    with pytest.raises(grpc.RpcError) as caught:
        stub.StartRollout(pb.StartRolloutRequest(model=MODEL, plan_json="{"),
                          metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_the_cli_shows_a_rollout_as_a_table(governed: Replica, tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text("{}")
    base = [sys.executable, "-m", "aios_cli", "rollout", "status", MODEL, "--config",
            str(config), "--url", governed.url, "--token", token("routes:read", subject="x")]
    shown = subprocess.run(base, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    assert "ABORTED" in shown.stdout and "two → one" in shown.stdout
    assert "aborted" in shown.stdout and "adjusters complain" in shown.stdout
    machine = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=30,
                             cwd=REPO)
    assert json.loads(machine.stdout)["state"] == "aborted"
    listed = subprocess.run([*base[:5], *base[6:]], capture_output=True, text=True,
                            timeout=30, cwd=REPO)
    assert "completed" in listed.stdout and "aborted" in listed.stdout, listed.stdout
