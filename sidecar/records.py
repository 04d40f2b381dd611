"""Build decision records from what the sidecar saw. Pure functions."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aios.config import Redaction
from proto.decision_record_pb2 import TensorRecord

DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
             "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
             "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL"}
# Keyed by dtype object: naming a dtype (str(dtype)) costs more than the lookup.
_BY_DTYPE = {np.dtype(name): kserve for name, kserve in DATATYPES.items()}


def tensor_record(name: str, array: NDArray[Any], redaction: Redaction) -> TensorRecord:
    """A tensor for the record: values kept, hashed or dropped as configured."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    contents = array.tobytes()
    datatype = _BY_DTYPE.get(array.dtype) or str(array.dtype)
    record = TensorRecord(name=name, datatype=datatype, shape=array.shape,
                          redaction=redaction)
    if redaction != "drop":
        record.sha256 = hashlib.sha256(contents).digest()
    if redaction == "keep":
        record.contents = contents
    return record


def trace_id(traceparent: str | None) -> str:
    """The trace id of a W3C traceparent header ("" if absent or malformed)."""
    if not traceparent:
        return ""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def tensors(arrays: Mapping[str, NDArray[Any]], rules: Mapping[str, Redaction],
            default: Redaction) -> Iterable[TensorRecord]:
    """Tensor records for ``arrays`` under a model's redaction rules."""
    return [tensor_record(n, a, rules.get(n, default)) for n, a in arrays.items()]
