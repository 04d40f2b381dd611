"""The rollout's pure decisions: plans, gates on a window, what a step does next, who
may approve, which targets a plan means."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from aios.errors import Conflict, Forbidden
from aios.metrics import LATENCY_BUCKETS
from gateway.rollout import (
    Counters,
    Event,
    Evidence,
    Plan,
    Rollout,
    approval,
    desired,
    evaluate,
    p99_ms,
    pick_targets,
    rollback_percent,
    total,
)


def plan(**overrides: Any) -> Plan:
    return Plan.model_validate({"candidate": "two", "output": "risk_score", "threshold": 0.5,
                                "dwell_s": 10, "min_requests": 100, **overrides})


def latencies(*seconds: float) -> tuple[int, ...]:
    """Cumulative bucket counts for one call per figure."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for s in seconds:
        counts[next((i for i, b in enumerate(LATENCY_BUCKETS) if s <= b),
                    len(LATENCY_BUCKETS))] += 1
    running, out = 0, []
    for n in counts:
        running += n
        out.append(running)
    return tuple(out)


FAST = latencies(*[0.004] * 200)
OK = Evidence(parity_ok=True)


def served(requests: int = 200, errors: int = 0, agree: int = 0, disagree: int = 0,
           buckets: tuple[int, ...] = FAST) -> Counters:
    return Counters(requests, errors, buckets, agree, disagree)


@pytest.mark.parametrize(("fields", "message"), [
    ({"steps": [0, 50, 40, 100]}, "steps.2: steps must rise, got 40 after 50"),
    ({"steps": [0, 50]}, "steps: the last step must be 100, got 50"),
    ({"steps": [0, 150]}, "steps.1: a percentage in 0..100, got 150"),
    ({"min_requests": 0}, "min_requests"),
    ({"gates": {"min_agreement": 2}}, "gates.min_agreement"),
    ({"rollback_to": "half"}, "rollback_to"),
])
def test_bad_plans_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        plan(**fields)
    assert message in str(caught.value)


def test_a_canary_step_advances_only_after_its_dwell_and_requests_with_every_gate_passed(
        ) -> None:
    p = plan(steps=[0, 50, 100])
    stable = served(2000, 2)
    healthy = served(200, 0, agree=195, disagree=5)
    assert evaluate(p, 1, 5, healthy, stable, OK).action == "wait"  # dwell 5/10 s
    assert evaluate(p, 1, 11, served(50, 0, 50, 0), stable, OK).action == "wait"
    verdict = evaluate(p, 1, 11, healthy, stable, OK)
    assert verdict.action == "advance", verdict.why
    assert {g.gate: g.passed for g in verdict.gates} == {
        "error_rate": True, "error_rate_increase": True, "p99_ms": True, "agreement": True,
        "drift": True, "parity": True}


@pytest.mark.parametrize(("candidate", "evidence", "gate", "said"), [
    (served(200, 10, 200, 0), OK, "error_rate", "error_rate 0.05 (bound 0.02), n=200"),
    (served(200, 0, 60, 40), OK, "agreement", "agreement 0.6 (bound 0.9), n=100"),
    (served(200, 0, 200, 0, latencies(*[1.5] * 200)), OK, "p99_ms",
     "p99_ms 1500 (bound 1000)"),
    (served(200, 0, 200, 0), Evidence(("claim_amount",), True), "drift",
     "drift 1 (bound 0), n=200: flagged: claim_amount"),
    (served(200, 0, 200, 0), Evidence(parity_ok=False, parity_max_abs_diff=0.3), "parity",
     "parity 0.3, n=0: golden parity failing"),
])
def test_a_failing_gate_rolls_back_at_once_naming_its_figures(
        candidate: Counters, evidence: Evidence, gate: str, said: str) -> None:
    verdict = evaluate(plan(), 2, 1, candidate, served(2000), evidence)  # before the dwell
    assert verdict.action == "rollback"
    assert verdict.failed()[0].gate == gate  # 10 errors in 200 fail the gap to stable too
    assert said in verdict.why


def test_agreement_waits_while_its_interval_straddles_the_bound() -> None:
    # 46/50 = 0.92 over a 0.9 bound, but the 95% interval is [0.81, 0.97]: not yet.
    verdict = evaluate(plan(steps=[0, 100], min_requests=50), 0, 60, served(0, 0, 46, 4),
                       served(2000), OK)
    agreement = next(g for g in verdict.gates if g.gate == "agreement")
    assert (verdict.action, agreement.passed, agreement.n) == ("wait", None, 50)
    assert "95% CI [0.8" in agreement.detail
    # Shadow only: error and latency gates do not apply; agreement's sample counts.
    assert {g.gate for g in verdict.gates} == {"agreement", "drift", "parity"}


def test_the_error_gap_to_stable_is_a_gate_of_its_own() -> None:
    verdict = evaluate(plan(gates={"max_error_rate": 0.1, "max_error_rate_increase": 0.01}),
                       1, 60, served(1000, 30, 1000, 0), served(1000, 5), OK)
    assert [g.gate for g in verdict.failed()] == ["error_rate_increase"]
    assert "candidate 30/1000, stable 5/1000" in verdict.why


