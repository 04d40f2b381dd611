"""Canary routing, shadows and live changes through the admin API, against the real stack."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from aios.auditlog import records, verify
from proto import routing_admin_pb2 as pb
from proto import routing_admin_pb2_grpc as pb_grpc
from tests.conftest import Stack
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import (
    MODEL_REPO,
    REPO,
    bearer,
    free_ports,
    gateway_config,
    infer_json,
    running,
    token,
)
from tests.redis_server import RedisServer

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
OPS = {"authorization": f"Bearer {token('routes:read routes:write', subject='ops-alice')}"}
CANARY = {"targets": {"stable": {"backend": "local", "version": "1", "weight": 90},
                      "canary": {"backend": "local", "version": "2", "weight": 10}},
          "sticky": "header:x-claim-id"}


@dataclass(frozen=True)
class Gateway:
    http: str
    grpc: str
    process: subprocess.Popen[bytes]
    changes: Path  # its change log

    @property
    def url(self) -> str:
        return f"http://{self.http}"


def start_gateway(services: contextlib.ExitStack, stack: Stack, models: dict[str, Any],
                  tmp: Path, **extra: Any) -> Gateway:
    """A gateway in front of the session's sidecar, stopped when ``services`` closes."""
    changes = tmp / "route-changes"
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, models,
        **{"change_log": {"directory": str(changes)}, **extra})
    process = services.enter_context(running("gateway", config, http_port, tmp))
    return Gateway(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process, changes)


