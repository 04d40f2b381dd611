"""Build decision records from what the sidecar saw. Pure functions."""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from numpy.typing import NDArray

from aios.config import Redaction
from proto.decision_record_pb2 import ColumnRedaction, TensorRecord

DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
             "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
             "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL"}
# Keyed by dtype object: naming a dtype (str(dtype)) costs more than the lookup.
_BY_DTYPE = {np.dtype(name): kserve for name, kserve in DATATYPES.items()}


@dataclass(frozen=True)
class ColumnRules:
    """Feature columns of one tensor to redact on their own: index → (name, rule), and
    the key their digests are made with."""

    columns: Mapping[int, tuple[str, Redaction]]
    key: bytes


def _redact_columns(array: NDArray[Any], rules: ColumnRules,
                    ) -> tuple[NDArray[Any], list[ColumnRedaction]]:
    """``array`` with the ruled columns zeroed, and what was done to each."""
    out = array.copy()
    done = []
    for index, (name, rule) in sorted(rules.columns.items()):
        if index >= array.shape[1]:
            continue
        digest = b""
        if rule == "hash":
            column = np.ascontiguousarray(array[:, index]).tobytes()
            digest = hmac.new(rules.key, name.encode() + b"\0" + column, "sha256").digest()
        out[:, index] = 0
        done.append(ColumnRedaction(index=index, name=name, redaction=rule, digest=digest))
    return out, done


def add_tensor(dest: RepeatedCompositeFieldContainer[TensorRecord], name: str,
               array: NDArray[Any], redaction: Redaction,
               columns: ColumnRules | None = None) -> None:
    """Append a tensor to a record's inputs or outputs: values kept, hashed or dropped as
    configured, ``columns`` of a [rows, features] tensor redacted first. (Made in place:
    a TensorRecord handed to the record would be copied.)"""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    redacted: list[ColumnRedaction] = []
    if columns is not None and array.ndim == 2 and redaction != "drop":
        array, redacted = _redact_columns(array, columns)
    contents = array.tobytes()
    datatype = _BY_DTYPE.get(array.dtype) or str(array.dtype)
    if redaction == "keep":
        dest.add(name=name, datatype=datatype, shape=array.shape, redaction=redaction,
                 sha256=hashlib.sha256(contents).digest(), contents=contents, columns=redacted)
    elif redaction == "hash":
        dest.add(name=name, datatype=datatype, shape=array.shape, redaction=redaction,
                 sha256=hashlib.sha256(contents).digest(), columns=redacted)
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
                default: Redaction, columns: tuple[str, ColumnRules] | None = None) -> None:
    """Append ``arrays`` to a record's inputs or outputs under a model's redaction rules
    (``columns``: a tensor's name and its column rules)."""
    for name, array in arrays.items():
        add_tensor(dest, name, array, rules.get(name, default),
                   columns[1] if columns is not None and columns[0] == name else None)
