"""Decision record fields: redaction per input, trace ids."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from proto.decision_record_pb2 import DecisionRecord
from sidecar.records import add_tensor, add_tensors, trace_id

X = np.arange(16, dtype=np.float32).reshape(2, 8)


@pytest.mark.parametrize(("redaction", "has_contents", "has_hash"), [
    ("keep", True, True), ("hash", False, True), ("drop", False, False)])
def test_redaction(redaction: str, has_contents: bool, has_hash: bool) -> None:
    made = DecisionRecord()
    add_tensor(made.inputs, "features", X, redaction)  # type: ignore[arg-type]
    (record,) = made.inputs
    assert (record.name, record.datatype, list(record.shape)) == ("features", "FP32", [2, 8])
    assert bool(record.contents) is has_contents
    assert bool(record.sha256) is has_hash
    if has_hash:
        assert record.sha256 == hashlib.sha256(X.astype("<f4").tobytes()).digest()
    if has_contents:
        np.testing.assert_array_equal(np.frombuffer(record.contents, "<f4").reshape(2, 8), X)


def test_rules_apply_per_input_with_a_default() -> None:
    made = DecisionRecord()
    add_tensors(made.outputs, {"features": X, "customer_id": np.array([7, 9], dtype=np.int64)},
                {"customer_id": "drop"}, "hash")
    assert [(t.name, t.redaction, bool(t.sha256)) for t in made.outputs] == [
        ("features", "hash", True), ("customer_id", "drop", False)]


@pytest.mark.parametrize(("header", "expected"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("garbage", ""), (None, ""), ("00-short-00f067aa0ba902b7-01", "")])
def test_trace_id(header: str | None, expected: str) -> None:
    assert trace_id(header) == expected