@pytest.fixture(scope="module")
def canary(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with contextlib.ExitStack() as services:
        yield start_gateway(services, stack, {"claims_risk": CANARY, "slow": {"backend": "local"}},
                            tmp_path_factory.mktemp("canary"))


def get_route(gw: Gateway, model: str = "claims_risk") -> dict[str, Any]:
    resp = httpx.get(f"{gw.url}/admin/routes/{model}", headers=OPS)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def put(gw: Gateway, path: str, body: dict[str, Any],
        headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.put(f"{gw.url}/admin/routes/{path}", json=body, headers=headers or OPS)


def score(gw: Gateway, claim_id: str, batch: list[list[float]] | None = None,
          params: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{gw.url}/v2/models/claims_risk/infer",
                      content=infer_json(batch or [CLAIM], params),
                      headers={**bearer(), "x-claim-id": claim_id}, timeout=30)


def test_response_names_what_served_it(canary: Gateway) -> None:
    route = get_route(canary)
    seen = {}
    for i in range(200):
        resp = score(canary, f"claim-{i}")
        assert resp.status_code == 200
        target = resp.headers["x-aios-target"]
        assert resp.headers["x-aios-route-revision"] == str(route["revision"])
        assert resp.json()["model_version"] == route["targets"][target]["version"]
        seen[f"claim-{i}"] = target
    assert set(seen.values()) == {"stable", "canary"}
    again = {k: score(canary, k).headers["x-aios-target"] for k in list(seen)[:50]}
    assert again == {k: seen[k] for k in again}, "sticky: a claim stays on its target"


def test_grpc_trailers_name_the_target(canary: Gateway) -> None:
    with grpc.insecure_channel(canary.grpc) as channel:
        _, call = channel.unary_unary(INFER).with_call(
            grpc_request(), metadata=(*bearer().items(), ("x-claim-id", "claim-7")), timeout=10)
    trailers = dict(call.trailing_metadata())
    assert trailers["x-aios-target"] in {"stable", "canary"}
    assert trailers["x-aios-route-revision"] == str(get_route(canary)["revision"])


INVALID = {
    "negative weight": ("weights", {"weights": {"canary": -5}},
                        "weights.canary: must be >= 0, got -5"),
    "unknown target": ("weights", {"weights": {"blue": 5}},
                       "weights.blue: model 'claims_risk' has no target 'blue'"),
    "all weights zero": ("weights", {"weights": {"stable": 0, "canary": 0}},
                         "targets: all weights are zero"),
    "unknown backend": ("", {"targets": {"a": {"backend": "mars", "version": "1"}}},
                        "targets.a.backend: unknown backend 'mars' (known: local)"),
    "unknown version": ("", {"targets": {"a": {"backend": "local", "version": "9"}}},
                        "targets.a.version: backend 'local' serves no version '9' of model "
                        "'claims_risk'"),
    "bad sticky": ("", {"targets": {"a": {"backend": "local"}}, "sticky": "cookie"},
                   "sticky: String should match pattern"),
    "bad fraction": ("shadow", {"shadow": {"backend": "local", "fraction": 2}},
                     "fraction: Input should be less than or equal to 1"),
    "no revision": ("weights", {"weights": {"canary": 5}}, "base_revision: Field required"),
    "string weight": ("weights", {"weights": {"canary": "5"}},
                      "weights.canary: Input should be a valid integer"),
    "float weight": ("weights", {"weights": {"canary": 5.0}},
                     "weights.canary: Input should be a valid integer"),
    "string target weight": ("", {"targets": {"a": {"backend": "local", "weight": "5"}}},
                             "targets.a.weight: Input should be a valid integer"),
    "numeric version": ("", {"targets": {"a": {"backend": "local", "version": 1}}},
                        "targets.a.version: Input should be a valid string"),
    "string fraction": ("shadow", {"shadow": {"backend": "local", "fraction": "0.5"}},
                        "fraction: Input should be a valid number"),
}


@pytest.mark.parametrize(("suffix", "body", "error"), INVALID.values(), ids=INVALID.keys())
def test_invalid_changes_are_400_naming_the_field(canary: Gateway, suffix: str,
                                                  body: dict[str, Any], error: str) -> None:
    if "base_revision" not in error:
        body = {"base_revision": get_route(canary)["revision"], **body}
    path = "claims_risk" + (f"/{suffix}" if suffix else "")
    resp = put(canary, path, body)
    assert resp.status_code == 400
    assert error in resp.json()["error"], resp.json()


def test_string_revision_is_400(canary: Gateway) -> None:
    resp = put(canary, "claims_risk/weights", {"base_revision": "1", "weights": {"canary": 5}})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("base_revision: Input should be a valid integer")


def test_a_new_model_is_created_from_revision_0(canary: Gateway) -> None:
    # A model the backend does not serve yet (no version pinned: none to check).
    body = {"base_revision": 0, "targets": {"only": {"backend": "local"}},
            "reason": "new model"}
    resp = put(canary, "claims_risk_new", body)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["revision"], resp.json()["targets"]["only"]["weight"]) == (1, 1)
    again = put(canary, "claims_risk_new", body)
    assert (again.status_code, again.json()) == (409, {
        "error": "routing table of 'claims_risk_new' is at revision 1, not 0"})


def test_changes_need_the_scope(canary: Gateway) -> None:
    reader = {"authorization": f"Bearer {token('routes:read')}"}
    resp = put(canary, "claims_risk/weights", {"base_revision": 1, "weights": {"canary": 5}},
               reader)
    assert (resp.status_code, resp.json()) == (403, {"error": "token lacks the scope "
                                                              "'routes:write'"})
    inferer = {"authorization": f"Bearer {token('infer:*')}"}
    assert httpx.get(f"{canary.url}/admin/routes", headers=inferer).status_code == 403
    assert httpx.get(f"{canary.url}/admin/routes").status_code == 401


def test_weight_change_is_recorded_and_stale_revisions_conflict(canary: Gateway) -> None:
    before = get_route(canary)
    body = {"base_revision": before["revision"], "weights": {"stable": 80, "canary": 20},
            "reason": "canary looks healthy"}
    resp = put(canary, "claims_risk/weights", body)
    assert resp.status_code == 200, resp.text
    after = resp.json()
    assert after["revision"] == before["revision"] + 1
    assert after["targets"]["canary"]["weight"] == 20
    stale = put(canary, "claims_risk/weights", body)
    assert stale.status_code == 409
    assert stale.json()["error"] == (f"routing table of 'claims_risk' is at revision "
                                     f"{after['revision']}, not {before['revision']}")
    history = httpx.get(f"{canary.url}/admin/routes/claims_risk/history", headers=OPS).json()
    latest = history["changes"][0]
    assert (latest["who"], latest["action"], latest["reason"], latest["revision"]) == (
        "ops-alice", "set_weights", "canary looks healthy", after["revision"])
    assert latest["before"]["targets"]["canary"]["weight"] == before["targets"]["canary"][
        "weight"]
    assert latest["after"]["targets"]["canary"]["weight"] == 20
    assert score(canary, "x").headers["x-aios-route-revision"] == str(after["revision"])
    # The change is also in the gateway's tamper-evident change log.
    chained = [r for r in records(canary.changes) if r.route_revision == after["revision"]]
    assert [(r.kind, r.subject, r.route_change.action, r.route_change.reason)
            for r in chained] == [("route_change", "ops-alice", "set_weights",
                                   "canary looks healthy")]
    assert json.loads(chained[0].route_change.after_json)["targets"]["canary"]["weight"] == 20
    assert verify(canary.changes).intact


def test_admin_over_grpc(canary: Gateway) -> None:
    md = tuple(OPS.items())
    with grpc.insecure_channel(canary.grpc) as channel:
        stub = pb_grpc.RoutingAdminStub(channel)
        route = stub.GetRoute(pb.GetRouteRequest(model="claims_risk"), metadata=md)
        assert {t.name for t in route.targets} == {"stable", "canary"}
        updated = stub.SetWeights(pb.SetWeightsRequest(
            model="claims_risk", base_revision=route.revision,
            weights={"stable": 85, "canary": 15}, reason="over gRPC"), metadata=md)
        assert updated.revision == route.revision + 1
        assert {t.name: t.weight for t in updated.targets} == {"stable": 85, "canary": 15}
        with pytest.raises(grpc.RpcError) as stale:
            stub.SetWeights(pb.SetWeightsRequest(model="claims_risk",
                                                 base_revision=route.revision,
                                                 weights={"canary": 1}), metadata=md)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        with pytest.raises(grpc.RpcError) as denied:
            stub.ListRoutes(pb.ListRoutesRequest(), metadata=tuple(bearer().items()))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        history = stub.History(pb.HistoryRequest(model="claims_risk", limit=1), metadata=md)
        assert history.changes[0].reason == "over gRPC"
        assert json.loads(history.changes[0].after_json)["targets"]["canary"]["weight"] == 15


def test_cli_sets_weights(canary: Gateway) -> None:
    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aios_cli", "routes", *args, "--url",
                               canary.url, "--token", OPS["authorization"].split()[1]],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    before = get_route(canary)["targets"]["canary"]["weight"]
    new = 30 if before != 30 else 31  # so that the history shows a move
    out = aios("set", "claims_risk", f"stable={100 - new}", f"canary={new}", "--reason",
               "from the CLI", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["targets"]["canary"]["weight"] == new
    history = json.loads(aios("history", "claims_risk", "--limit", "1", "--json").stdout)
    assert history["changes"][0]["reason"] == "from the CLI"
    listed = aios("list").stdout.splitlines()  # for people: a table, a row per target
    assert listed[0].split() == ["MODEL", "REV", "TARGET", "BACKEND", "VERSION", "WEIGHT",
                                 "STATE", "STICKY", "SHADOW"]
    assert any(line.split()[:6] == ["claims_risk", str(history["changes"][0]["revision"]),
                                    "canary", "local", "2", str(new)] for line in listed[1:])
    change = aios("history", "claims_risk", "--limit", "1").stdout.splitlines()
    assert change[0].split() == ["WHEN", "MODEL", "REV", "WHO", "ACTION", "CHANGE", "REASON"]
    assert "ago" in change[1] and "set_weights" in change[1] and "from the CLI" in change[1]
    assert f"canary weight {before}->{new}" in change[1]
    bad = aios("set", "claims_risk", "canary=-1")
    assert bad.returncode == 1
    assert "400: weights.canary: must be >= 0, got -1" in bad.stderr


def _metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_shadow_agreement_is_reported(canary: Gateway) -> None:
    gold = {v: json.loads((MODEL_REPO / "claims_risk" / v / "golden.json").read_text())
            for v in ("1", "2")}
    threshold = 0.1
    v1, v2 = (np.asarray(gold[v]["outputs"])[:, 0] for v in ("1", "2"))
    expected = float(((v1 >= threshold) == (v2 >= threshold)).mean())
    assert 0.5 < expected < 1.0, "the threshold separates the versions on some claims"
    base = get_route(canary)["revision"]
    resp = put(canary, "claims_risk", {
        "base_revision": base, "reason": "shadow v1 against v2",
        "targets": {"canary": {"backend": "local", "version": "2", "weight": 1}},
        "shadow": {"backend": "local", "version": "1", "fraction": 1.0,
                   "output": "risk_score", "threshold": threshold}})
    assert resp.status_code == 200, resp.text
    labels = {"model": "claims_risk", "shadow": "local/claims_risk/1"}
    agreed0 = _metric(canary, "aios_gateway_shadow_decisions_total", agree="true", **labels)
    for i in range(0, 64, 16):
        assert score(canary, "g", gold["2"]["inputs"][i:i + 16]).status_code == 200
    deadline = time.monotonic() + 10
    while _metric(canary, "aios_gateway_shadow_requests_total", outcome="ok", **labels) < 4:
        assert time.monotonic() < deadline, "shadow comparisons never arrived"
        time.sleep(0.1)
    agreed = _metric(canary, "aios_gateway_shadow_decisions_total", agree="true",
                     **labels) - agreed0
    disagreed = _metric(canary, "aios_gateway_shadow_decisions_total", agree="false",
                        **labels)
    assert agreed + disagreed == 64
    assert agreed / 64 == pytest.approx(expected)


def _p99(gw: Gateway, n: int) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        assert score(gw, f"c{i}", params={"delay_ms": 2000}).status_code == 200
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 99))


