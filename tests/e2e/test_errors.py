"""Client mistakes and dead backends: KServe JSON errors on REST, status codes on gRPC."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.helpers import (
    TEST_AUTH,
    bearer,
    free_ports,
    http_ready,
    infer_json,
    refused_ports,
    running,
)

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(model: str = "claims_risk", shape: tuple[int, ...] = (1, 8),
                 nbytes: int = 32) -> bytes:
    req = service_pb2.ModelInferRequest(model_name=model)
    tensor = req.inputs.add(name="features", datatype="FP32")
    tensor.shape.extend(shape)
    req.raw_input_contents.append(b"\0" * nbytes)
    return bytes(req.SerializeToString())


@dataclass(frozen=True)
class Case:
    rest_path: str
    rest_body: bytes
    rest_status: int
    rest_error: str  # a prefix of the "error" field
    grpc_payload: bytes | None
    grpc_code: grpc.StatusCode | None
    grpc_error: str


CASES = {
    "unknown model": Case(
        "/v2/models/nope/infer", infer_json([CLAIM]), 404,
        "Request for unknown model: 'nope' is not found",
        grpc_request("nope"), grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'nope' is not found"),
    "malformed body": Case(
        "/v2/models/claims_risk/infer", b"{bad", 400, "request body is not valid JSON",
        grpc_request()[:-3], grpc.StatusCode.INVALID_ARGUMENT, "malformed protobuf"),
    "wrong tensor shape": Case(
        "/v2/models/claims_risk/infer",
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 7],
                                "data": CLAIM[:7]}]}).encode(),
        400, "[request id: <id_unknown>] unexpected shape for input 'features'",
        grpc_request(shape=(1, 7), nbytes=28), grpc.StatusCode.INVALID_ARGUMENT,
        "[request id: <id_unknown>] unexpected shape for input 'features'"),
    "shape and data disagree": Case(
        "/v2/models/claims_risk/infer",
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                "data": CLAIM[:3]}]}).encode(),
        400, "Unable to parse 'data': Shape does not match true shape of 'data' field",
        grpc_request(nbytes=12), grpc.StatusCode.INVALID_ARGUMENT,
        "[request id: <id_unknown>] input byte size mismatch for input 'features' for model "
        "'claims_risk'. Expected 32, got 12"),
    "unknown datatype": Case(
        "/v2/models/claims_risk/infer",
        json.dumps({"inputs": [{"name": "features", "datatype": "FLOAT", "shape": [1, 8],
                                "data": CLAIM}]}).encode(),
        400, "input 'features': unknown datatype 'FLOAT'", None, None, ""),
    "no model named": Case(
        "/v2/models/claims_risk/bogus", b"", 404, "no such endpoint",
        grpc_request(""), grpc.StatusCode.INVALID_ARGUMENT, "the request names no model"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rest_errors(stack: Stack, case: Case) -> None:
    resp = httpx.post(f"http://{stack.gateway_http}{case.rest_path}", content=case.rest_body,
                      headers={"content-type": "application/json", **bearer()})
    assert resp.status_code == case.rest_status
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"].startswith(case.rest_error), resp.json()


@pytest.mark.parametrize("case", [c for c in CASES.values() if c.grpc_code],
                         ids=[k for k, c in CASES.items() if c.grpc_code])
def test_grpc_errors(stack: Stack, case: Case) -> None:
    with grpc.insecure_channel(stack.gateway_grpc) as channel, \
            pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(case.grpc_payload, timeout=10,
                                   metadata=tuple(bearer().items()))
    assert info.value.code() == case.grpc_code
    assert info.value.details().startswith(case.grpc_error), info.value.details()


@dataclass(frozen=True)
class Lone:
    """A single service whose next hop is a port nobody listens on."""

    http: str
    grpc: str


def _start_lone(tmp: Path, service: str) -> Iterator[Lone]:
    http_port, grpc_port = free_ports(2)
    with refused_ports(2) as (dead_http, dead_grpc):
        dead = {"http": f"127.0.0.1:{dead_http}", "grpc": f"127.0.0.1:{dead_grpc}",
                "connect_timeout_s": 1}
        server = {"http_port": http_port, "grpc_port": grpc_port}
        section = ({"server": server, "backends": {"dead": dead}, "auth": TEST_AUTH,
                    "models": {"claims_risk": {"backend": "dead"}}}
                   if service == "gateway" else {"server": server, "triton": dead})
        with running(service, {service: section}, http_port, tmp):
            yield Lone(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module", params=["gateway", "sidecar"])
def lone(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         ) -> Iterator[Lone]:
    yield from _start_lone(tmp_path_factory.mktemp("lone"), request.param)


def test_dead_backend_rest(lone: Lone) -> None:
    started = time.monotonic()
    resp = httpx.post(f"http://{lone.http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM]), headers=bearer())
    assert resp.status_code == 502
    assert time.monotonic() - started < 1.0, "a refused connection fails fast"
    assert "unreachable" in resp.json()["error"]
    assert not http_ready(int(lone.http.rsplit(":", 1)[1]))
    assert httpx.get(f"http://{lone.http}/v2/health/ready").json() == {"ready": False}


def test_dead_backend_grpc(lone: Lone) -> None:
    with grpc.insecure_channel(lone.grpc) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(INFER)(grpc_request(), timeout=10,
                                       metadata=tuple(bearer().items()))
        ready = service_pb2.ServerReadyResponse.FromString(
            channel.unary_unary("/inference.GRPCInferenceService/ServerReady")(
                service_pb2.ServerReadyRequest().SerializeToString(), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in info.value.details()
    assert ready.ready is False
