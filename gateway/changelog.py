"""The gateway's change log: every routing change it applies, as a record of kind
``route_change`` in a signed log (`aios.signedlog`), the same format and tools as the
sidecar's decision log (`aios audit verify --dir var/route-changes`).

A decision record names the route revision it went by; the change that made that
revision is in this chain: who, when, why, and what it touched before and after. Each
change is durable and signed before the admin call answers.
"""

from __future__ import annotations

import json

from gateway.routestore import Change
from proto.decision_record_pb2 import DecisionRecord, RouteChange

KIND = "route_change"


def change_record(change: Change) -> DecisionRecord:
    """A routing change as a record of the chain."""
    return DecisionRecord(
        kind=KIND, time_unix_nanos=int(change.at * 1e9), subject=change.who,
        model=change.model, route_revision=change.revision,
        route_change=RouteChange(
            action=change.action, reason=change.reason,
            before_json="" if change.before is None else json.dumps(change.before,
                                                                     sort_keys=True),
            after_json=json.dumps(change.after, sort_keys=True),
            approved_by=change.approved_by, approval_reason=change.approval_reason,
            proposal_id=change.proposal_id,
            evidence_json="" if change.evidence is None else json.dumps(change.evidence,
                                                                        sort_keys=True)))
