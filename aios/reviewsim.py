"""What share of recorded decisions a set of review gates would have sent to people
(`aios review simulate`), read off the decision log before a gate is turned on. Pure:
records in, counts out.

A record is judged as the sidecar judged it live: its kept inputs named by the
version's profile, its outputs, its parity flags, and for a shadow copy its agreement
with the primary. Only decisions count (outcome ok; no routing changes, reads or
reviewers' records); shadow copies are counted apart, as the live gates count them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aios.readable import Names, array
from aios.reviewrules import Facts, Gate, first_fired, named_values, reads
from proto.decision_record_pb2 import DecisionRecord


@dataclass
class Simulation:
    """Counts over the records read."""

    decisions: int = 0
    would_queue: Counter[str] = field(default_factory=Counter)   # by gate
    queued_live: Counter[str] = field(default_factory=Counter)   # what the records say
    by_version: Counter[str] = field(default_factory=Counter)    # decisions per version
    queued_by_version: Counter[str] = field(default_factory=Counter)
    shadow_copies: int = 0
    shadow_would_queue: int = 0  # shadow copies a shadow-disagreement gate fires on
    unreadable: int = 0  # decisions whose gated inputs were hashed or dropped

    def share(self) -> float:
        return sum(self.would_queue.values()) / self.decisions if self.decisions else 0.0

    def live_share(self) -> float:
        return sum(self.queued_live.values()) / self.decisions if self.decisions else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "would_queue": sum(self.would_queue.values()),
                "share": self.share(), "by_gate": dict(self.would_queue.most_common()),
                "queued_live": sum(self.queued_live.values()),
                "live_share": self.live_share(),
                "live_by_gate": dict(self.queued_live.most_common()),
                "by_version": {v: {"decisions": n, "would_queue": self.queued_by_version[v]}
                               for v, n in sorted(self.by_version.items())},
                "shadow_copies": self.shadow_copies,
                "shadow_would_queue": self.shadow_would_queue, "unreadable": self.unreadable}


def record_facts(record: DecisionRecord, names: Names | None,
                 needed: frozenset[str] | None = None) -> Facts:
    """What the gates look at (``needed``: these values only), decoded from ``record``."""
    inputs = {t.name: a for t in record.inputs if (a := array(t)) is not None}
    outputs = {t.name: a for t in record.outputs if (a := array(t)) is not None}
    values, rows = named_values(inputs, outputs, names.input if names else None,
                                [n for n, _ in names.features] if names else [], needed)
    agreement = record.shadow_agreement if record.HasField("shadow_agreement") else None
    return Facts(values, rows, tuple(record.parity_flags), record.shadow,
                 agreement is not None and agreement.agreed < agreement.rows)


def simulate(records: Iterable[DecisionRecord], model: str, gates: Sequence[Gate],
             names: Mapping[tuple[str, str], Names], since_ns: int | None = None,
             until_ns: int | None = None) -> Simulation:
    """Run ``gates`` over ``model``'s recorded decisions in [since, until)."""
    out = Simulation()
    wanted = {name for gate in gates if gate.rule for name in gate.rule.names}
    needed = reads(gates)
    for record in records:
        if record.kind or record.model != model or record.outcome != "ok":
            continue
        if since_ns is not None and record.time_unix_nanos < since_ns:
            continue
        if until_ns is not None and record.time_unix_nanos >= until_ns:
            continue
        facts = record_facts(record, names.get((record.model, record.version)), needed)
        if record.shadow:
            out.shadow_copies += 1
            out.shadow_would_queue += first_fired(gates, facts) is not None
            continue
        out.decisions += 1
        out.by_version[record.version] += 1
        if record.review_gate:
            out.queued_live[record.review_gate] += 1
        if not wanted <= facts.values.keys():
            out.unreadable += 1
        gate = first_fired(gates, facts)
        if gate is not None:
            out.would_queue[gate.name] += 1
            out.queued_by_version[record.version] += 1
    return out
