"""Comparing a shadow with its primary: differences, decisions at a threshold, and the
primary's decisions as the shadow copy carries them to its sidecar."""

from __future__ import annotations

import numpy as np
import pytest

from aios.compare import (
    MAX_EXPECTED_ROWS,
    Expected,
    agreement,
    compare,
    encode_expected,
    parse_expected,
)

PRIMARY = {"risk_score": np.array([[0.10], [0.60], [0.49]], dtype=np.float32)}
SHADOW = {"risk_score": np.array([[0.20], [0.40], [0.51]], dtype=np.float32)}


def test_compare_reports_differences_and_agreement() -> None:
    result = compare(PRIMARY, SHADOW, "risk_score", 0.5)
    assert result.max_abs == pytest.approx(0.2)
    assert result.max_rel == pytest.approx(0.1 / 0.1)
    assert (result.rows, result.agreed) == (3, 1)
    assert compare(PRIMARY, SHADOW, "", None).rows == 0


def test_the_primarys_decisions_travel_and_come_back() -> None:
    text = encode_expected("risk_score", 0.5, PRIMARY["risk_score"])
    assert text == "risk_score>=0.5:010"
    expected = parse_expected(text)
    assert expected == Expected("risk_score", 0.5, (False, True, False))
    assert agreement(expected, SHADOW) == 1
    assert agreement(expected, PRIMARY) == 3


@pytest.mark.parametrize("text", [
    "", "risk_score>=0.5:", "risk_score>=0.5:012", "risk score>=0.5:1", "risk_score>=x:1",
    "risk_score>=nan:1", "risk_score>=inf:1", ">=0.5:1", "risk_score:1", "risk_score>=0.5",
    "risk_score>=0.5:" + "1" * (MAX_EXPECTED_ROWS + 1),
])
def test_a_malformed_header_is_ignored(text: str) -> None:
    assert parse_expected(text) is None


@pytest.mark.parametrize(("outputs", "why"), [
    ({}, "the shadow did not answer the output"),
    ({"risk_score": np.array([[0.2], [0.4]])}, "fewer rows"),
    ({"risk_score": np.float32(0.2)}, "a scalar"),
])
def test_no_agreement_without_the_same_rows(outputs: dict[str, object], why: str) -> None:
    expected = Expected("risk_score", 0.5, (False, True, False))
    assert agreement(expected, outputs) is None, why  # type: ignore[arg-type]


def test_what_a_header_cannot_carry_is_not_sent() -> None:
    assert encode_expected("risk score", 0.5, PRIMARY["risk_score"]) is None
    assert encode_expected("risk_score", 0.5, np.zeros((MAX_EXPECTED_ROWS + 1, 1))) is None