def test_an_undecided_step_rolls_back_after_max_step_s() -> None:
    verdict = evaluate(plan(max_step_s=100), 1, 101, served(20, 0, 20, 0), served(100),
                       Evidence(parity_ok=None))
    assert verdict.action == "rollback" and verdict.why.startswith("undecided after 101 s")
    assert "no golden parity figure" in verdict.why


def test_a_silent_sidecar_decides_nothing() -> None:
    verdict = evaluate(plan(), 1, 60, served(200, 0, 200, 0), served(2000),
                       Evidence(sidecar_up=False))
    assert verdict.action == "wait" and "drift undecided" in verdict.why


def test_p99_is_the_bucket_bound_holding_the_99th_call() -> None:
    assert p99_ms(Counters(buckets=latencies(*[0.001] * 99, 0.4))) == 1.0
    assert p99_ms(Counters(buckets=latencies(*[0.001] * 98, 0.4, 0.4))) == 500.0
    assert p99_ms(Counters(buckets=latencies(*[9.0] * 10))) is None  # past the last bound
    assert p99_ms(Counters()) is None


def test_windows_sum_over_replicas_and_never_go_negative() -> None:
    a, b = served(10, 1, 3, 1), served(5, 0, 2, 0)
    summed = total([{"two": a}, {"two": b, "one": a}])
    assert summed["two"] == a + b and summed["one"] == a
    assert (b - a).requests == 0 and (b - a).agree == 0  # a replica restarted from zero
    assert Counters.from_json((a + b).to_json()) == a + b


def rollout(**fields: Any) -> Rollout:
    doc: dict[str, Any] = {
        "id": "r1", "model": "m", "plan": plan(steps=[0, 25, 100]).model_dump(),
        "stable": "one", "candidate": "two", "candidate_backend": "local",
        "candidate_version": "2", "state": "running", "step": 1, "step_started_at": 0.0,
        "baseline": {}, "started_by": "alice", "at": 0.0, "target_percent": 25,
        "shadow_before": None, "events": (Event(0.0, "started", "alice", 0, 0),), **fields}
    return Rollout(**doc)


def test_the_table_a_rollout_wants() -> None:
    weights, shadow = desired(rollout())
    assert weights == {"one": 75, "two": 25}
    assert shadow == {"backend": "local", "version": "2", "fraction": 1.0,
                      "output": "risk_score", "threshold": 0.5}
    before = {"backend": "local", "version": "1", "fraction": 0.1}
    assert desired(rollout(state="aborted", target_percent=0, shadow_before=before)) == (
        {"one": 100, "two": 0}, before)
    assert desired(rollout(target_percent=100))[1] is None
    assert Rollout.from_json(rollout().to_json()) == rollout()


def test_rollback_goes_to_zero_or_the_last_step_passed() -> None:
    r = rollout(step=2, target_percent=100)
    assert rollback_percent(r, plan(steps=[0, 25, 100])) == 0
    assert rollback_percent(r, plan(steps=[0, 25, 100], rollback_to="previous")) == 25
    assert rollback_percent(rollout(step=0), plan(rollback_to="previous")) == 0


def test_four_eyes_refuses_the_asker_and_needs_something_waiting() -> None:
    waiting = rollout(state="awaiting_approval")
    assert approval(waiting, "carol") == "start"
    with pytest.raises(Forbidden, match="'alice' asked for this rollout start"):
        approval(waiting, "alice")
    assert approval(rollout(promote_by="bob"), "alice") == "promote"
    with pytest.raises(Forbidden, match="rollout promote"):
        approval(rollout(promote_by="bob"), "bob")
    with pytest.raises(Conflict, match="nothing waiting for approval"):
        approval(rollout(), "carol")


@pytest.mark.parametrize(("targets", "fields", "expected"), [
    ([("one", "1", 100), ("two", "2", 0)], {"candidate": "2"}, ("one", "two")),
    ([("one", "1", 100), ("two", "2", 0)], {"candidate": "two", "stable": "one"},
     ("one", "two")),
    ([("one", "1", 100)], {"candidate": "3"},
     "candidate: the table has no target named or serving version '3'"),
    ([("a", "1", 50), ("b", "1", 50), ("two", "2", 0)], {"candidate": "2"},
     "stable: name the stable target (the table has 2 others taking traffic)"),
    ([("a", "1", 50), ("b", "1", 50), ("two", "2", 0)], {"candidate": "2", "stable": "a"},
     "targets: a rollout moves traffic between 'a' and 'two' only; b=50 take traffic too"),
    ([("one", "1", 100), ("two", "2", 0)], {"candidate": "two", "stable": "two"},
     "stable: the stable target cannot be the candidate"),
])
def test_which_targets_a_plan_means(targets: list[tuple[str, str, int]],
                                    fields: dict[str, Any], expected: Any) -> None:
    p = plan(**fields)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            pick_targets(p, targets)
    else:
        pick = pick_targets(p, targets)
        assert (pick.stable, pick.candidate) == expected
