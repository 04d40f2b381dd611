"""Malformed infer bodies, REST and gRPC, through the gateway and at the sidecar: each is
a 4xx naming what is wrong, never a 5xx (Triton answers many of these with 500)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.e2e.test_errors import INFER
from tests.helpers import bearer

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]


def tensor(**fields: Any) -> bytes:
    """A JSON infer body whose one input is ``features`` with ``fields`` changed (a field
    set to None is left out)."""
    spec = {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": CLAIM, **fields}
    return json.dumps({"inputs": [{k: v for k, v in spec.items() if v is not None}]}).encode()


def doc(**fields: Any) -> bytes:
    base: dict[str, Any] = {"inputs": [{"name": "features", "datatype": "FP32",
                                        "shape": [1, 8], "data": CLAIM}]}
    return json.dumps({**base, **fields}).encode()


# name: (body, status, the error's text)
REST: dict[str, tuple[bytes, int, str]] = {
    "strings for FP32": (tensor(data=["a"] * 8), 400,
                         "input 'features': FP32 'data' must hold numbers, got 'a'"),
    "booleans for FP32": (tensor(data=[True] * 8), 400,
                          "input 'features': FP32 'data' must hold numbers, got True"),
    "numbers and a string": (tensor(data=[*CLAIM[:7], "8"]), 400,
                             "FP32 'data' must hold numbers, got '8'"),
    "a string deep inside": (tensor(data=[[*CLAIM[:7], "x"]]), 400,
                             "FP32 'data' must hold numbers, got 'x'"),
    "null for FP32": (tensor(data=[*CLAIM[:7], None]), 400,
                      "FP32 'data' must hold numbers, got None"),
    "an object for FP32": (tensor(data=[*CLAIM[:7], {"v": 1}]), 400,
                           "FP32 'data' must hold numbers, got {'v': 1}"),
    "a long string": (tensor(data=["x" * 100] * 8), 400,
                      "FP32 'data' must hold numbers, got '" + "x" * 36 + "..."),
    "a float for INT32": (tensor(datatype="INT32", data=[1, 2, 3, 4, 5, 6, 7, 1.5]), 400,
                          "INT32 'data' must hold integers, got 1.5"),
    "out of range UINT8": (tensor(datatype="UINT8", data=[0, 1, 2, 3, 4, 5, 6, 256]), 400,
                           "256 is out of range for UINT8 [0, 255]"),
    "negative UINT32": (tensor(datatype="UINT32", data=[0, 1, 2, 3, 4, 5, 6, -1]), 400,
                        "-1 is out of range for UINT32 [0, 4294967295]"),
    "beyond INT64": (tensor(datatype="INT64", data=[2**63] * 8), 400,
                     "9223372036854775808 is out of range for INT64"),
    "numbers for BOOL": (tensor(datatype="BOOL", data=[1] * 8), 400,
                         "BOOL 'data' must hold booleans, got 1"),
    "numbers for BYTES": (tensor(datatype="BYTES", data=[1] * 8), 400,
                          "BYTES 'data' must hold strings, got 1"),
    "a scalar 'data'": (tensor(shape=[1], data="x"), 400,
                        "FP32 'data' must hold numbers, got 'x'"),
    "ragged data": (tensor(data=[CLAIM[:3], CLAIM[3:]]), 400,
                    "input 'features': nested 'data' does not have the shape [1, 8]"),
    "nested unevenly": (tensor(data=[[*CLAIM[:7], [1.0]]]), 400,
                        "input 'features': nested 'data' does not have the shape [1, 8]"),
    "nested deeper than the shape": (tensor(data=[[[v] for v in CLAIM]]), 400,
                                     "nested 'data' does not have the shape [1, 8]"),
    "not JSON": (b"{inputs: nope}", 400, "request body is not valid JSON"),
    "an empty body": (b"", 400, "request body is not valid JSON"),
    "an infinite number": (tensor(data=CLAIM[:7]).replace(b"]", b", 1e999]", 1), 400,
                           "request body is not valid JSON"),
    "NaN": (tensor(data=CLAIM[:7]).replace(b"]", b", NaN]", 1), 400,
            "request body is not valid JSON"),
    "a top-level list": (b"[1, 2]", 400, "request body must be a JSON object"),
    "no inputs": (b"{}", 400, "'inputs' must be a non-empty list"),
    "empty inputs": (doc(inputs=[]), 400, "'inputs' must be a non-empty list"),
    "an input that is a list": (doc(inputs=[[1]]), 400, "inputs[0] must be an object"),
    "no name": (tensor(name=None), 400, "inputs[0]: 'name' must be a non-empty string"),
    "an empty name": (tensor(name=""), 400, "inputs[0]: 'name' must be a non-empty string"),
    "no shape": (tensor(shape=None), 400,
                 "input 'features': 'shape' must be a list of at most 16 dimensions"),
    "a string shape": (tensor(shape="1,8"), 400, "'shape' must be a list of at most 16"),
    "a float dim": (tensor(shape=[1.0, 8]), 400,
                    "'shape' must hold non-negative integers, got 1.0"),
    "a boolean dim": (tensor(shape=[True, 8]), 400,
                      "'shape' must hold non-negative integers, got True"),
    "17 dims": (tensor(shape=[1] * 17), 400, "'shape' must be a list of at most 16"),
    "no datatype": (tensor(datatype=None), 400, "input 'features': unknown datatype None"),
    "neither data nor binary size": (tensor(data=None), 400,
                                     "input 'features': has neither 'data' nor "
                                     "'binary_data_size'"),
    "request parameters not an object": (doc(parameters=[1]), 400,
                                         "'parameters' must be an object"),
    "input parameters not an object": (tensor(parameters="x"), 400,
                                       "input 'features': 'parameters' must be an object"),
    "negative binary size": (tensor(data=None, parameters={"binary_data_size": -1}), 400,
                             "'binary_data_size' must be a non-negative integer"),
    "binary size off": (tensor(data=None, parameters={"binary_data_size": 31}), 400,
                        "binary_data_size 31 does not match shape [1, 8] of FP32 (32 bytes)"),
    "outputs not a list": (doc(outputs={"name": "x"}), 400,
                           "'outputs' must be a list of objects with a 'name'"),
    "an output without a name": (doc(outputs=[{}]), 400,
                                 "'outputs' must be a list of objects with a 'name'"),
    "an input the model lacks": (tensor(name="nope"), 400,
                                 "unexpected inference input 'nope' for model 'claims_risk'"),
    "an output the model lacks": (doc(outputs=[{"name": "zz"}]), 400,
                                  "unexpected inference output 'zz' for model 'claims_risk'"),
    "a rank the model lacks": (tensor(shape=[1, 8, 1]), 400,
                               "unexpected shape for input 'features' for model 'claims_risk'"),
    "a datatype the model lacks": (tensor(datatype="INT32", data=[1] * 8), 400,
                                   "inference input 'features' data-type is 'INT32', but "
                                   "model 'claims_risk' expects 'FP32'"),
}


def _post(address: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"http://{address}/v2/models/claims_risk/infer", content=body,
                      headers={"content-type": "application/json", **headers}, timeout=30)


@pytest.mark.parametrize("hop", ["gateway", "sidecar"])
@pytest.mark.parametrize(("body", "status", "error"), REST.values(), ids=REST.keys())
def test_rest_malformed_bodies_are_4xx(stack: Stack, hop: str, body: bytes, status: int,
                                       error: str) -> None:
    address, headers = ((stack.gateway_http, bearer()) if hop == "gateway"
                        else (stack.sidecar_http, {}))
    resp = _post(address, body, headers)
    assert resp.status_code == status, resp.text
    assert error in resp.json()["error"], resp.json()


def grpc_infer(*, datatype: str = "FP32", shape: tuple[int, ...] = (1, 8),
               inputs: int = 1, raw: bytes | None = None, **contents: Any) -> bytes:
    req = service_pb2.ModelInferRequest(model_name="claims_risk")
    for _ in range(inputs):
        t = req.inputs.add(name="features", datatype=datatype)
        t.shape.extend(shape)
        for field, values in contents.items():
            getattr(t.contents, field).extend(values)
        if raw is not None:
            req.raw_input_contents.append(raw)
    return bytes(req.SerializeToString())


# name: (message, code, the error's text)
GRPC: dict[str, tuple[bytes, grpc.StatusCode, str]] = {
    "too few values": (grpc_infer(fp32_contents=CLAIM[:7]), grpc.StatusCode.INVALID_ARGUMENT,
                       "[request id: <id_unknown>] input byte size mismatch for input "
                       "'features' for model 'claims_risk'. Expected 32, got 28"),
    "contents of another type": (grpc_infer(int_contents=[1] * 8),
                                 grpc.StatusCode.INVALID_ARGUMENT,
                                 "[request id: <id_unknown>] input byte size mismatch for "
                                 "input 'features' for model 'claims_risk'. Expected 32, got 0"),
    "contents and raw contents": (grpc_infer(fp32_contents=CLAIM, raw=bytes(32)),
                                  grpc.StatusCode.INVALID_ARGUMENT,
                                  "contents field must not be specified when using "
                                  "raw_input_contents for 'features' for model 'claims_risk'"),
    "no inputs": (grpc_infer(inputs=0), grpc.StatusCode.INVALID_ARGUMENT,
                  "expected 1 inputs but got 0 inputs for model 'claims_risk'"),
    "a datatype the model lacks": (grpc_infer(datatype="INT32", int_contents=[1] * 8),
                                   grpc.StatusCode.INVALID_ARGUMENT,
                                   "inference input 'features' data-type is 'INT32', but "
                                   "model 'claims_risk' expects 'FP32'"),
    "a rank the model lacks": (grpc_infer(shape=(1, 8, 1), fp32_contents=CLAIM),
                               grpc.StatusCode.INVALID_ARGUMENT,
                               "unexpected shape for input 'features'"),
    "an unknown datatype": (grpc_infer(datatype="FLOAT", fp32_contents=CLAIM),
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "unexpected explicit tensor data for input tensor 'features' for "
                            "model 'claims_risk' of type 'FP32', expected datatype '<invalid>'"),
}


@pytest.mark.parametrize("hop", ["gateway", "sidecar"])
@pytest.mark.parametrize(("message", "code", "error"), GRPC.values(), ids=GRPC.keys())
def test_grpc_malformed_messages_are_client_errors(stack: Stack, hop: str, message: bytes,
                                                   code: grpc.StatusCode, error: str) -> None:
    address = stack.gateway_grpc if hop == "gateway" else stack.sidecar_grpc
    metadata = tuple(bearer().items()) if hop == "gateway" else ()
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(message, metadata=metadata, timeout=10)
    assert info.value.code() == code, info.value.details()
    assert error in (info.value.details() or "")


def test_the_table_covers_thirty_classes() -> None:
    assert len(REST) + len(GRPC) >= 30


def test_a_version_nobody_serves_is_404_before_routing(stack: Stack) -> None:
    made_up = [str(v) for v in range(900, 940)]
    for version in made_up:
        resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/versions/"
                          f"{version}/infer", content=tensor(), headers=bearer(), timeout=30)
        assert (resp.status_code, resp.json()) == (404, {
            "error": f"Request for unknown model: 'claims_risk' version {version} is not found"})
    grpc_call = service_pb2.ModelInferRequest.FromString(grpc_infer(fp32_contents=CLAIM))
    grpc_call.model_version = "941"
    with grpc.insecure_channel(stack.gateway_grpc) as channel, \
            pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(grpc_call.SerializeToString(),
                                   metadata=tuple(bearer().items()), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == ("Request for unknown model: 'claims_risk' version 941 is "
                                    "not found")
    served = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/versions/1/infer",
                        content=tensor(), headers=bearer(), timeout=30)
    assert (served.status_code, served.json()["model_version"]) == (200, "1")
    metrics = httpx.get(f"http://{stack.gateway_http}/metrics").text
    series = [line for line in metrics.splitlines() if line.startswith("aios_gateway_")]
    assert not [line for line in series if 'version="9' in line], "no series per made-up one"
    assert any('version="1"' in line for line in series)
    sidecar = httpx.get(f"http://{stack.sidecar_http}/metrics").text
    assert not [line for line in sidecar.splitlines() if 'version="9' in line]
