"""Build decision records from what the sidecar saw. Pure functions."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from numpy.typing import NDArray

from aios.config import Redaction
from proto.decision_record_pb2 import TensorRecord

DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
             "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
             "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL"}
# Keyed by dtype object: naming a dtype (str(dtype)) costs more than the lookup.
_BY_DTYPE = {np.dtype(name): kserve for name, kserve in DATATYPES.items()}


def add_tensor(dest: RepeatedCompositeFieldContainer[TensorRecord], name: str,
               array: NDArray[Any], redaction: Redaction) -> None:
    """Append a tensor to a record's inputs or outputs: values kept, hashed or dropped as
    configured. (Made in place: a TensorRecord handed to the record would be copied.)"""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    contents = array.tobytes()
    datatype = _BY_DTYPE.get(array.dtype) or str(array.dtype)
    if redaction == "keep":
        dest.add(name=name, datatype=datatype, shape=array.shape, redaction=redaction,
                 sha256=hashlib.sha256(contents).digest(), contents=contents)
    elif redaction == "hash":
        dest.add(name=name, datatype=datatype, shape=array.shape, redaction=redaction,
                 sha256=hashlib.sha256(contents).digest())
    else:
        dest.add(name=name, datatype=datatype, shape=array.shape, redaction=redaction)


def trace_id(traceparent: str | None) -> str:
    """The trace id of a W3C traceparent header ("" if absent or malformed)."""
    if not traceparent:
        return ""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def add_tensors(dest: RepeatedCompositeFieldContainer[TensorRecord],
                arrays: Mapping[str, NDArray[Any]], rules: Mapping[str, Redaction],
                default: Redaction) -> None:
    """Append ``arrays`` to a record's inputs or outputs under a model's redaction rules."""
    for name, array in arrays.items():
        add_tensor(dest, name, array, rules.get(name, default))
