"""Four-eyes routing changes (pure): a change to a model under the four-eyes policy
(`routing.four_eyes`) is a proposal until a second subject approves it; then it is
applied, and its history entry names both subjects and both reasons. A proposal is
pending, then approved (and applied, or failed: it no longer fits the table), or
rejected. The stores (`gateway.routestore`) keep proposals with a compare-and-set on
their state, so two replicas cannot both resolve one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from aios.errors import Conflict, Forbidden

State = Literal["pending", "approved", "applied", "rejected", "failed"]
STATES: tuple[State, ...] = ("pending", "approved", "applied", "rejected", "failed")
APPROVE_SCOPE = "routes:approve"


@dataclass(frozen=True)
class Proposal:
    """A routing change waiting for, or given, a second subject's answer."""

    id: str
    model: str
    action: str  # replace | set_weights | set_shadow | clear_shadow
    body: dict[str, Any]  # the change as it was asked (the admin API's body)
    base_revision: int
    proposer: str
    reason: str
    at: float
    state: State = "pending"
    resolver: str = ""
    resolution: str = ""  # the approver's or rejecter's reason
    resolved_at: float = 0.0
    revision: int = 0  # the table's revision once applied
    error: str = ""  # why an approved change could not be applied

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def approved(proposal: Proposal, who: str, reason: str, now: float) -> Proposal:
    """``proposal`` approved by ``who``; Forbidden naming the rule if ``who`` proposed it."""
    _still_pending(proposal)
    if who == proposal.proposer:
        raise Forbidden(f"four-eyes: '{who}' proposed this change to '{proposal.model}' and "
                        f"cannot approve it; a second subject with {APPROVE_SCOPE} must")
    return dataclasses.replace(proposal, state="approved", resolver=who, resolution=reason,
                               resolved_at=now)


def rejected(proposal: Proposal, who: str, reason: str, now: float) -> Proposal:
    """``proposal`` rejected (its proposer may withdraw it this way too)."""
    _still_pending(proposal)
    return dataclasses.replace(proposal, state="rejected", resolver=who, resolution=reason,
                               resolved_at=now)


def applied(proposal: Proposal, revision: int) -> Proposal:
    return dataclasses.replace(proposal, state="applied", revision=revision)


def failed(proposal: Proposal, error: str) -> Proposal:
    return dataclasses.replace(proposal, state="failed", error=error)


def _still_pending(proposal: Proposal) -> None:
    if proposal.state != "pending":
        raise Conflict(f"proposal {proposal.id} is {proposal.state}"
                       + (f" by '{proposal.resolver}'" if proposal.resolver else "")
                       + ": only a pending one can be approved or rejected")


def governed(model: str, four_eyes: frozenset[str]) -> bool:
    """Whether ``model``'s changes need a second subject ("*": every model's)."""
    return model in four_eyes or "*" in four_eyes
