"""Four-eyes proposals, pure: who may approve, and which states can be answered."""

from __future__ import annotations

import pytest

from aios.errors import Conflict, Forbidden
from gateway.proposals import Proposal, applied, approved, failed, governed, rejected

PENDING = Proposal("p1", "claims_risk", "set_weights", {"weights": {"a": 1}}, 3, "alice",
                   "ramp", 1.0)


def test_a_second_subject_approves_and_the_proposer_cannot() -> None:
    with pytest.raises(Forbidden, match=r"^four-eyes: 'alice' proposed this change to "
                                        r"'claims_risk' and cannot approve it; a second "
                                        r"subject with routes:approve must$"):
        approved(PENDING, "alice", "mine", 2.0)
    done = approved(PENDING, "carol", "replay agrees", 2.0)
    assert (done.state, done.resolver, done.resolution, done.resolved_at) == (
        "approved", "carol", "replay agrees", 2.0)
    assert applied(done, 4).state == "applied" and applied(done, 4).revision == 4
    assert failed(done, "stale").error == "stale"


@pytest.mark.parametrize("answered", [
    approved(PENDING, "carol", "", 2.0), rejected(PENDING, "dave", "no", 2.0),
    applied(approved(PENDING, "carol", "", 2.0), 4)])
def test_only_a_pending_proposal_is_answered(answered: Proposal) -> None:
    for answer in (approved, rejected):
        with pytest.raises(Conflict, match=f"^proposal p1 is {answered.state} by "
                                           f"'{answered.resolver}': only a pending one"):
            answer(answered, "erin", "", 3.0)


def test_the_proposer_may_withdraw_by_rejecting() -> None:
    assert rejected(PENDING, "alice", "withdrawn", 2.0).state == "rejected"


@pytest.mark.parametrize(("model", "policy", "needs"), [
    ("claims_risk", {"claims_risk"}, True), ("slow", {"claims_risk"}, False),
    ("slow", {"*"}, True), ("claims_risk", set(), False)])
def test_which_models_are_governed(model: str, policy: set[str], needs: bool) -> None:
    assert governed(model, frozenset(policy)) is needs
