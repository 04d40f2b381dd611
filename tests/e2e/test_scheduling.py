"""Triton's priority and timeout through the real stack, within a tenant's policy: a
value inside it reaches Triton as asked; beyond it, clamped and said in x-aios-clamped
(REST header, gRPC trailing metadata), never refused; tritonclient's own `priority=` and
`timeout=` work unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.e2e.test_decisions import CLAIM
from tests.e2e.test_errors import INFER
from tests.helpers import TEST_AUTH, gateway_config, infer_json, running, token

TENANTS = {"urgent-ok": {"rate_per_s": 1e6, "burst": 100000, "top_priority": 2},
           "plain": {"rate_per_s": 1e6, "burst": 100000}}


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("scheduling")
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc,
        {"claims_risk": {"targets": {"only": {"backend": "local", "timeout_s": 2}}}},
        auth=TEST_AUTH, quota={"tenants": TENANTS})
    with running("gateway", config, http_port, tmp):
        yield f"127.0.0.1:{http_port}|127.0.0.1:{grpc_port}"


def auth(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token('infer:claims_risk', tenant=tenant)}"}


@pytest.mark.parametrize(("tenant", "parameters", "said"), [
    ("urgent-ok", {"priority": 2, "timeout": 1_000_000}, None),
    ("urgent-ok", {"priority": 1}, "priority 1 -> 2 (the most urgent this tenant may ask for)"),
    ("plain", {"priority": 1}, "priority 1 -> 0 (this tenant may not set a priority)"),
    ("plain", {"timeout": 10_000_000},
     "timeout 10000000 us -> 2000000 us (the route's timeout)"),
])
def test_rest_priority_and_timeout_within_the_policy(
        gateway: str, tenant: str, parameters: dict[str, int], said: str | None) -> None:
    rest = gateway.split("|")[0]
    resp = httpx.post(f"http://{rest}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM], parameters=parameters),
                      headers=auth(tenant), timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("x-aios-clamped") == said
    assert len(resp.json()["outputs"][0]["data"]) == 1


def test_grpc_priority_beyond_the_policy_is_clamped_and_said(gateway: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="claims_risk")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(np.asarray(CLAIM, dtype="<f4").tobytes())
    request.parameters["priority"].uint64_param = 1
    request.parameters["timeout"].int64_param = 50_000_000
    assert tensor.name == "features"
    with grpc.insecure_channel(gateway.split("|")[1]) as channel:
        _, call = channel.unary_unary(INFER).with_call(
            request.SerializeToString(), metadata=tuple(auth("urgent-ok").items()), timeout=10)
    assert dict(call.trailing_metadata())["x-aios-clamped"] == (
        "priority 1 -> 2 (the most urgent this tenant may ask for); "
        "timeout 50000000 us -> 2000000 us (the route's timeout)")


def test_tritonclients_own_priority_and_timeout_work_unchanged(gateway: str) -> None:
    rest, grpc_address = gateway.split("|")
    data = np.asarray([CLAIM], dtype=np.float32)
    http = httpclient.InferenceServerClient(rest)
    inputs = [httpclient.InferInput("features", [1, 8], "FP32")]
    inputs[0].set_data_from_numpy(data)
    result = http.infer("claims_risk", inputs, priority=1, timeout=5_000_000,
                        headers=auth("urgent-ok"))
    assert result.as_numpy("risk_score").shape == (1, 1)
    g = grpcclient.InferenceServerClient(grpc_address)
    g_inputs = [grpcclient.InferInput("features", [1, 8], "FP32")]
    g_inputs[0].set_data_from_numpy(data)
    g_result = g.infer("claims_risk", g_inputs, priority=3, timeout=1_000_000,
                       headers=auth("urgent-ok"))
    assert g_result.as_numpy("risk_score").shape == (1, 1)
