"""Client garbage at the gateway: a 4xx that says what is wrong, and Triton never called."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import bearer, infer_json, token

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]


def triton_calls(stack: Stack) -> float:
    """Every inference request Triton has seen, successful or not."""
    text = httpx.get(f"http://127.0.0.1:{stack.ports.triton_metrics}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("nv_inference_request_success{",
                                   "nv_inference_request_failure{")))


@pytest.fixture
def untouched(stack: Stack) -> Iterator[None]:
    before = triton_calls(stack)
    yield
    assert triton_calls(stack) == before, "Triton was called"


def body(**changes: object) -> bytes:
    doc = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                       "data": CLAIM}], **changes}
    return json.dumps(doc).encode()


REST = {
    "non-UTF-8": (b"\xff\xfe\x00{", {}, 400, "request body is not valid JSON"),
    "deeply nested": (b"[" * 5000 + b"]" * 5000, {}, 400, "request body is not valid JSON"),
    "negative dim": (body(inputs=[{"name": "features", "datatype": "FP32", "shape": [-1, 8],
                                   "data": CLAIM}]), {}, 400,
                     "input 'features': 'shape' must hold non-negative integers, got -1"),
    "overflowing dims": (body(inputs=[{"name": "features", "datatype": "FP32",
                                       "shape": [2**62, 2**62], "data": CLAIM}]), {}, 400,
                         "is too large"),
    "shape and data disagree": (body(inputs=[{"name": "features", "datatype": "FP32",
                                              "shape": [2, 8], "data": CLAIM}]), {}, 400,
                                "Unable to parse 'data': Shape does not match true shape of "
                                "'data' field"),
    "wrong datatype": (body(inputs=[{"name": "features", "datatype": "float",
                                     "shape": [1, 8], "data": CLAIM}]), {}, 400,
                       "unknown datatype 'float'"),
    "header length beyond body": (infer_json([CLAIM]),
                                  {"inference-header-content-length": "99999"}, 400,
                                  "Inference-Header-Content-Length 99999 exceeds the body"),
    "negative header length": (infer_json([CLAIM]),
                               {"inference-header-content-length": "-5"}, 400,
                               "Inference-Header-Content-Length must be a non-negative"),
    "sequence_id not a number or string": (body(parameters={"sequence_id": [7]}), {}, 400,
                                           "parameter 'sequence_id' must be a non-negative "
                                           "integer or a string"),
    "negative priority": (body(parameters={"priority": -1}), {}, 400,
                          "parameter 'priority' must be a non-negative integer, a priority "
                          "level (1 is the most urgent, 0 the model's default); got -1"),
    "timeout as text": (body(parameters={"timeout": "5s"}), {}, 400,
                        "parameter 'timeout' must be a non-negative integer, a queue timeout "
                        "in microseconds; got '5s'"),
    "reserved triton_*": (body(parameters={"triton_enable_empty_final_response": True}), {},
                          400, "parameter 'triton_enable_empty_final_response' is reserved"),
}


@pytest.mark.parametrize(("payload", "headers", "status", "error"), REST.values(),
                         ids=REST.keys())
@pytest.mark.usefixtures("untouched")
def test_rest_garbage(stack: Stack, payload: bytes, headers: dict[str, str], status: int,
                      error: str) -> None:
    resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
                      content=payload, headers={**bearer(), **headers})
    assert resp.status_code == status
    assert error in resp.json()["error"], resp.json()


def raw_request(**fields: object) -> bytes:
    req = service_pb2.ModelInferRequest(model_name="claims_risk")
    tensor = req.inputs.add(name="features", datatype="FP32")
    tensor.shape.extend(fields.pop("shape", [1, 8]))  # type: ignore[arg-type]
    req.raw_input_contents.append(fields.pop("raw", bytes(32)))  # type: ignore[arg-type]
    for key in fields.pop("parameters", []):  # type: ignore[attr-defined]
        req.parameters[key].int64_param = 1
    return bytes(req.SerializeToString())


def priority_request() -> bytes:
    req = service_pb2.ModelInferRequest.FromString(raw_request())
    req.parameters["priority"].double_param = 1.5
    return bytes(req.SerializeToString())


GRPC = {
    "truncated protobuf": (grpc_request()[:-3], "malformed protobuf"),
    "wrong wire type": (b"\x0b\x01", "malformed protobuf: unsupported wire type 3"),
    "raw length mismatch": (raw_request(raw=bytes(31)),
                            "[request id: <id_unknown>] input byte size mismatch for input "
                            "'features' for model 'claims_risk'. Expected 32, got 31"),
    "negative dim": (raw_request(shape=[-1, 8]), "shape [-1, 8] has a negative dim"),
    "sequence_end without an id": (raw_request(parameters=["sequence_end"]),
                                   "parameter 'sequence_end' needs a 'sequence_id'"),
    "reserved triton_*": (raw_request(parameters=["triton_x"]), "parameter 'triton_x' is"),
    "priority as a double": (priority_request(), "parameter 'priority' must be a non-negative "
                                                 "integer"),
}


@pytest.mark.parametrize(("payload", "error"), GRPC.values(), ids=GRPC.keys())
@pytest.mark.usefixtures("untouched")
def test_grpc_garbage(stack: Stack, payload: bytes, error: str) -> None:
    with grpc.insecure_channel(stack.gateway_grpc) as channel, \
            pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(payload, metadata=tuple(bearer().items()), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error in info.value.details()


@pytest.mark.parametrize("path", ["//v2//models/claims_risk/infer",
                                  "/v2/models//claims_risk///infer"])
def test_repeated_slashes_are_one_path(stack: Stack, path: str) -> None:
    resp = httpx.post(f"http://{stack.gateway_http}{path}", content=infer_json([CLAIM]),
                      headers=bearer())
    assert resp.status_code == 200
    assert resp.json()["model_name"] == "claims_risk"


@pytest.mark.usefixtures("untouched")
def test_encoded_dot_segments_are_refused(stack: Stack) -> None:
    url = f"http://{stack.gateway_http}/v2/models/other/%2e%2e/claims_risk/infer"
    resp = httpx.post(httpx.URL(url), content=infer_json([CLAIM]), headers=bearer())
    assert (resp.status_code, resp.json()) == (
        400, {"error": "path must not contain '.' or '..' segments"})


def test_expect_continue_with_a_bad_token_is_refused_before_the_body(stack: Stack) -> None:
    host, port = stack.gateway_http.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v2/models/claims_risk/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + token(ttl_s=-60).encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = ""
        while "\r\n\r\n" not in answer or not answer.endswith("}"):
            chunk = sock.recv(4096).decode()
            if not chunk:
                break
            answer += chunk
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "100 Continue" not in answer
    assert '{"error": "token expired"}' in answer

