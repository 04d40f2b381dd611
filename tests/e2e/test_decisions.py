"""Decision records on the real stack: what they hold, crashes, enforcement, golden parity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from aios.auditlog import records, segments, verify
from aios_cli.claims import synthesize_claims
from tests.conftest import Stack
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import (
    MODEL_REPO,
    REPO,
    aios,
    bearer,
    free_ports,
    gateway_config,
    infer_json,
    listening,
    running,
    schema_flags,
    wait_until,
)

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def decisions(stack: Stack) -> Path:
    return stack.config_path.parent / "decisions"


def find(directory: Path, request_id: str) -> Any:
    found = [r for r in records(directory) if r.request_id == request_id]
    assert len(found) == 1, f"{len(found)} records of {request_id}"
    return found[0]


def test_rest_decision_is_recorded_with_who_what_and_why(stack: Stack) -> None:
    resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM, CLAIM]), headers={
                          **bearer(), "x-request-id": "rest-decision-1",
                          "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert resp.status_code == 200
    record = find(decisions(stack), "rest-decision-1")
    assert (record.tenant, record.subject, record.model, record.version) == (
        "tests", "pytest", "claims_risk", "2")
    assert (record.route_target, record.route_revision) == ("default", 1)
    assert (record.protocol, record.outcome, record.trace_id) == ("rest", "ok", TRACE)
    assert [t.name for t in record.inputs] == ["features"]
    assert list(record.inputs[0].shape) == [2, 8]
    np.testing.assert_array_equal(np.frombuffer(record.inputs[0].contents, "<f4"),
                                  np.asarray(CLAIM * 2, dtype=np.float32))
    served = resp.json()["outputs"][0]["data"]
    np.testing.assert_allclose(np.frombuffer(record.outputs[0].contents, "<f4"), served,
                               rtol=1e-6)
    assert record.latency_micros > 0 and schema_flags(record) == []
    out = audit(stack, "show", "--request-id", "rest-decision-1", "--json")
    assert json.loads(out.stdout)["tenant"] == "tests"


def audit(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`aios audit …` on the stack's own log, as its operator runs it."""
    return subprocess.run([sys.executable, "-m", "aios_cli", "audit", *args,
                           "--config", str(stack.config_path)],
                          cwd=REPO, capture_output=True, text=True, check=True)


def grpc_claim(claim: list[float]) -> bytes:
    req = service_pb2.ModelInferRequest(model_name="claims_risk")
    tensor = req.inputs.add(name="features", datatype="FP32")
    tensor.shape.extend([1, len(claim)])
    req.raw_input_contents.append(np.asarray(claim, dtype="<f4").tobytes())
    return bytes(req.SerializeToString())


def test_a_claim_scored_over_both_protocols_can_be_shown_and_found_by_its_key(
        stack: Stack) -> None:
    claim_id = f"C-1002-{time.time_ns()}"
    rest = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM]), headers={**bearer(), "x-claim-id": claim_id,
                                                            "x-request-id": "claim-rest"})
    assert rest.status_code == 200
    rest_id = rest.headers["x-aios-decision-id"]
    assert rest.headers["x-request-id"] == "claim-rest"
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        _, call = channel.unary_unary(INFER).with_call(
            grpc_claim(CLAIM), timeout=10, metadata=(*bearer().items(), ("x-claim-id", claim_id)))
    trailing = dict(call.trailing_metadata() or ())
    grpc_id = str(trailing["x-aios-decision-id"])
    assert len(rest_id) == len(grpc_id) == 26 and rest_id != grpc_id
    assert len(str(trailing["x-request-id"])) == 26, "the gateway made one"

    shown = audit(stack, "show", rest_id).stdout
    assert f"decision {rest_id}" in shown
    assert f"business key  {claim_id}" in shown
    assert "model         claims_risk version 2 (rest)" in shown
    assert "route         target default, reason sticky, revision 1, weights default=1" \
        in shown
    assert "claim_amount                 5255.70 EUR" in shown
    assert "claimant_age                      19 years" in shown
    assert "vehicle_age_years             5.6000 years" in shown
    doc = json.loads(audit(stack, "show", grpc_id, "--json").stdout)
    assert (doc["protocol"], doc["route"]["reason"], doc["business_key"]) == (
        "grpc", "sticky", claim_id)
    row = doc["inputs"][0]["rows"][0]
    assert row["claim_amount"] == {"value": pytest.approx(5255.7), "unit": "EUR"}
    assert doc["outputs"][0]["name"] == "risk_score"

    found = json.loads(audit(stack, "search", "--key", claim_id, "--json").stdout)
    assert found["total"] == 2
    assert [d["decision_id"] for d in found["decisions"]] == [rest_id, grpc_id]
    table = audit(stack, "search", "--key", claim_id).stdout.splitlines()
    assert table[0].split() == ["DECISION", "TIME", "KEY", "TENANT", "MODEL", "ROUTE",
                                "OUTCOME"]
    assert table[1].startswith(rest_id) and "sticky" in table[1] and claim_id in table[1]
    assert table[-1] == "2 decision(s)"


