"""`aios review simulate`'s counting, over records made as the sidecar makes them."""

from __future__ import annotations

import numpy as np

from aios.readable import Names
from aios.reviewrules import Gate, Rule
from aios.reviewsim import simulate
from proto.decision_record_pb2 import DecisionRecord, ShadowAgreement, TensorRecord

NAMES = {("claims_risk", "2"): Names("features", (("claim_amount", "EUR"), ("age", "")),
                                     "risk_score")}


def tensor(name: str, values: list[list[float]], redaction: str = "keep") -> TensorRecord:
    array = np.asarray(values, dtype="<f4")
    return TensorRecord(name=name, datatype="FP32", shape=list(array.shape),
                        redaction=redaction,
                        contents=array.tobytes() if redaction == "keep" else b"")


def record(amount: float, score: float, at: int = 10, **fields: object) -> DecisionRecord:
    return DecisionRecord(**{"model": "claims_risk", "version": "2", "outcome": "ok",
                             "time_unix_nanos": at,
                             "inputs": [tensor("features", [[amount, 40.0]])],
                             "outputs": [tensor("risk_score", [[score]])], **fields})


BAND = Gate("unsure", band=("risk_score", 0.35, 0.75))
BIG = Gate("big", rule=Rule.parse("claim_amount > 10000"))


def test_it_counts_what_each_gate_would_have_queued_against_what_was() -> None:
    logged = [record(500, 0.5, review_gate="unsure"), record(20000, 0.1), record(500, 0.9),
              record(20000, 0.6, review_gate="unsure"), record(100, 0.2)]
    result = simulate(logged, "claims_risk", [BIG, BAND], NAMES)
    assert (result.decisions, dict(result.would_queue), dict(result.queued_live)) == (
        5, {"big": 2, "unsure": 1}, {"unsure": 2})
    assert (result.share(), result.live_share()) == (0.6, 0.4)
    assert result.to_json()["by_version"] == {"2": {"decisions": 5, "would_queue": 3}}


def test_only_decisions_in_the_window_count() -> None:
    logged = [record(1, 0.5, at=5), record(1, 0.5, at=10), record(1, 0.5, at=20),
              record(1, 0.5, outcome="503"), record(1, 0.5, kind="review"),
              record(1, 0.5, model="other"),
              record(1, 0.5, shadow=True, shadow_agreement=ShadowAgreement(
                  output="risk_score", threshold=0.5, rows=1, agreed=0))]
    result = simulate(logged, "claims_risk", [BAND, Gate("shadow", shadow_disagree=True)],
                      NAMES, since_ns=10, until_ns=21)
    assert (result.decisions, result.shadow_copies, result.shadow_would_queue) == (2, 1, 1)
    assert result.would_queue == {"unsure": 2}


def test_a_rule_over_a_redacted_feature_is_counted_unreadable() -> None:
    hidden = record(20000, 0.1)
    hidden.inputs[0].CopyFrom(tensor("features", [[20000, 40.0]], redaction="hash"))
    result = simulate([hidden], "claims_risk", [BIG], NAMES)
    assert (result.unreadable, sum(result.would_queue.values())) == (1, 0)
