"""The gateway's read-only audit API on the real stack, over REST and gRPC: decisions by
id, search by claim, inclusion proofs, checkpoints; who may read; and every read
recorded in the gateway's signed access log before it is answered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aios.auditlog import check_proof, records, verify
from aios.checkpoint import load_public_key
from aios.witness import DirectoryWitness
from proto import audit_pb2 as pb
from proto import audit_pb2_grpc as pb_grpc
from tests.conftest import Stack
from tests.e2e.test_decisions import CLAIM, grpc_claim
from tests.e2e.test_errors import INFER
from tests.helpers import bearer, free_ports, gateway_config, infer_json, running, token

AUDITOR = "auditor-1"
Read = Callable[[str, dict[str, str]], tuple[int, Any]]


def auth(scope: str = "audit:read", subject: str = AUDITOR) -> dict[str, str]:
    return {"authorization": f"Bearer {token(scope, subject=subject)}"}


GRPC_STATUS = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
               grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.UNAVAILABLE: 503}


def rest_reader(address: str) -> Read:
    """A read over REST: (status, body)."""
    def read(what: str, headers: dict[str, str]) -> tuple[int, Any]:
        resp = httpx.get(f"http://{address}/admin/audit/{what}", headers=headers, timeout=30)
        return resp.status_code, resp.json()

    return read


def grpc_reader(address: str) -> Read:
    """The same read over gRPC, with the REST path's meaning; errors as (status, message)."""
    def read(what: str, headers: dict[str, str]) -> tuple[int, Any]:
        path, _, query = what.partition("?")
        parts = path.split("/")
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.AuditApiStub(channel)
            metadata = tuple(headers.items())
            try:
                if parts == ["checkpoints"]:
                    doc = stub.Checkpoints(pb.CheckpointsRequest(), metadata=metadata,
                                           timeout=30)
                elif parts[0] == "decisions" and len(parts) == 1:
                    params = dict(p.split("=", 1) for p in query.split("&") if p)
                    fields = {k: int(v) if k in ("limit", "page") else v
                              for k, v in params.items()}
                    doc = stub.SearchDecisions(pb.SearchRequest(**fields), metadata=metadata,
                                               timeout=30)
                elif len(parts) == 3:
                    doc = stub.Prove(pb.GetDecisionRequest(id=parts[1]), metadata=metadata,
                                     timeout=30)
                else:
                    doc = stub.GetDecision(pb.GetDecisionRequest(id=parts[1]),
                                           metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                return GRPC_STATUS[exc.code()], {"error": exc.details()}
        return 200, json.loads(doc.json)

    return read


@pytest.fixture(params=["rest", "grpc"])
def read(request: pytest.FixtureRequest, stack: Stack) -> Read:
    return rest_reader(stack.gateway_http) if request.param == "rest" \
        else grpc_reader(stack.gateway_grpc)


def score(stack: Stack, claim_id: str) -> tuple[str, str]:
    """One claim scored over REST and one over gRPC: their decision ids."""
    rest = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM]), headers={**bearer(), "x-claim-id": claim_id})
    assert rest.status_code == 200
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        _, call = channel.unary_unary(INFER).with_call(
            grpc_claim(CLAIM), timeout=10, metadata=(*bearer().items(), ("x-claim-id", claim_id)))
    return rest.headers["x-aios-decision-id"], str(dict(call.trailing_metadata())[
        "x-aios-decision-id"])


def access_log(stack: Stack) -> list[Any]:
    return list(records(stack.config_path.parent / "audit-reads"))


