"""A gRPC infer call as the KServe v2 JSON request it stands for, and the JSON answer as
the gRPC response Triton would have sent.

The gateway carries gRPC infer calls to a sidecar in its REST envelopes (`aios.envelope`)
this way: the hop then costs what a REST call costs, where grpcio's per-call threads and
context switches cost several times more. Only what converts exactly is converted:
numeric tensors (a float32 goes to JSON as the shortest decimal of its float64 value, which
reads back as the same float32), no parameters, no requested outputs. Anything else stays
a gRPC call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from aios.batching import MERGEABLE_DATATYPES
from aios.errors import InvalidInput
from aios.kserve import InferHeader, check_infer_doc
from aios.tensors import NUMPY_DTYPES, grpc_request_inputs

# Values a call may carry to be converted: JSON text costs several times the raw bytes
# per value, while what the envelope saves is per call; a large tensor is cheaper as gRPC.
MAX_JSON_VALUES = 4096


def request_json(payload: bytes) -> tuple[bytes, InferHeader] | None:
    """The JSON body of a serialized ModelInferRequest and its checked header, or None if
    it must stay gRPC (malformed, parameters, requested outputs, a datatype JSON does not
    carry exactly, more than MAX_JSON_VALUES values, past the REST checks' limits)."""
    try:
        request, arrays = grpc_request_inputs(payload)
    except InvalidInput:
        return None  # the gRPC path answers it, with the error it always gave
    if not request.inputs or request.parameters or request.outputs or len(arrays) != len(
            request.inputs) or sum(a.size for a in arrays.values()) > MAX_JSON_VALUES:
        return None
    inputs = []
    for tensor in request.inputs:
        if tensor.parameters or tensor.datatype not in MERGEABLE_DATATYPES:
            return None
        inputs.append({"name": tensor.name, "datatype": tensor.datatype,
                       "shape": list(tensor.shape), "data": arrays[tensor.name].ravel().tolist()})
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    body = orjson.dumps(doc)
    try:
        return body, check_infer_doc(doc, len(body))
    except InvalidInput:
        return None  # past the REST limits (dims, elements): gRPC's answer stands


def response_message(body: bytes, held: bool = False) -> bytes:
    """The serialized ModelInferResponse for a JSON infer response, outputs as raw
    contents (as Triton's gRPC front end sends them); ValueError if it is not one.
    ``held``: an answer held for review, which has no outputs."""
    try:
        doc = orjson.loads(body)
        response = service_pb2.ModelInferResponse(
            model_name=doc["model_name"], model_version=str(doc.get("model_version", "")),
            id=doc.get("id", ""))
        for name, value in doc.get("parameters", {}).items():
            _set_parameter(response.parameters[name], name, value)
        for output in doc.get("outputs", ()) if held else doc["outputs"]:
            datatype = output["datatype"]
            if datatype not in MERGEABLE_DATATYPES or output.get("parameters"):
                raise ValueError(f"output {output['name']!r} is not plain {datatype} data")
            shape = output["shape"]
            values = np.asarray(output["data"], dtype=NUMPY_DTYPES[datatype])
            if values.size != math.prod(shape):
                raise ValueError(f"output {output['name']!r}: {values.size} values for "
                                 f"shape {shape}")
            response.outputs.add(name=output["name"], datatype=datatype, shape=shape)
            response.raw_output_contents.append(values.tobytes())
    except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a KServe v2 infer response: {exc!r}") from exc
    return bytes(response.SerializeToString())


def _set_parameter(parameter: Any, name: str, value: Any) -> None:
    # bool first: in Python a bool is an int too.
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        raise ValueError(f"parameter {name!r} is not a bool, number or string")
