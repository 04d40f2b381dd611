"""A review item and what people may do to it. Pure: the clock is an argument.

pending → claimed (by one reviewer, for a lease) → decided (approve, override with the
reviewer's value). Escalate hands a claimed or pending item back to the queue, raised in
priority, for someone more senior. A claim whose lease ran out counts as pending again,
so an abandoned item returns to the queue without anyone sweeping it. Every transition
is kept on the item with who, when and why. A store applies a transition only if the
item did not change meanwhile (`aios.reviewstore`): two reviewers never both decide one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aios.errors import Conflict, InvalidInput

State = Literal["pending", "claimed", "decided"]
Action = Literal["approve", "override", "escalate"]
ACTIONS: tuple[Action, ...] = ("approve", "override", "escalate")
ESCALATION_PRIORITY = 100
MAX_REASON_CHARS = 2000
MAX_VALUE_CHARS = 10_000


@dataclass(frozen=True)
class Transition:
    """One step of an item's life."""

    action: str  # queued | claim | release | approve | override | escalate | chained
    who: str
    at_ns: int
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "who": self.who, "at_ns": self.at_ns,
                "reason": self.reason}


@dataclass(frozen=True)
class Item:
    """One decision waiting for, or given, a person's answer."""

    id: str
    decision_id: str
    model: str
    version: str
    gate: str
    queued_ns: int
    due_ns: int
    source: str = ""  # the decision log (sidecar) that wrote the model's record
    tenant: str = ""
    business_key: str = ""
    priority: int = 0
    inputs: Mapping[str, Any] = field(default_factory=dict)   # decoded, redaction kept
    outputs: Mapping[str, Any] = field(default_factory=dict)  # the model's answer
    state: State = "pending"
    claimed_by: str = ""
    lease_until_ns: int = 0
    action: str = ""          # what was decided
    value: Mapping[str, Any] | None = None  # override: the reviewer's outputs
    decided_by: str = ""
    decided_ns: int = 0
    reason: str = ""
    chained: bool = False     # the reviewer's record is in the decision log
    announced: bool = False   # the decided event is published
    revision: int = 0         # the store's, for compare-and-set
    history: tuple[Transition, ...] = ()

    def state_at(self, now_ns: int) -> State:
        """The item's state at ``now_ns`` (a claim past its lease is pending)."""
        if self.state == "claimed" and self.lease_until_ns <= now_ns:
            return "pending"
        return self.state

    def final(self) -> Mapping[str, Any] | None:
        """The outcome the workflow acts on (None until decided)."""
        if self.state != "decided":
            return None
        return self.value if self.action == "override" and self.value is not None \
            else self.outputs

    def to_json(self, now_ns: int) -> dict[str, Any]:
        return {
            "id": self.id, "decision_id": self.decision_id, "model": self.model,
            "version": self.version, "tenant": self.tenant,
            "business_key": self.business_key, "gate": self.gate,
            "priority": self.priority, "queued_ns": self.queued_ns, "due_ns": self.due_ns,
            "overdue": self.state_at(now_ns) != "decided" and now_ns > self.due_ns,
            "state": self.state_at(now_ns), "claimed_by": self.claimed_by
            if self.state_at(now_ns) == "claimed" else "",
            "lease_until_ns": self.lease_until_ns if self.state_at(now_ns) == "claimed"
            else 0,
            "inputs": dict(self.inputs), "outputs": dict(self.outputs),
            "action": self.action, "value": None if self.value is None else dict(self.value),
            "final": None if self.final() is None else dict(self.final() or {}),
            "decided_by": self.decided_by, "decided_ns": self.decided_ns,
            "reason": self.reason, "chained": self.chained, "source": self.source,
            "history": [t.to_json() for t in self.history]}

    def to_store(self) -> dict[str, Any]:
        """Everything, for a store to keep (its own columns aside)."""
        doc = dataclasses.asdict(self)
        doc["history"] = [t.to_json() for t in self.history]
        doc["inputs"], doc["outputs"] = dict(self.inputs), dict(self.outputs)
        return doc

    @classmethod
    def from_store(cls, doc: Mapping[str, Any]) -> Item:
        history = tuple(Transition(**t) for t in doc.get("history", ()))
        return cls(**{**doc, "history": history})


def _step(item: Item, step: Transition, **changes: Any) -> Item:
    return dataclasses.replace(item, **changes, history=(*item.history, step))


