"""Review gates: bands, rules (parsed, never eval'd), flags, shadow disagreement."""

from __future__ import annotations

import numpy as np
import pytest

from aios.config import ReviewGateConfig, ReviewModelConfig
from aios.reviewrules import Facts, Gate, Rule, RuleError, first_fired, named_values


def facts(**values: list[float]) -> Facts:
    """A call's facts as the sidecar makes them: columns, or one row's floats."""
    rows = len(next(iter(values.values())))
    if rows == 1:
        return Facts({k: float(v[0]) for k, v in values.items()}, 1)
    return Facts({k: np.asarray(v, dtype=np.float64) for k, v in values.items()}, rows)


@pytest.mark.parametrize(("text", "amounts", "expected"), [
    ("claim_amount > 10000", [9000, 10000, 10001], [False, False, True]),
    ("claim_amount >= 10000", [9000, 10000, 10001], [False, True, True]),
    ("claim_amount / 2 > 5000 and not risk < 0.5", [20000, 20000, 1], [True, False, False]),
    ("1000 < claim_amount <= 9000", [1000, 1001, 9000], [False, True, True]),
    ("claim_amount == 9000 or -risk < -0.7", [1, 9000, 1], [True, True, False]),
    ("claim_amount * 1 - 1 != 999", [1000, 1001, 0], [False, True, True]),
])
def test_rules_evaluate_per_row(text: str, amounts: list[float], expected: list[bool]) -> None:
    rule = Rule.parse(text)
    values = facts(claim_amount=amounts, risk=[0.9, 0.2, 0.6]).values
    assert rule.evaluate(values, 3).tolist() == expected