def test_binary_and_grpc_decisions_are_recorded(stack: Stack) -> None:
    client = httpclient.InferenceServerClient(stack.gateway_http)
    x = np.asarray([CLAIM], dtype=np.float32)
    inp = httpclient.InferInput("features", [1, 8], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    client.infer("claims_risk", [inp], model_version="1", request_id="binary-decision-1",
                 headers=bearer())
    assert find(decisions(stack), "binary-decision-1").version == "1"
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        channel.unary_unary(INFER)(grpc_request(), timeout=10,
                                   metadata=(*bearer().items(), ("x-request-id", "grpc-1")))
    record = find(decisions(stack), "grpc-1")
    assert (record.protocol, record.version, record.tenant) == ("grpc", "2", "tests")


def test_out_of_profile_inputs_are_flagged(stack: Stack) -> None:
    odd = [*CLAIM[:4], 140.0, *CLAIM[5:]]  # a 140-year-old claimant
    resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
                      content=infer_json([odd]),
                      headers={**bearer(), "x-request-id": "odd-1"})
    assert resp.status_code == 200, "observe mode serves and flags"
    assert schema_flags(find(decisions(stack), "odd-1")) == ["out_of_range:claimant_age"]
    assert verify(decisions(stack)).intact


def sidecar_config(stack: Stack, http_port: int, grpc_port: int, tmp: Path,
                   **extra: Any) -> dict[str, Any]:
    return {"sidecar": {"server": {"http_port": http_port, "grpc_port": grpc_port},
                        "triton": {"http": stack.triton_http, "grpc": stack.triton_grpc},
                        "decision_log": {"directory": str(tmp / "decisions")}, **extra}}


def test_enforce_mode_refuses_with_422_naming_the_bound(stack: Stack, tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    config = sidecar_config(stack, http_port, grpc_port, tmp_path,
                            parity={"mode": {"claims_risk": "enforce"}})
    with running("sidecar", config, http_port, tmp_path):
        odd = [*CLAIM[:4], 140.0, *CLAIM[5:]]
        resp = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                          content=infer_json([odd]))
        assert resp.status_code == 422
        assert resp.json() == {"error": "feature 'claimant_age' = 140 is above the training "
                                        "maximum 90"}
        ok = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                        content=infer_json([CLAIM]))
        assert ok.status_code == 200


def test_drift_is_flagged_with_its_evidence_in_metrics_and_records(stack: Stack,
                                                                    tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    config = sidecar_config(stack, http_port, grpc_port, tmp_path,
                            parity={"drift_window": 200, "drift_every": 50})
    x, _ = synthesize_claims(1500, seed=77)
    x[300:, 0] *= 3.0  # claims inflation after the first 300
    with running("sidecar", config, http_port, tmp_path), httpx.Client() as client:
        for i in range(0, len(x), 30):
            resp = client.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                               content=infer_json(x[i:i + 30].tolist()),
                               headers={"x-request-id": f"drift-{i}"})
            assert resp.status_code == 200
        metrics = client.get(f"http://127.0.0.1:{http_port}/metrics").text
    labels = 'feature="claim_amount",model="claims_risk",version="2"'
    assert f"aios_sidecar_drift_flag{{{labels}}} 1.0" in metrics
    assert f"aios_sidecar_drift_p_value{{{labels}}}" in metrics
    log = {r.request_id: list(r.parity_flags) for r in records(tmp_path / "decisions")}
    assert not any(f.startswith("drift:") for f in log["drift-0"] + log["drift-270"])
    [flag] = [f for f in log["drift-1470"] if f.startswith("drift:claim_amount ")]
    assert "cusum" in flag or "p=" in flag, flag