def test_a_slow_shadow_adds_no_latency(canary: Gateway) -> None:
    base = get_route(canary)["revision"]
    cleared = put(canary, "claims_risk/shadow", {"base_revision": base, "shadow": None})
    assert cleared.status_code == 200
    without = _p99(canary, 60)
    # The shadow is the test-only `slow` model: every copy sleeps 2 s (delay_ms).
    resp = put(canary, "claims_risk/shadow", {
        "base_revision": cleared.json()["revision"],
        "shadow": {"backend": "local", "model": "slow", "fraction": 1.0}})
    assert resp.status_code == 200, resp.text
    with_shadow = _p99(canary, 60)
    assert with_shadow < without * 3 + 0.05, (without, with_shadow)
    assert with_shadow < 1.0
    # The shadows did run meanwhile, each taking its 2 s.
    deadline = time.monotonic() + 10
    while not _metric(canary, "aios_gateway_shadow_latency_seconds_count",
                      model="claims_risk", shadow="local/slow/default"):
        assert time.monotonic() < deadline, "no shadow call completed"
        time.sleep(0.2)
    assert _metric(canary, "aios_gateway_shadow_latency_seconds_sum", model="claims_risk",
                   shadow="local/slow/default") >= 2.0


def test_a_shadow_past_its_timeout_is_counted_as_such(canary: Gateway) -> None:
    base = get_route(canary)["revision"]
    # `slow` sleeps 300 ms per call by default; this shadow gives it 100 ms.
    resp = put(canary, "claims_risk/shadow", {"base_revision": base, "shadow": {
        "backend": "local", "model": "slow", "fraction": 1.0, "timeout_s": 0.1}})
    assert resp.status_code == 200, resp.text
    labels = {"model": "claims_risk", "shadow": "local/slow/default"}
    before = _metric(canary, "aios_gateway_shadow_requests_total", outcome="timeout", **labels)
    for i in range(3):
        assert score(canary, f"t{i}").status_code == 200
    deadline = time.monotonic() + 10
    while _metric(canary, "aios_gateway_shadow_requests_total", outcome="timeout",
                  **labels) < before + 3:
        assert time.monotonic() < deadline, "the shadows' timeouts were not counted"
        time.sleep(0.1)
    cleared = put(canary, "claims_risk/shadow", {"base_revision": resp.json()["revision"],
                                                 "shadow": None})
    assert cleared.status_code == 200


