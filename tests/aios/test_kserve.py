"""The KServe v2 helpers a proxy uses: protobuf peeking and REST request validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tritonclient.grpc import service_pb2

from aios.errors import InvalidInput
from aios.kserve import json_header_length, peek_model, validate_infer_request, with_model


def infer_request(**fields: Any) -> bytes:
    req = service_pb2.ModelInferRequest(**fields)
    tensor = req.inputs.add(name="features", datatype="FP32")
    tensor.shape.extend([2, 8])
    req.raw_input_contents.append(b"\x01" * 64)
    return bytes(req.SerializeToString())


@pytest.mark.parametrize(("fields", "expected"), [
    ({"model_name": "claims_risk"}, ("claims_risk", "")),
    ({"model_name": "claims_risk", "model_version": "2"}, ("claims_risk", "2")),
    ({"model_name": "m", "model_version": "1", "id": "req-7"}, ("m", "1")),
    ({}, ("", "")),
])
def test_peek_model_reads_name_and_version(fields: dict[str, Any],
                                           expected: tuple[str, str]) -> None:
    assert peek_model(infer_request(**fields)) == expected


@pytest.mark.parametrize("message", [
    service_pb2.ModelMetadataRequest(name="claims_risk", version="1"),
    service_pb2.ModelReadyRequest(name="claims_risk", version="1"),
    service_pb2.ModelConfigRequest(name="claims_risk", version="1"),
])
def test_peek_model_reads_other_model_requests(message: Any) -> None:
    assert peek_model(message.SerializeToString()) == ("claims_risk", "1")


@pytest.mark.parametrize(("payload", "error"), [
    (infer_request(model_name="claims_risk")[:-5], "malformed protobuf: field longer"),
    (b"\x0a\xff", "malformed protobuf: truncated varint"),
    (b"\x0b\x00", "malformed protobuf: unsupported wire type 3"),
    (b"\x0a\x02\xff\xfe", "malformed protobuf: model name is not UTF-8"),
    (b"\x02\x00", "malformed protobuf: field number 0"),
    (b"\x09\x00\x00", "malformed protobuf: truncated field"),
    (b"\x08" + b"\xff" * 11, "malformed protobuf: varint too long"),
])
def test_peek_model_rejects_malformed(payload: bytes, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        peek_model(payload)


@pytest.mark.parametrize("version", ["1", "2", "12345"])
def test_with_model_overrides_the_version_field(version: str) -> None:
    original = infer_request(model_name="claims_risk", model_version="1")
    patched = with_model(original, version=version)
    parsed = service_pb2.ModelInferRequest.FromString(patched)
    assert parsed.model_version == version
    assert parsed.raw_input_contents == service_pb2.ModelInferRequest.FromString(
        original).raw_input_contents
    assert peek_model(patched) == ("claims_risk", version)
    renamed = with_model(original, "other", version)
    assert peek_model(renamed) == ("other", version)


def body(inputs: Any, **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


GOOD = {"name": "features", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}


@pytest.mark.parametrize("payload", [
    body([GOOD]),
    body([{**GOOD, "data": [1, 2, 3, 4]}]),
    body([{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]),
    body([GOOD], outputs=[{"name": "risk_score"}]),
])
def test_valid_json_requests_pass(payload: bytes) -> None:
    validate_infer_request(payload, len(payload))


def test_valid_binary_request_passes() -> None:
    header = body([{"name": "features", "datatype": "FP32", "shape": [1, 8],
                    "parameters": {"binary_data_size": 32}}])
    validate_infer_request(header + b"\0" * 32, len(header))


BAD = [
    (b"{bad", "request body is not valid JSON"),
    (b"\xff\xfe", "request body is not valid JSON"),
    (b"[1]", "request body must be a JSON object"),
    (body([]), "'inputs' must be a non-empty list"),
    (json.dumps({"x": 1}).encode(), "'inputs' must be a non-empty list"),
    (body([1]), r"inputs\[0\] must be an object"),
    (body([{**GOOD, "name": ""}]), r"inputs\[0\]: 'name' must be a non-empty string"),
    (body([{**GOOD, "datatype": "FLOAT"}]), "input 'features': unknown datatype 'FLOAT'"),
    (body([{**GOOD, "shape": "2x2"}]), "'shape' must be a list"),
    (body([{**GOOD, "shape": [2, -2]}]), "'shape' must hold non-negative integers, got -2"),
    (body([{**GOOD, "shape": [2, 2.5]}]), "'shape' must hold non-negative integers, got 2.5"),
    (body([{**GOOD, "shape": [2**40, 2**40]}]), "is too large"),
    (body([{**GOOD, "shape": [1] * 17}]), "at most 16 dimensions"),
    (body([{**GOOD, "data": [1, 2, 3]}]), "Unable to parse 'data': Shape does not match"),
    (body([{k: v for k, v in GOOD.items() if k != "data"}]),
     "has neither 'data' nor 'binary_data_size'"),
    (body([{**GOOD, "parameters": {"binary_data_size": 3}}]),
     r"binary_data_size 3 does not match shape \[2, 2\] of FP32 \(16 bytes\)"),
    (body([{**GOOD, "parameters": {"binary_data_size": -1}}]),
     "'binary_data_size' must be a non-negative integer"),
    (body([{**GOOD, "parameters": []}]), "'parameters' must be an object"),
    (body([{**GOOD, "data": json.loads("[" * 40 + "1" + "]" * 40)}]),
     r"nested 'data' does not have the shape \[2, 2\]"),
    (body([GOOD], outputs="risk_score"), "'outputs' must be a list of objects"),
]


@pytest.mark.parametrize(("payload", "error"), BAD)
def test_bad_json_requests_are_named(payload: bytes, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        validate_infer_request(payload, len(payload))


def test_binary_data_shorter_than_declared() -> None:
    header = body([{"name": "features", "datatype": "FP32", "shape": [1, 8],
                    "parameters": {"binary_data_size": 32}}])
    with pytest.raises(InvalidInput, match="binary tensor data is 31 bytes, the inputs declare 32"):
        validate_infer_request(header + b"\0" * 31, len(header))


@pytest.mark.parametrize(("value", "length", "error"), [
    ("-1", 10, "must be a non-negative integer"),
    ("abc", 10, "must be a non-negative integer"),
    ("\u00b9", 10, "must be a non-negative integer"),  # a digit to str.isdigit, not to int
    ("11", 10, "Inference-Header-Content-Length 11 exceeds the body of 10 bytes"),
])
def test_header_length_rejects(value: str, length: int, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        json_header_length(value, length)


def test_header_length_defaults_to_body() -> None:
    assert json_header_length(None, 42) == 42
    assert json_header_length("7", 42) == 7


def test_scheduling_parameters_are_rewritten_in_place_of_the_asked_ones() -> None:
    import orjson
    from tritonclient.grpc import service_pb2

    from aios.kserve import (
        grpc_scheduling,
        validate_infer_request,
        with_grpc_parameters,
        with_json_parameters,
    )

    head = orjson.dumps({"parameters": {"priority": 1, "other": "x"}, "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1],
         "parameters": {"binary_data_size": 4}}]})
    body = head + b"\x00\x00\x80\x3f"
    header = validate_infer_request(body, len(head))
    rewritten, length = with_json_parameters(body, header, {"priority": 3})
    assert orjson.loads(rewritten[:length])["parameters"] == {"priority": 3, "other": "x"}
    assert rewritten[length:] == b"\x00\x00\x80\x3f"

    request = service_pb2.ModelInferRequest(model_name="m")
    request.parameters["priority"].uint64_param = 1
    request.parameters["timeout"].int64_param = 99
    message = request.SerializeToString()
    assert grpc_scheduling(request.parameters) == {"priority": 1, "timeout": 99}
    again = service_pb2.ModelInferRequest.FromString(
        with_grpc_parameters(message, {"priority": 2}))
    assert (again.parameters["priority"].uint64_param, again.parameters["timeout"].int64_param,
            again.model_name) == (2, 99, "m")
    assert grpc_scheduling(service_pb2.ModelInferRequest(model_name="m").parameters) == {}
