"""Replays run by the gateway (/admin/replays) over a real sidecar, Triton and decision
log: a job scores the recorded decisions with the candidate, and its report agrees with
version 2's own model.pt; bad requests are refused naming the field, and a token needs
the scope."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from aios.checkpoint import write_key_pair
from aios_cli.claims import synthesize_claims
from tests.conftest import Stack
from tests.e2e.test_decisions import sidecar_config
from tests.helpers import MODEL_REPO, free_ports, gateway_config, infer_json, running, token

RUNNER = {"authorization": f"Bearer {token('replay:run', subject='mara')}"}
AUDITOR = {"authorization": f"Bearer {token('audit:read', subject='audra')}"}


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("replay-api")
    key, public = tmp / "signing.pem", tmp / "signing.pub.pem"
    write_key_pair(key, public)
    s_http, s_grpc = free_ports(2)
    sidecar = sidecar_config(stack, s_http, s_grpc, tmp)
    models = {"claims_risk": {"targets": {
        "stable": {"backend": "local", "version": "1", "weight": 100},
        "candidate": {"backend": "local", "version": "2", "weight": 0}}}}
    audit = {"logs": {"local": {"directory": str(tmp / "decisions")}},
             "model_repository": str(MODEL_REPO),
             "access_log": {"directory": str(tmp / "reads"), "signing_key_file": str(key)}}
    config, http_port, _ = gateway_config(f"127.0.0.1:{s_http}", f"127.0.0.1:{s_grpc}",
                                          models, audit=audit)
    with running("sidecar", sidecar, s_http, tmp), running("gateway", config, http_port, tmp):
        yield f"http://127.0.0.1:{http_port}"


def wait_for(gateway: str, ident: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{gateway}/admin/replays/{ident}",
                                        headers=AUDITOR).json()
        if job["state"] != "running":
            return job
        time.sleep(0.2)
    raise AssertionError("the replay did not finish")


def test_a_replay_job_reports_what_version_2_itself_would_decide(gateway: str) -> None:
    claims, _ = synthesize_claims(600, seed=5)
    for start in range(0, len(claims), 60):
        resp = httpx.post(f"{gateway}/v2/models/claims_risk/infer",
                          content=infer_json(claims[start:start + 60].tolist()),
                          headers={"authorization": f"Bearer {token()}"})
        assert resp.status_code == 200, resp.text
    started = httpx.post(f"{gateway}/admin/replays", headers=RUNNER, json={
        "model": "claims_risk", "candidate": "2", "rate": 100000, "threshold": 0.3})
    assert started.status_code == 202, started.text
    assert (started.json()["state"], started.json()["who"]) == ("running", "mara")
    job = wait_for(gateway, started.json()["id"])
    assert job["state"] == "done", job["error"]
    assert (job["rows"], job["scored"]) == (600, 600)
    model = torch.jit.load(str(MODEL_REPO / "claims_risk" / "2" / "model.pt")).eval()
    with torch.inference_mode():
        direct = model(torch.from_numpy(claims.astype(np.float32))).numpy().reshape(-1)
    recorded_v1 = torch.jit.load(str(MODEL_REPO / "claims_risk" / "1" / "model.pt")).eval()
    with torch.inference_mode():
        v1 = recorded_v1(torch.from_numpy(claims.astype(np.float32))).numpy().reshape(-1)
    assert job["report"]["agreement"]["agreed"] == int(((v1 >= 0.3) == (direct >= 0.3)).sum())
    worst = job["report"]["largest_disagreements"][0]
    assert abs(worst["delta"]) == pytest.approx(float(np.abs(direct - v1).max()), abs=1e-6)
    listed = httpx.get(f"{gateway}/admin/replays", headers=RUNNER).json()["replays"]
    assert listed[0]["id"] == job["id"] and "report" not in listed[0]


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"model": "claims_risk", "candidate": "2", "colour": "red"}, 400,
     "colour: Extra inputs are not permitted"),
    ({"model": "claims_risk", "candidate": "2", "limit": 0}, 400,
     "limit: Input should be greater than or equal to 1"),
    ({"model": "claims_risk", "candidate": "7"}, 400,
     f"candidate: no profile.json for claims_risk version 7 in {MODEL_REPO}"),
    ({"model": "claims_risk", "candidate": "2", "since": "yesterday"}, 400, None),
    ({"model": "nope", "candidate": "2"}, 400,
     f"candidate: no profile.json for nope version 2 in {MODEL_REPO}"),
])
def test_bad_replay_requests_are_refused_naming_the_field(
        gateway: str, body: dict[str, Any], status: int, error: str | None) -> None:
    resp = httpx.post(f"{gateway}/admin/replays", headers=RUNNER, json=body)
    assert resp.status_code == status, resp.text
    if error is not None:
        assert resp.json() == {"error": error}
    else:
        assert resp.json()["error"].startswith("since: ")


@pytest.mark.parametrize(("headers", "method", "status", "error"), [
    (AUDITOR, "POST", 403, "token lacks the scope 'replay:run'"),
    ({"authorization": f"Bearer {token('routes:read')}"}, "GET", 403,
     "token lacks the scope 'replay:run' (or 'audit:read')"),
    ({}, "GET", 401, "missing bearer token"),
])
def test_replays_need_their_scope(gateway: str, headers: dict[str, str], method: str,
                                  status: int, error: str) -> None:
    resp = httpx.request(method, f"{gateway}/admin/replays", headers=headers,
                         json={"model": "claims_risk", "candidate": "2"})
    assert (resp.status_code, resp.json()) == (status, {"error": error})


def test_an_unknown_replay_is_404(gateway: str) -> None:
    resp = httpx.get(f"{gateway}/admin/replays/01NOPE", headers=RUNNER)
    assert resp.status_code == 404
    assert resp.json() == {"error": "no replay '01NOPE' on this gateway (it keeps the last 20)"}
