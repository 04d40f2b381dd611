"""Decode inference outputs (off the hot path) and compare a shadow's with the primary's."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2

NUMPY_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}

Outputs = dict[str, NDArray[Any]]


def rest_outputs(body: bytes, headers: Mapping[str, str]) -> Outputs:
    """Numeric outputs of a KServe v2 REST response, JSON or binary-extension (compressed
    as the client asked, or not)."""
    encoding = headers.get("content-encoding", "")
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    header_len = int(headers.get("inference-header-content-length", len(body)))
    doc = json.loads(body[:header_len])
    out: Outputs = {}
    offset = header_len
    for o in doc.get("outputs", []):
        dtype = NUMPY_DTYPES.get(o["datatype"])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if dtype is not None:
                out[o["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(
                    o["shape"])
            offset += size
        elif dtype is not None:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def grpc_outputs(payload: bytes) -> Outputs:
    """Numeric outputs of a serialized ModelInferResponse (raw contents)."""
    resp = service_pb2.ModelInferResponse.FromString(payload)
    out: Outputs = {}
    for i, o in enumerate(resp.outputs):
        dtype = NUMPY_DTYPES.get(o.datatype)
        if dtype is not None and i < len(resp.raw_output_contents):
            out[o.name] = np.frombuffer(resp.raw_output_contents[i], dtype=dtype).reshape(
                list(o.shape))
    return out


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a shadow's outputs differ from the primary's."""

    max_abs: float
    max_rel: float
    rows: int  # decisions compared (0 without a threshold)
    agreed: int


def compare(primary: Outputs, shadow: Outputs, output: str, threshold: float | None,
            ) -> Comparison:
    """Per-output max abs/rel difference over common outputs; with a threshold, decision
    agreement per row of ``output`` (decision = value >= threshold)."""
    names = [output] if output else sorted(set(primary) & set(shadow))
    max_abs = max_rel = 0.0
    rows = agreed = 0
    for name in names:
        a, b = primary.get(name), shadow.get(name)
        if a is None or b is None or a.shape != b.shape:
            raise ValueError(f"output '{name}' missing or shaped differently in the shadow")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(a64 - b64)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(a64), 1e-12)).max()))
        if threshold is not None:
            da = (a64 >= threshold).reshape(len(a64), -1).all(axis=1)
            db = (b64 >= threshold).reshape(len(b64), -1).all(axis=1)
            rows += len(da)
            agreed += int((da == db).sum())
    return Comparison(max_abs, max_rel, rows, agreed)