def test_an_auditor_reads_a_claims_decisions_and_each_read_is_recorded(
        stack: Stack, read: Read) -> None:
    claim_id = f"C-1002-{time.time_ns()}"
    rest_id, grpc_id = score(stack, claim_id)
    before = len(access_log(stack))

    status, found = read(f"decisions?key={claim_id}", auth())
    assert status == 200, found
    assert found["total"] == 2 and not found["total_capped"]
    assert [d["decision_id"] for d in found["decisions"]] == [rest_id, grpc_id]
    assert [d["protocol"] for d in found["decisions"]] == ["rest", "grpc"]

    status, doc = read(f"decisions/{grpc_id}", auth())
    assert status == 200, doc
    assert (doc["log"], doc["model"], doc["version"], doc["business_key"]) == (
        "local", "claims_risk", "2", claim_id)
    assert (doc["route"]["reason"], doc["route"]["revision"]) == ("sticky", 1)
    row = doc["inputs"][0]["rows"][0]
    assert row["claim_amount"] == {"value": pytest.approx(5255.7), "unit": "EUR"}
    assert row["claimant_age"] == {"value": 19.0, "unit": "years"}
    assert doc["outputs"][0]["name"] == "risk_score"
    assert doc["shadow_copies"] == []

    def proved() -> tuple[int, Any]:  # the next checkpoint (every 0.5 s) covers the claim
        for _ in range(40):
            status, proof = read(f"decisions/{rest_id}/proof", auth())
            if status != 404:
                return status, proof
            time.sleep(0.25)
        return status, proof

    status, proof = proved()
    assert status == 200, proof
    public = load_public_key(stack.config_path.parent / "audit-signing.pub.pem")
    assert check_proof(proof, public).decision_id == rest_id
    status, checkpoints = read("checkpoints", auth())
    assert status == 200, checkpoints
    latest = checkpoints["checkpoints"]["local"]
    assert latest["signature_check"] == "valid" and latest["size"] >= proof["leaf_index"] + 1
    assert latest["signature"] == proof["checkpoint"]["signature"] or \
        latest["size"] > proof["tree_size"]

    reads = access_log(stack)[before:]
    assert {(r.kind, r.subject) for r in reads} == {("audit_read", AUDITOR)}
    actions = [r.audit_read.action for r in reads]
    assert actions[:2] == ["search", "decision"] and actions[-2:] == ["proof", "checkpoints"]
    assert set(actions[2:-1]) == {"proof"}, "a proof asked for too early is recorded too"
    assert list(reads[0].audit_read.decision_ids) == [rest_id, grpc_id]
    assert json.loads(reads[0].audit_read.query_json)["key"] == claim_id
    assert list(reads[1].audit_read.decision_ids) == [grpc_id]
    assert list(reads[-2].audit_read.decision_ids) == [rest_id]
    report = verify(stack.config_path.parent / "audit-reads",
                    DirectoryWitness(stack.config_path.parent / "audit-reads-checkpoints"),
                    public)
    assert report.intact and report.covered == report.records, report


@pytest.mark.parametrize(("what", "headers", "status", "message"), [
    ("decisions?key=x", {}, 401, "missing bearer token"),
    ("decisions?key=x", auth("routes:read"), 403, "token lacks the scope 'audit:read'"),
    ("decisions/nobody-at-all", auth(), 404,
     "no decision or request 'nobody-at-all' in the audit logs"),
    ("decisions/" + "x" * 201, auth(), 400,
     "id: a decision id or request id of 1 to 200 characters"),
    ("decisions/" + "x" * 201 + "/proof", auth(), 400,
     "id: a decision id or request id of 1 to 200 characters"),
    ("decisions?since=yesterday", auth(), 400, "since: not an ISO 8601 time ('yesterday')"),
    ("decisions?limit=1001", auth(), 400, "limit: must be an integer between 1 and 1000"),
    ("decisions?page=10001", auth(), 400, "page: must be an integer between 1 and 10000"),
    ("decisions?log=elsewhere", auth(), 400,
     "log: no audit log 'elsewhere' (configured: local)"),
])
def test_what_is_refused(read: Read, what: str, headers: dict[str, str], status: int,
                         message: str) -> None:
    got, body = read(what, headers)
    assert got == status, body
    assert message in body["error"], body


@pytest.mark.parametrize(("what", "message"), [
    # What gRPC's typed request cannot carry (an unknown field; a 0 there means "default").
    ("decisions?colour=red", "colour: not a search parameter (one of key, request_id, "),
    ("decisions?limit=0", "limit: must be an integer between 1 and 1000"),
    ("decisions?limit=ten", "limit: must be an integer between 1 and 1000"),
])
def test_what_rest_refuses(stack: Stack, what: str, message: str) -> None:
    got, body = rest_reader(stack.gateway_http)(what, auth())
    assert got == 400 and message in body["error"], body


def test_a_read_that_cannot_be_recorded_is_not_answered(stack: Stack, tmp_path: Path) -> None:
    [refused] = free_ports(1)
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, {"claims_risk": {"backend": "local"}},
        audit={"logs": {"local": {"directory": str(stack.config_path.parent / "decisions")}},
               "access_log": {"directory": str(tmp_path / "reads"),
                              "signing_key_file": str(stack.config_path.parent /
                                                      "audit-signing.pem"),
                              # The witness is down: no checkpoint, so no record.
                              "witness_url": f"redis://127.0.0.1:{refused}/0"}})
    with running("gateway", config, http_port, tmp_path):
        for reader in (rest_reader(f"127.0.0.1:{http_port}"),
                       grpc_reader(f"127.0.0.1:{grpc_port}")):
            status, body = reader("checkpoints", auth())
            assert status == 503, body
            assert "the audit read by 'auditor-1' could not be recorded in reads" in \
                body["error"]


def test_without_configured_logs_the_api_says_so(stack: Stack, tmp_path: Path) -> None:
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, {"claims_risk": {"backend": "local"}})
    with running("gateway", config, http_port, tmp_path):
        for reader in (rest_reader(f"127.0.0.1:{http_port}"),
                       grpc_reader(f"127.0.0.1:{grpc_port}")):
            assert reader("checkpoints", auth()) == (
                404, {"error": "no audit logs are configured (gateway.audit.logs)"})
            assert reader("checkpoints", {})[0] == 401, "auth comes first"
