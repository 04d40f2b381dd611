"""gRPC infer messages as KServe JSON and back (`aios.grpcjson`): exact, or not at all."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2

from aios.grpcjson import MAX_JSON_VALUES, request_json, response_message
from aios.kserve import MAX_DIMS

EXTREMES = np.asarray([0.0, -0.0, 1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38,
                       0.1, 1 / 3, 5255.7, np.pi], dtype="<f4")


def infer_request(arrays: dict[str, np.ndarray], raw: bool = True,
                  **fields: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", **fields)
    for name, array in arrays.items():
        datatype = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "bool": "BOOL",
                    "uint8": "UINT8", "int32": "INT32", "float16": "FP16"}[str(array.dtype)]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            request.raw_input_contents.append(array.tobytes())
        else:
            field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
                     "BOOL": "bool_contents", "INT32": "int_contents"}[datatype]
            getattr(tensor.contents, field).extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("raw", [True, False], ids=["raw contents", "typed contents"])
@pytest.mark.parametrize("array", [
    EXTREMES.reshape(2, 5),
    np.asarray([[2.0 ** 60 + 1, -7]], dtype="<i8"),
    np.asarray([[1e-300, 1 / 3]], dtype="<f8"),
    np.asarray([[True, False, True]]),
    np.asarray([[-5, 2 ** 31 - 1]], dtype="<i4"),
], ids=["FP32 extremes", "INT64 beyond 2^53", "FP64", "BOOL", "INT32"])
def test_a_request_becomes_json_that_reads_back_as_the_same_values(
        array: np.ndarray, raw: bool) -> None:
    converted = request_json(infer_request({"x": array}, raw, id="r-1").SerializeToString())
    assert converted is not None
    body, header = converted
    doc = orjson.loads(body)
    assert (header.doc, header.length, header.batch) == (doc, len(body), array.shape[0])
    assert doc["id"] == "r-1" and doc.keys() == {"id", "inputs"}
    (tensor,) = doc["inputs"]
    assert (tensor["name"], tensor["shape"]) == ("x", list(array.shape))
    again = np.asarray(tensor["data"], dtype=array.dtype).reshape(array.shape)
    assert again.tobytes() == array.tobytes()  # bit for bit, -0.0 and denormals too


def test_raw_uint8_goes_as_numbers() -> None:
    converted = request_json(infer_request({"x": np.asarray([[0, 255]], dtype="u1")})
                             .SerializeToString())
    assert converted is not None
    assert orjson.loads(converted[0])["inputs"][0] == {"name": "x", "datatype": "UINT8",
                                               "shape": [1, 2], "data": [0, 255]}


def _with_parameters() -> bytes:
    request = infer_request({"x": EXTREMES.reshape(1, 10)})
    request.parameters["priority"].int64_param = 1
    return request.SerializeToString()


def _with_tensor_parameters() -> bytes:
    request = infer_request({"x": EXTREMES.reshape(1, 10)})
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    return request.SerializeToString()


def _with_outputs() -> bytes:
    request = infer_request({"x": EXTREMES.reshape(1, 10)})
    request.outputs.add(name="y")
    return request.SerializeToString()


def _bytes_tensor() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
    return request.SerializeToString()


def _short_raw() -> bytes:
    request = infer_request({"x": EXTREMES.reshape(2, 5)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request.SerializeToString()


@pytest.mark.parametrize("payload", [
    b"\xff\xff not a protobuf",
    service_pb2.ModelInferRequest(model_name="m").SerializeToString(),
    _with_parameters(),
    _with_tensor_parameters(),
    _with_outputs(),
    _bytes_tensor(),
    infer_request({"x": np.ones((1, 2), "f2")}).SerializeToString(),
    _short_raw(),
    infer_request({"x": np.ones((1, MAX_JSON_VALUES + 1), "<f4")}).SerializeToString(),
    infer_request({"x": np.ones((1,) * (MAX_DIMS + 1), "<f4")}).SerializeToString(),
], ids=["malformed", "no inputs", "request parameters", "tensor parameters",
        "requested outputs", "BYTES", "FP16", "raw contents short of the shape",
        "more values than JSON is worth", "more dims than REST takes"])
def test_a_request_json_would_not_carry_exactly_stays_grpc(payload: bytes) -> None:
    assert request_json(payload) is None


def test_a_json_response_becomes_the_response_triton_sends_over_grpc() -> None:
    scores = np.asarray([[0.12662539], [0.011612862]], dtype="<f4")
    body = orjson.dumps({"id": "abc", "model_name": "claims_risk", "model_version": "2",
                         "outputs": [{"name": "risk_score", "datatype": "FP32",
                                      "shape": [2, 1], "data": scores.ravel().tolist()}]})
    expected = service_pb2.ModelInferResponse(model_name="claims_risk", model_version="2",
                                              id="abc")
    expected.outputs.add(name="risk_score", datatype="FP32", shape=[2, 1])
    expected.raw_output_contents.append(scores.tobytes())
    assert response_message(body) == expected.SerializeToString()


def test_response_parameters_keep_their_types() -> None:
    body = orjson.dumps({"model_name": "m", "parameters": {
        "final": True, "sequence_id": 2 ** 40, "note": "x", "score": 0.5}, "outputs": []})
    parameters = service_pb2.ModelInferResponse.FromString(response_message(body)).parameters
    assert (parameters["final"].bool_param, parameters["sequence_id"].int64_param,
            parameters["note"].string_param, parameters["score"].double_param) == (
        True, 2 ** 40, "x", 0.5)


def test_the_largest_request_json_is_worth_is_converted() -> None:
    assert request_json(infer_request({"x": np.ones((4, MAX_JSON_VALUES // 4), "<f4")})
                        .SerializeToString()) is not None


@pytest.mark.parametrize("body, message", [
    (b"{", "not a KServe v2 infer response"),
    (b'{"model_name": "m"}', "not a KServe v2 infer response"),
    (b'{"model_name": "m", "outputs": [{"name": "s", "datatype": "BYTES", "shape": [1], '
     b'"data": ["a"]}]}', "output 's' is not plain BYTES data"),
    (b'{"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [2], '
     b'"data": [1.0]}]}', "output 'y': 1 values for shape [2]"),
    (b'{"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], '
     b'"data": [1.0], "parameters": {"binary_data_size": 4}}]}',
     "output 'y' is not plain FP32 data"),
    (b'{"model_name": "m", "parameters": {"p": [1]}, "outputs": []}',
     "parameter 'p' is not a bool, number or string"),
], ids=["not json", "no outputs", "BYTES output", "values short of the shape", "binary output",
        "list parameter"])
def test_a_response_that_is_not_plain_json_data_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        response_message(body)


def test_an_answer_held_for_review_has_no_outputs_but_its_parameters() -> None:
    body = b'{"model_name":"m","model_version":"2","parameters":{"aios_review":"pending"}}'
    response = service_pb2.ModelInferResponse.FromString(response_message(body, held=True))
    assert (response.model_name, len(response.outputs),
            response.parameters["aios_review"].string_param) == ("m", 0, "pending")
