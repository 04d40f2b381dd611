"""Decode KServe v2 tensors where a service must look at them (sidecar records, shadow
comparisons): REST JSON, REST binary extension and gRPC raw contents, into numpy arrays."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import DecodeError
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2

from aios.errors import InvalidInput
from aios.kserve import InferHeader

NUMPY_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}

Tensors = dict[str, NDArray[Any]]
Outputs = Tensors


def plain_body(body: bytes, headers: Mapping[str, str]) -> bytes:
    """A response body as sent before any content encoding the client asked for."""
    encoding = headers.get("content-encoding", "")
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def encoded_body(body: bytes, encoding: str) -> bytes:
    """``body`` in the content encoding ``plain_body`` undoes."""
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


def rest_response(body: bytes, headers: Mapping[str, str]) -> tuple[dict[str, Any], Outputs]:
    """The JSON header and numeric outputs of a KServe v2 REST response (JSON or binary
    extension, compressed or not)."""
    body = plain_body(body, headers)
    header_len = int(headers.get("inference-header-content-length", len(body)))
    doc = orjson.loads(body[:header_len])
    return doc, _rest_tensors(doc, "outputs", body, header_len)


def json_outputs(doc: Mapping[str, Any]) -> Outputs:
    """Numeric outputs of a parsed KServe v2 JSON response (no binary tensors)."""
    return _rest_tensors(doc, "outputs", b"", 0)


def rest_outputs(body: bytes, headers: Mapping[str, str]) -> Outputs:
    """Numeric outputs of a KServe v2 REST response."""
    return rest_response(body, headers)[1]


def grpc_outputs(payload: bytes) -> Outputs:
    """Numeric outputs of a serialized ModelInferResponse (raw contents)."""
    return response_outputs(service_pb2.ModelInferResponse.FromString(payload))


def response_outputs(resp: service_pb2.ModelInferResponse) -> Outputs:
    """Numeric outputs of a ModelInferResponse (raw contents)."""
    out: Outputs = {}
    for i, o in enumerate(resp.outputs):
        dtype = NUMPY_DTYPES.get(o.datatype)
        if dtype is not None and i < len(resp.raw_output_contents):
            out[o.name] = np.frombuffer(resp.raw_output_contents[i], dtype=dtype).reshape(
                list(o.shape))
    return out




def _rest_tensors(doc: Mapping[str, Any], key: str, body: bytes, offset: int) -> Tensors:
    out: Tensors = {}
    for t in doc.get(key, []):
        dtype = NUMPY_DTYPES.get(t["datatype"])
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if dtype is not None:
                out[t["name"]] = np.frombuffer(body[offset:offset + size],
                                               dtype=dtype).reshape(t["shape"])
            offset += size
        elif dtype is not None:
            out[t["name"]] = np.asarray(t["data"], dtype=dtype).reshape(t["shape"])
    return out


def rest_request_inputs(body: bytes, header: InferHeader) -> Tensors:
    """The numeric inputs of a REST infer request whose header was validated."""
    return _rest_tensors(header.doc, "inputs", body, header.length)


_TYPED_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
                   "INT64": "int64_contents", "BOOL": "bool_contents",
                   "UINT32": "uint_contents", "UINT64": "uint64_contents"}


def byte_size_mismatch(request: Any, name: str, need: int, got: int) -> InvalidInput:
    """Triton's own words for an input whose bytes do not fill its shape."""
    return InvalidInput(f"[request id: {request.id or '<id_unknown>'}] input byte size "
                        f"mismatch for input '{name}' for model '{request.model_name}'. "
                        f"Expected {need}, got {got}")


def grpc_request_inputs(payload: bytes) -> tuple[service_pb2.ModelInferRequest, Tensors]:
    """The parsed ModelInferRequest and its numeric inputs, checked against their shapes.

    Raises InvalidInput for a message that does not parse, a negative dim, or contents
    whose size does not match shape x datatype.
    """
    try:
        req = service_pb2.ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise InvalidInput("malformed protobuf: not a ModelInferRequest") from exc
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs")
    out: Tensors = {}
    for i, t in enumerate(req.inputs):
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input '{t.name}': shape {shape} has a negative dim")
        count = math.prod(shape)
        dtype = NUMPY_DTYPES.get(t.datatype)
        if dtype is None:
            continue
        need = count * np.dtype(dtype).itemsize
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"contents field must not be specified when using "
                                   f"raw_input_contents for '{t.name}' for model "
                                   f"'{req.model_name}'")
            if len(raw[i]) != need:
                raise byte_size_mismatch(req, t.name, need, len(raw[i]))
            out[t.name] = np.frombuffer(raw[i], dtype=dtype).reshape(shape)
        elif t.datatype in _TYPED_CONTENTS:
            values = getattr(t.contents, _TYPED_CONTENTS[t.datatype])
            if len(values) != count:
                raise byte_size_mismatch(req, t.name, need,
                                         len(values) * np.dtype(dtype).itemsize)
            out[t.name] = np.asarray(values, dtype=dtype).reshape(shape)
    return req, out