def test_kill_9_loses_no_acknowledged_decision(stack: Stack, tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    config = sidecar_config(stack, http_port, grpc_port, tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    with running("sidecar", config, http_port, tmp_path) as sidecar:
        wait_until(lambda: httpx.get(
            f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200, 30,
            "sidecar ready")
        stop = time.monotonic() + 3

        def load(worker: int) -> None:
            with httpx.Client() as client:
                n = 0
                while time.monotonic() < stop:
                    rid = f"w{worker}-{n}"
                    n += 1
                    try:
                        resp = client.post(
                            f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                            content=infer_json([CLAIM]), headers={"x-request-id": rid},
                            timeout=5)
                    except httpx.TransportError:
                        return
                    if resp.status_code == 200:
                        with lock:
                            acknowledged.append(rid)

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(load, i) for i in range(8)]
            time.sleep(1.5)
            os.kill(sidecar.pid, signal.SIGKILL)
            # Its clients see their connections close before the process is gone: wait
            # for that too, or `running` would find it alive and stop it a second time.
            assert sidecar.wait(30) == -signal.SIGKILL
            for f in futures:
                f.result()
    directory = tmp_path / "decisions"
    report = verify(directory)
    assert report.intact, report.problem
    tail = segments(directory)[-1].read_bytes()
    assert len(tail) - len(tail.rstrip(b"\0")) > 1000, "killed amid the zeros filled ahead"
    recorded = {r.request_id for r in records(directory)}
    assert len(acknowledged) > 100
    missing = [rid for rid in acknowledged if rid not in recorded]
    assert not missing, f"{len(missing)} acknowledged decisions have no record"


def test_a_swapped_model_fails_the_golden_replay(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPO, repo, symlinks=True)
    # Version 1 now serves version 2's weights: training/serving skew.
    shutil.copy(repo / "claims_risk" / "2" / "model.pt", repo / "claims_risk" / "1" / "model.pt")
    t_http, t_grpc, t_metrics, s_http, s_grpc = free_ports(5)
    triton = {"triton": {"model_repository": str(repo), "http_port": t_http,
                         "grpc_port": t_grpc, "metrics_port": t_metrics}}
    config = tmp_path / "triton.yaml"
    config.write_text(json.dumps(triton))
    log = tmp_path / "triton.log"
    process = aios("triton", "--config", str(config), log=log)
    try:
        wait_until(lambda: "Triton ready" in log.read_text(), 180, "triton", process, log)
        sidecar = {"sidecar": {
            "server": {"http_port": s_http, "grpc_port": s_grpc},
            "triton": {"http": f"127.0.0.1:{t_http}", "grpc": f"127.0.0.1:{t_grpc}"},
            "decision_log": {"directory": str(tmp_path / "decisions")},
            "parity": {"model_repository": str(repo)}}}
        with running("sidecar", sidecar, s_http, tmp_path):
            base = f"http://127.0.0.1:{s_http}"
            wait_until(lambda: httpx.get(f"{base}/metrics").text.count(
                "aios_sidecar_parity_ok{") == 2, 30, "golden replay of both versions")
            metrics = httpx.get(f"{base}/metrics").text
            assert 'aios_sidecar_parity_ok{model="claims_risk",version="1"} 0.0' in metrics
            assert 'aios_sidecar_parity_ok{model="claims_risk",version="2"} 1.0' in metrics
            assert httpx.get(f"{base}/v2/health/ready").status_code == 503
            text = (tmp_path / f"sidecar-{s_http}.log").read_text()
            assert "claims_risk v1 does not reproduce its golden set" in text
            assert "worst input #" in text
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    assert listening(t_http) is False


def test_the_sidecar_serves_the_version_an_envoy_route_chose(stack: Stack) -> None:
    """What `aios envoy export` routes rely on: an unpinned call at ``x-aios-version``,
    and a mirrored copy (Host ending in -shadow) at the shadow's version, recorded as
    a shadow."""
    url = f"http://{stack.sidecar_http}/v2/models/claims_risk/infer"
    # Unpinned, Triton would answer with its latest version (2).
    primary = httpx.post(url, content=infer_json([CLAIM]), headers={
        "x-aios-version": "1", "x-aios-target": "stable", "x-request-id": "envoy-primary",
        "x-aios-shadow-version": "2"})
    assert primary.status_code == 200, primary.text
    assert primary.json()["model_version"] == "1"
    mirror = httpx.post(url, content=infer_json([CLAIM]), headers={
        "host": "backend-shadow", "x-aios-version": "1", "x-aios-shadow-version": "2",
        "x-request-id": "envoy-mirror"})
    assert mirror.status_code == 200 and mirror.json()["model_version"] == "2"
    first, copy = find(decisions(stack), "envoy-primary"), find(decisions(stack), "envoy-mirror")
    assert (first.version, first.route_target, first.shadow) == ("1", "stable", False)
    assert (copy.version, copy.shadow) == ("2", True)
    bad = httpx.post(url, content=infer_json([CLAIM]), headers={"x-aios-version": "v2"})
    assert (bad.status_code, bad.json()) == (
        400, {"error": "routing header: bad model version 'v2'"})


def test_a_call_straight_to_the_sidecar_gets_the_ids_of_its_record(stack: Stack) -> None:
    resp = httpx.post(f"http://{stack.sidecar_http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM]))
    assert resp.status_code == 200
    record = find(decisions(stack), resp.headers["x-request-id"])
    assert record.decision_id == resp.headers["x-aios-decision-id"]
    with grpc.insecure_channel(stack.sidecar_grpc) as channel:
        _, call = channel.unary_unary(INFER).with_call(
            grpc_claim(CLAIM), timeout=10, metadata=(("x-request-id", "straight-grpc"),))
    trailing = dict(call.trailing_metadata() or ())
    assert trailing["x-request-id"] == "straight-grpc"
    assert find(decisions(stack), "straight-grpc").decision_id == trailing["x-aios-decision-id"]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_shadow_copy_has_its_own_record_pointing_at_the_primary(
        stack: Stack, tmp_path: Path, protocol: str) -> None:
    models = {"claims_risk": {"backend": "local", "version": "2", "sticky": "header:x-claim-id",
                              "shadow": {"backend": "local", "version": "1", "fraction": 1.0,
                                         "output": "risk_score", "threshold": 0.5}}}
    config, http_port, grpc_port = gateway_config(stack.sidecar_http, stack.sidecar_grpc,
                                                  models,
                                                  audit=audit_of(decisions(stack), tmp_path))
    claim_id = f"C-shadow-{time.time_ns()}"
    with running("gateway", config, http_port, tmp_path):
        if protocol == "rest":
            resp = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                              content=infer_json([CLAIM]), headers={**bearer(),
                                                                    "x-claim-id": claim_id})
            assert resp.status_code == 200
            primary = resp.headers["x-aios-decision-id"]
        else:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                _, call = channel.unary_unary(INFER).with_call(
                    grpc_claim(CLAIM), timeout=10,
                    metadata=(*bearer().items(), ("x-claim-id", claim_id)))
            primary = str(dict(call.trailing_metadata())["x-aios-decision-id"])

        def both() -> list[Any]:
            return [r for r in records(decisions(stack)) if r.business_key == claim_id]

        wait_until(lambda: len(both()) == 2, 10, "the shadow's record")
        main, shadow = sorted(both(), key=lambda r: r.shadow)
        # The audit API finds the copy from the primary and compares the two records.
        answer = httpx.get(f"http://127.0.0.1:{http_port}/admin/audit/decisions/{primary}",
                           headers=bearer("audit:read"))
    assert (main.decision_id, main.shadow, main.version) == (primary, False, "2")
    assert (shadow.shadow, shadow.shadow_of, shadow.version) == (True, primary, "1")
    assert shadow.decision_id not in ("", primary)
    assert shadow.request_id == main.request_id
    assert answer.status_code == 200, answer.text
    [copy] = answer.json()["shadow_copies"]
    ours, theirs = (float(np.frombuffer(r.outputs[0].contents, "<f4")[0])
                    for r in (main, shadow))
    assert (copy["decision_id"], copy["version"]) == (shadow.decision_id, "1")
    agreed = int((ours >= 0.5) == (theirs >= 0.5))
    assert copy["comparison"] == {
        "max_abs_diff": pytest.approx(abs(ours - theirs)),
        "max_rel_diff": pytest.approx(abs(ours - theirs) / abs(ours)),
        "output": "risk_score", "threshold": 0.5, "decisions": 1, "agreed": agreed}
    # ...and the copy's own record says so, written by its sidecar from what it was sent.
    assert (shadow.shadow_agreement.output, shadow.shadow_agreement.threshold,
            shadow.shadow_agreement.rows, shadow.shadow_agreement.agreed) == (
        "risk_score", 0.5, 1, agreed)
    assert not main.HasField("shadow_agreement")


def test_a_hashed_feature_leaves_no_byte_in_the_log_index_or_export(stack: Stack,
                                                                     tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    key = tmp_path / "redaction.key"
    key.write_bytes(os.urandom(32))
    config = sidecar_config(stack, http_port, grpc_port, tmp_path)
    config["sidecar"]["decision_log"].update(
        feature_redaction={"claims_risk": {"claimant_age": "hash"}},
        redaction_key_file=str(key))
    age = np.float32(61.8125)  # nobody else's value: its bytes are easy to look for
    claim = [*CLAIM[:4], float(age), *CLAIM[5:]]
    with running("sidecar", config, http_port, tmp_path):
        for protocol in ("rest", "grpc"):
            if protocol == "rest":
                resp = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                                  content=infer_json([claim, claim]),
                                  headers={"x-request-id": "redacted-rest"})
                assert resp.status_code == 200
            else:
                with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                    channel.unary_unary(INFER)(grpc_claim(claim), timeout=10,
                                               metadata=(("x-request-id", "redacted-grpc"),))
    log = tmp_path / "decisions"
    out = subprocess.run([sys.executable, "-m", "aios_cli", "audit", "export", "--dir", str(log),
                          "--out", str(tmp_path / "export.jsonl")], cwd=REPO,
                         capture_output=True, text=True, check=True)
    shown = subprocess.run([sys.executable, "-m", "aios_cli", "audit", "show", "redacted-rest",
                            "--dir", str(log)], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    written = b"".join(p.read_bytes() for p in log.iterdir() if p.is_file())
    exported = (tmp_path / "export.jsonl").read_text()
    assert "index.sqlite3" in {p.name for p in log.iterdir()} and out.returncode == 0
    assert age.tobytes() not in written, "the age's float32 bytes are nowhere in the folder"
    assert "61.8125" not in exported and "61.8125" not in shown
    assert "    claimant_age                (hashed)" in shown.splitlines()
    assert "    claim_amount                 5255.70 EUR" in shown.splitlines()
    rest, grpc_ = (find(log, r) for r in ("redacted-rest", "redacted-grpc"))
    for record in (rest, grpc_):
        [column] = record.inputs[0].columns
        assert (column.name, column.redaction, len(column.digest)) == ("claimant_age", "hash",
                                                                       32)

    # The gateway's audit API shows what the log holds: the digest, never the age.
    config, gateway_port, _ = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, {"claims_risk": {"backend": "local"}},
        audit=audit_of(log, tmp_path))
    with running("gateway", config, gateway_port, tmp_path):
        answer = httpx.get(f"http://127.0.0.1:{gateway_port}/admin/audit/decisions/"
                           "redacted-grpc", headers=bearer("audit:read"))
    assert answer.status_code == 200, answer.text
    assert "61.8125" not in answer.text
    [row] = answer.json()["inputs"][0]["rows"]
    assert row["claimant_age"] == {"redacted": "hash",
                                   "hmac_sha256": grpc_.inputs[0].columns[0].digest.hex()}
    assert row["claim_amount"] == {"value": pytest.approx(5255.7), "unit": "EUR"}


def audit_of(log: Path, tmp: Path) -> dict[str, Any]:
    """A gateway's audit section reading ``log`` (its reads recorded in ``tmp``)."""
    return {"logs": {"local": {"directory": str(log)}}, "model_repository": str(MODEL_REPO),
            "access_log": {"directory": str(tmp / "audit-reads")}}