def test_replicas_apply_a_change_within_a_second(stack: Stack, redis_server: RedisServer,
                                                 tmp_path: Path) -> None:
    routing = {"store": "redis", "redis_url": redis_server.url, "key_prefix": "t:routes:"}
    with contextlib.ExitStack() as services:
        a, b = (start_gateway(services, stack, {"claims_risk": CANARY}, tmp_path,
                              routing=dict(routing)) for _ in range(2))
        base = get_route(a)["revision"]
        assert get_route(b)["revision"] == base
        resp = put(a, "claims_risk/weights", {"base_revision": base,
                                              "weights": {"stable": 50, "canary": 50}})
        assert resp.status_code == 200
        changed = time.monotonic()
        while get_route(b)["revision"] != base + 1:
            assert time.monotonic() - changed < 1.0, "replica b did not apply the change in 1s"
            time.sleep(0.02)
        assert get_route(b)["targets"]["canary"]["weight"] == 50
        assert score(b, "x").headers["x-aios-route-revision"] == str(base + 1)


def test_killing_a_backend_under_load(stack: Stack, tmp_path: Path) -> None:
    side_http, side_grpc = free_ports(2)
    sidecar = {"sidecar": {"server": {"http_port": side_http, "grpc_port": side_grpc},
                           "triton": {"http": stack.triton_http, "grpc": stack.triton_grpc}}}
    with running("sidecar", sidecar, side_http, tmp_path) as doomed:
        models = {"claims_risk": {"targets": {
            "a": {"backend": "local", "version": "2", "weight": 50},
            "b": {"backend": "second", "version": "2", "weight": 50}}}}
        with contextlib.ExitStack() as services:
            gw = start_gateway(services, stack, models, tmp_path, backends={
                "second": {"http": f"127.0.0.1:{side_http}", "grpc": f"127.0.0.1:{side_grpc}"}})
            workers, results, lock = 8, [], threading.Lock()
            stop_at = time.monotonic() + 4
            killed: list[float] = []

            def load(i: int) -> None:
                with httpx.Client() as client:
                    while time.monotonic() < stop_at:
                        sent = time.monotonic()
                        try:
                            code = client.post(
                                f"{gw.url}/v2/models/claims_risk/infer",
                                content=infer_json([CLAIM]), headers=bearer(),
                                timeout=10).status_code
                        except httpx.TransportError:
                            code = -1
                        with lock:
                            results.append((sent, time.monotonic(), code))

            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(load, i) for i in range(workers)]
                time.sleep(1.5)
                doomed.kill()
                doomed.wait()
                killed.append(time.monotonic())
                for f in futures:
                    f.result()
            failures = [r for r in results if r[2] != 200]
            # Only calls in flight at the kill may fail: at most one per worker.
            assert len(failures) <= workers, failures
            assert all(sent <= killed[0] + 0.05 for sent, _, _ in failures), failures
            after = [r for r in results if r[0] > killed[0] + 0.05]
            assert after and all(code == 200 for _, _, code in after)
            route = get_route(gw)
            assert route["targets"]["b"]["ejected"] is True