@pytest.mark.parametrize(("text", "message"), [
    ("__import__('os').system('id')", "call is not allowed"),
    ("claim_amount.real > 1", "attribute is not allowed"),
    ("claim_amount[0] > 1", "subscript is not allowed"),
    ("'a' < claim_amount", "only numbers may be written"),
    ("True or claim_amount > 1", "only numbers may be written"),
    ("(lambda: 1)() > 0", "call is not allowed"),
    ("claim_amount", "is not a condition"),
    ("claim_amount + 1", "is not a condition"),
    ("claim_amount >", "is not an expression"),
    ("x ** 2 > 1", "pow is not allowed"),
    ("[1] == [1]", "list is not allowed"),
    ("a>1" + " and a>1" * 30, "more than 100 parts"),
    ("a" * 501, "longer than 500 characters"),
])
def test_rules_refuse_what_is_not_arithmetic_and_comparison(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        Rule.parse(text)


def test_a_rule_over_a_name_the_call_lacks_fires_on_no_row() -> None:
    assert Rule.parse("age > 1").evaluate(facts(risk=[1.0, 2.0]).values, 2).tolist() == [
        False, False]


def test_division_by_zero_is_no_crash() -> None:
    assert Rule.parse("a / b > 1").evaluate(facts(a=[1.0, 0.0], b=[0.0, 0.0]).values,
                                            2).tolist() == [True, False]


def test_band_fires_inside_inclusive_bounds_on_any_row() -> None:
    gate = Gate("unsure", band=("risk_score", 0.35, 0.75))
    assert gate.fires(facts(risk_score=[0.35]))
    assert gate.fires(facts(risk_score=[0.75]))
    assert gate.fires(facts(risk_score=[0.1, 0.5]))
    assert not gate.fires(facts(risk_score=[0.3499, 0.7501]))
    assert not gate.fires(facts(other=[0.5]))


def test_flags_match_by_prefix() -> None:
    gate = Gate("flagged", flags=("schema", "drift:claim_amount"))
    base = facts(x=[1.0])
    assert gate.fires(Facts(base.values, 1, ["drift:claim_amount (ks p=1e-9)"]))
    assert gate.fires(Facts(base.values, 1, ["schema: age 130 above 99"]))
    assert not gate.fires(Facts(base.values, 1, ["drift:age (ks p=1e-9)"]))
    assert not gate.fires(base)


def test_shadow_copies_fire_only_the_disagreement_gate() -> None:
    band = Gate("unsure", band=("risk_score", 0.0, 1.0))
    disagree = Gate("shadow", shadow_disagree=True)
    values = facts(risk_score=[0.5]).values
    copy = Facts(values, 1, shadow=True, disagreed=True)
    assert first_fired([band, disagree], copy) is disagree
    assert first_fired([band, disagree], Facts(values, 1, shadow=True)) is None
    assert first_fired([band, disagree], Facts(values, 1)) is band
    assert not disagree.fires(Facts(values, 1, disagreed=True))  # not a shadow copy


def test_the_first_gate_in_order_is_named() -> None:
    gates = [Gate("big", rule=Rule.parse("amount > 10")), Gate("unsure", band=("s", 0, 1))]
    assert first_fired(gates, facts(amount=[11.0], s=[0.5])) is gates[0]
    assert first_fired(gates, facts(amount=[1.0], s=[0.5])) is gates[1]
    assert first_fired(gates, facts(amount=[1.0], s=[2.0])) is None


def test_named_values_take_feature_columns_and_per_row_outputs() -> None:
    x = np.asarray([[1, 2], [3, 4]], dtype=np.float32)
    values, rows = named_values({"features": x},
                                {"risk_score": np.asarray([[0.1], [0.9]], dtype=np.float32),
                                 "wide": np.zeros((2, 3), dtype=np.float32)},
                                "features", ["age", "amount"])
    assert rows == 2
    assert values["amount"].tolist() == [2.0, 4.0]
    assert values["risk_score"].tolist() == pytest.approx([0.1, 0.9])
    assert "wide" not in values


@pytest.mark.parametrize(("gates", "message"), [
    ([{"name": "a"}], "set exactly one of band, rule, flags, shadow_disagree"),
    ([{"name": "a", "rule": "x > 1", "flags": ["schema"]}], "(got rule, flags)"),
    ([{"name": "a", "band": {"output": "s", "low": 0.8, "high": 0.2}}],
     "low (0.8) must not be above high (0.2)"),
    ([{"name": "a", "rule": "open('x')"}], "call is not allowed"),
    ([{"name": "a", "rule": "x > 1"}, {"name": "a", "rule": "x > 2"}],
     "two gates are named 'a'"),
    ([{"name": "Bad Name", "rule": "x > 1"}], "String should match pattern"),
    ([{"name": "a", "rule": "x > 1", "sla_s": 0}], "greater than 0"),
])
def test_gate_config_names_what_is_wrong(gates: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReviewModelConfig.model_validate({"gates": gates})


def test_a_configured_gate_is_the_gate_it_says() -> None:
    gate = ReviewGateConfig.model_validate(
        {"name": "unsure", "band": {"output": "risk_score", "low": 0.35, "high": 0.75},
         "priority": 5, "sla_s": 3600}).gate()
    assert (gate.name, gate.band, gate.priority, gate.sla_s) == (
        "unsure", ("risk_score", 0.35, 0.75), 5, 3600)


@pytest.mark.parametrize("text", [
    "claim_amount > 10000", "claim_amount / 2 > 5000 and not risk < 0.5",
    "1000 < claim_amount <= 9000", "claim_amount == 9000 or -risk < -0.7",
    "claim_amount / risk > 1e6", "risk / claim_amount >= 0", "-claim_amount / 0 < 0",
    "not (risk > 0.5 or claim_amount < 1)",
])
def test_one_rows_floats_and_columns_of_rows_agree(text: str) -> None:
    """The one-row path (floats) and the columns path (numpy) are the same rule."""
    rule = Rule.parse(text)
    amounts, risks = [0.0, 1.0, 9000.0, 10001.0, 20000.0], [0.0, 0.9, 0.2, 0.6, 0.0]
    columns = rule.evaluate(facts(claim_amount=amounts, risk=risks).values, 5).tolist()
    one_by_one = [rule.holds({"claim_amount": a, "risk": r}, 1)
                  for a, r in zip(amounts, risks, strict=True)]
    assert one_by_one == columns


def test_one_rows_values_are_floats_and_only_those_needed() -> None:
    x = np.asarray([[1, 2]], dtype=np.float32)
    values, rows = named_values({"features": x}, {"risk_score": np.asarray([[0.5]])},
                                "features", ["age", "amount"], frozenset({"amount"}))
    assert (values, rows) == ({"amount": 2.0}, 1)
