"""Replay's pure parts: which recorded rows are replayed, and how a candidate compares."""

from __future__ import annotations

import numpy as np
import pytest

from aios.replay import collect, report, wilson
from proto.decision_record_pb2 import DecisionRecord, TensorRecord


def tensor(name: str, values: list[list[float]], redaction: str = "keep") -> TensorRecord:
    data = np.asarray(values, np.float32)
    return TensorRecord(name=name, datatype="FP32", shape=list(data.shape),
                        redaction=redaction, contents=data.tobytes() if redaction == "keep"
                        else b"")


def record(ident: str, rows: list[list[float]], scores: list[float], **fields: object
           ) -> DecisionRecord:
    out = DecisionRecord(decision_id=ident, model=fields.pop("model", "m"),
                         outcome=fields.pop("outcome", "ok"),
                         tenant="acme", business_key=f"K-{ident}", version="1",
                         time_unix_nanos=int(fields.pop("at", 100)), **fields)  # type: ignore[arg-type]
    out.inputs.append(tensor("x", rows))
    out.outputs.append(tensor("y", [[s] for s in scores]))
    return out


def test_only_replayable_decisions_in_the_window_are_collected() -> None:
    hashed = record("h", [[1, 2]], [0.5])
    hashed.inputs[0].CopyFrom(tensor("x", [[1, 2]], "hash"))
    logged = [
        record("a", [[1, 2], [3, 4]], [0.1, 0.9]),
        record("shadow", [[1, 2]], [0.5], shadow=True),
        record("replay", [[1, 2]], [0.5], kind="replay"),
        record("failed", [[1, 2]], [0.5], outcome="UNAVAILABLE"),
        record("other", [[1, 2]], [0.5], model="n"),
        record("early", [[1, 2]], [0.5], at=10),
        hashed,
        record("b", [[5, 6]], [0.7]),
    ]
    got = collect(logged, "m", "x", "y", since_ns=50)
    assert got.decision_ids == ["a", "a", "b"]
    np.testing.assert_array_equal(got.x, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_allclose(got.y, [0.1, 0.9, 0.7], rtol=1e-6)
    assert got.skipped == {"inputs not kept (redacted)": 1}
    assert collect(logged, "m", "x", "y", limit=1).decision_ids == ["a"]


@pytest.mark.parametrize(("agreed", "n", "low", "high"), [
    (50, 100, 0.4038, 0.5962), (100, 100, 0.9630, 1.0), (0, 10, 0.0, 0.2775)])
def test_wilson_interval(agreed: int, n: int, low: float, high: float) -> None:
    assert wilson(agreed, n) == pytest.approx((low, high), abs=1e-4)


def test_the_report_counts_agreement_confusion_deltas_and_segments() -> None:
    rows = [[float(i), float(i % 2)] for i in range(10)]
    recorded = collect([record("a", rows, [0.1 * i for i in range(10)])], "m", "x", "y")
    candidate = np.asarray([0.1 * i for i in range(10)]) + np.where(
        np.arange(10) == 4, 0.2, 0.0)  # row 4: 0.4 -> 0.6 crosses 0.5
    doc = report(recorded, candidate, 0.5, ["amount", "flag"], top=2)
    assert doc["agreement"]["agreed"] == 9 and doc["agreement"]["rows"] == 10
    assert doc["confusion"] == {"recorded_below_candidate_below": 4,
                                "recorded_below_candidate_at_or_above": 1,
                                "recorded_at_or_above_candidate_below": 0,
                                "recorded_at_or_above_candidate_at_or_above": 5}
    assert doc["score_delta"]["max_abs"] == pytest.approx(0.2, abs=1e-6)
    assert doc["largest_disagreements"][0]["delta"] == pytest.approx(0.2, abs=1e-6)
    assert doc["largest_disagreements"][0]["decisions_agree"] is False
    assert [t["tenant"] for t in doc["by_tenant"]] == ["acme"]
    deciles = doc["by_feature_decile"]["amount"]
    assert sum(d["rows"] for d in deciles) == 10
    assert [d["agreed"] for d in deciles if d["rows"] and d["agreed"] < d["rows"]] == [0]
    flags = doc["by_feature_decile"]["flag"]
    assert [d["rows"] for d in flags] == [5, 5]
    with pytest.raises(ValueError, match="9 candidate scores for 10 recorded rows"):
        report(recorded, candidate[:9], 0.5, [])
