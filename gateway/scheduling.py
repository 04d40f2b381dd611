"""Triton's scheduling parameters within a policy. Pure.

A caller may ask for a priority level and a queue timeout (KServe `parameters`:
`priority`, `timeout` in microseconds). A tenant may ask for no level more urgent than
its `top_priority` (0: none at all, the model's default), and no request waits longer
than its route may: beyond the policy the value is clamped, never refused, and the answer
says what was changed (`x-aios-clamped`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLAMPED_HEADER = "x-aios-clamped"
# The same, said on each response of a streamed request (a stream has no headers per call).
CLAMPED_PARAMETER = "aios_clamped"


@dataclass(frozen=True)
class Clamped:
    """What goes to Triton instead of what was asked (only the changed parameters)."""

    values: dict[str, int]
    notes: tuple[str, ...]

    def header(self) -> dict[str, str]:
        return {CLAMPED_HEADER: "; ".join(self.notes)} if self.notes else {}


def clamp(asked: Mapping[str, Any], top_priority: int, timeout_s: float) -> Clamped:
    """``asked``'s priority and timeout as the policy allows them."""
    values: dict[str, int] = {}
    notes: list[str] = []
    priority = asked.get("priority")
    if isinstance(priority, int) and priority > 0:
        if top_priority == 0:
            values["priority"] = 0
            notes.append(f"priority {priority} -> 0 (this tenant may not set a priority)")
        elif priority < top_priority:
            values["priority"] = top_priority
            notes.append(f"priority {priority} -> {top_priority} (the most urgent this "
                         "tenant may ask for)")
    timeout = asked.get("timeout")
    cap = int(timeout_s * 1_000_000)
    if isinstance(timeout, int) and timeout > cap:
        values["timeout"] = cap
        notes.append(f"timeout {timeout} us -> {cap} us (the route's timeout)")
    return Clamped(values, tuple(notes))
