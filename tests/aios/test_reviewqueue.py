"""The review item's life: claim, lease, decide, escalate; refusals with exact reasons."""

from __future__ import annotations

import pytest

from aios.errors import Conflict, InvalidInput
from aios.reviewqueue import ESCALATION_PRIORITY, Item, claim, decide, mark, new_item, release

S = 1_000_000_000


def item() -> Item:
    return new_item(id="R1", decision_id="D1", model="claims_risk", version="1",
                    gate="unsure", priority=0, sla_s=60, now_ns=0, source="decisions",
                    tenant="acme", business_key="CLM-1", inputs={},
                    outputs={"risk_score": [0.5]})


def test_a_new_item_is_pending_and_due_after_its_sla() -> None:
    it = item()
    assert (it.state_at(0), it.due_ns, [t.action for t in it.history]) == (
        "pending", 60 * S, ["queued"])
    assert it.to_json(61 * S)["overdue"] is True


def test_a_claim_holds_until_its_lease_ends_then_the_item_is_pending_again() -> None:
    claimed = claim(item(), "ann", 0, lease_s=10)
    assert claimed.state_at(9 * S) == "claimed"
    with pytest.raises(Conflict, match="claimed by ann until their lease ends: cannot claim"):
        claim(claimed, "bob", 9 * S, 10)
    assert claimed.state_at(10 * S) == "pending"
    taken = claim(claimed, "bob", 10 * S, 10)
    assert (taken.claimed_by, taken.lease_until_ns) == ("bob", 20 * S)
    assert claim(taken, "bob", 15 * S, 10).lease_until_ns == 25 * S  # renewed


def test_approve_keeps_the_models_answer_override_the_reviewers() -> None:
    approved = decide(item(), "ann", S, "approve", "")
    assert (approved.state, approved.final(), approved.decided_by) == (
        "decided", {"risk_score": [0.5]}, "ann")
    overridden = decide(claim(item(), "bob", 0, 60), "bob", S, "override", "fraud ring",
                        {"risk_score": [0.95]})
    assert (overridden.final(), overridden.reason, overridden.claimed_by) == (
        {"risk_score": [0.95]}, "fraud ring", "")
    assert [t.action for t in overridden.history] == ["queued", "claim", "override"]


def test_a_decided_item_cannot_be_decided_or_claimed_again() -> None:
    done = decide(item(), "ann", S, "approve", "")
    for step in (lambda: decide(done, "bob", 2 * S, "approve", ""),
                 lambda: claim(done, "bob", 2 * S, 10)):
        with pytest.raises(Conflict, match=r"review R1 was already decided \(approve by ann\)"):
            step()


def test_someone_elses_live_claim_blocks_a_decision() -> None:
    with pytest.raises(Conflict, match="claimed by ann"):
        decide(claim(item(), "ann", 0, 60), "bob", S, "approve", "")


def test_escalate_returns_the_item_to_the_queue_raised() -> None:
    up = decide(claim(item(), "ann", 0, 60), "ann", S, "escalate", "needs a senior")
    assert (up.state, up.priority, up.claimed_by) == ("pending", ESCALATION_PRIORITY, "")


def test_release_gives_a_claim_back() -> None:
    assert release(claim(item(), "ann", 0, 60), "ann", S).state_at(S) == "pending"
    with pytest.raises(Conflict, match="is not claimed"):
        release(item(), "ann", S)


@pytest.mark.parametrize(("action", "reason", "value", "message"), [
    ("delete", "", None, "action: must be one of approve, override, escalate, got 'delete'"),
    ("override", "x", None, "value: an override needs the reviewer's outputs"),
    ("override", "", {"risk_score": [0.9]}, "reason: say why (override needs a reason)"),
    ("escalate", "", None, "reason: say why (escalate needs a reason)"),
    ("approve", "", {"risk_score": [0.9]}, "value: only an override carries one"),
    ("override", "x", {"score": [0.9]}, "value.score: the model gave no output 'score'"),
    ("override", "x", {"risk_score": [0.9, 0.1]}, "value.risk_score: 1 value(s)"),
    ("override", "x", {"risk_score": ["high"]}, "value.risk_score: a list of numbers"),
    ("approve", "x" * 2001, None, "reason: at most 2000 characters"),
])
def test_bad_decisions_are_refused_naming_the_field(action: str, reason: str,
                                                   value: dict[str, list[object]] | None,
                                                   message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decide(item(), "ann", S, action, reason, value)  # type: ignore[arg-type]
    assert caught.value.message.startswith(message)


def test_items_survive_a_round_trip_through_the_store_form() -> None:
    done = mark(decide(item(), "ann", S, "override", "r", {"risk_score": [1.0]}), "chained", 2)
    assert Item.from_store(done.to_store()) == done