def _open_to(item: Item, who: str, now_ns: int, doing: str) -> None:
    state = item.state_at(now_ns)
    if state == "decided":
        raise Conflict(f"review {item.id} was already decided ({item.action} by "
                       f"{item.decided_by}): cannot {doing} it")
    if state == "claimed" and item.claimed_by != who:
        raise Conflict(f"review {item.id} is claimed by {item.claimed_by} until their lease "
                       f"ends: cannot {doing} it")


def claim(item: Item, who: str, now_ns: int, lease_s: float) -> Item:
    """``who`` takes ``item`` for ``lease_s`` (again: the lease is renewed)."""
    _open_to(item, who, now_ns, "claim")
    return _step(item, Transition("claim", who, now_ns, ""), state="claimed", claimed_by=who,
                 lease_until_ns=now_ns + int(lease_s * 1e9))


def release(item: Item, who: str, now_ns: int) -> Item:
    """``who`` gives a claimed item back."""
    _open_to(item, who, now_ns, "release")
    if item.state_at(now_ns) != "claimed":
        raise Conflict(f"review {item.id} is not claimed: nothing to release")
    return _step(item, Transition("release", who, now_ns, ""), state="pending", claimed_by="",
                 lease_until_ns=0)


def parse_action(action: str) -> Action:
    for known in ACTIONS:
        if action == known:
            return known
    raise InvalidInput(f"action: must be one of {', '.join(ACTIONS)}, got {action!r}")


def decide(item: Item, who: str, now_ns: int, action: str, reason: str,
           value: Mapping[str, Any] | None = None) -> Item:
    """``who`` decides ``item``: approve the model's answer, override it with ``value``,
    or escalate it (back to the queue, raised in priority)."""
    chosen = parse_action(action)
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"reason: at most {MAX_REASON_CHARS} characters")
    if chosen == "override":
        if not value:
            raise InvalidInput("value: an override needs the reviewer's outputs, e.g. "
                               '{"risk_score": [0.9]}')
        check_value(value, item.outputs)
    elif value is not None:
        raise InvalidInput(f"value: only an override carries one, not {chosen}")
    if chosen != "approve" and not reason:
        raise InvalidInput(f"reason: say why ({chosen} needs a reason)")
    _open_to(item, who, now_ns, "decide")
    if chosen == "escalate":
        return _step(item, Transition("escalate", who, now_ns, reason), state="pending",
                     claimed_by="", lease_until_ns=0,
                     priority=item.priority + ESCALATION_PRIORITY)
    return _step(item, Transition(chosen, who, now_ns, reason), state="decided", action=chosen,
                 value=None if value is None else dict(value), decided_by=who,
                 decided_ns=now_ns, reason=reason, claimed_by="", lease_until_ns=0)


def check_value(value: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """An override names outputs the model gave, each a list of numbers of the same
    length as the model's."""
    for name, values in value.items():
        if name not in outputs:
            known = ", ".join(sorted(outputs)) or "none"
            raise InvalidInput(f"value.{name}: the model gave no output {name!r} "
                               f"(outputs: {known})")
        given = outputs[name]
        if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise InvalidInput(f"value.{name}: a list of numbers, got {values!r}")
        if isinstance(given, list) and len(given) != len(values):
            raise InvalidInput(f"value.{name}: {len(given)} value(s), as the model gave, "
                               f"got {len(values)}")


def mark(item: Item, what: Literal["chained", "announced"], now_ns: int) -> Item:
    """The reviewer's record is in the chain, or the decided event is out."""
    return _step(item, Transition(what, "aios", now_ns), **{what: True})


def new_item(*, id: str, decision_id: str, model: str, version: str, gate: str,
             priority: int, sla_s: float, now_ns: int, source: str, tenant: str,
             business_key: str, inputs: Mapping[str, Any],
             outputs: Mapping[str, Any]) -> Item:
    """A decision a gate just sent to review."""
    return Item(id=id, decision_id=decision_id, model=model, version=version, gate=gate,
                queued_ns=now_ns, due_ns=now_ns + int(sla_s * 1e9), source=source,
                tenant=tenant, business_key=business_key, priority=priority,
                inputs=inputs, outputs=outputs,
                history=(Transition("queued", "aios", now_ns, f"gate {gate}"),))
