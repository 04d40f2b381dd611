"""Priority and timeout within a tenant's policy: clamped, never refused, and said."""

from __future__ import annotations

import pytest

from gateway.scheduling import CLAMPED_HEADER, clamp


@pytest.mark.parametrize(("asked", "top", "timeout_s", "values", "header"), [
    ({}, 1, 30, {}, None),
    ({"priority": 3, "timeout": 1_000_000}, 2, 30, {}, None),       # within the policy
    ({"priority": 2}, 2, 30, {}, None),
    ({"priority": 0}, 0, 30, {}, None),                             # the default asks nothing
    ({"priority": 1}, 2, 30, {"priority": 2},
     "priority 1 -> 2 (the most urgent this tenant may ask for)"),
    ({"priority": 5}, 0, 30, {"priority": 0},
     "priority 5 -> 0 (this tenant may not set a priority)"),
    ({"timeout": 60_000_000}, 1, 30, {"timeout": 30_000_000},
     "timeout 60000000 us -> 30000000 us (the route's timeout)"),
    ({"priority": 1, "timeout": 10**12}, 3, 0.5, {"priority": 3, "timeout": 500_000},
     "priority 1 -> 3 (the most urgent this tenant may ask for); "
     "timeout 1000000000000 us -> 500000 us (the route's timeout)"),
])
def test_clamp(asked: dict[str, int], top: int, timeout_s: float, values: dict[str, int],
               header: str | None) -> None:
    clamped = clamp(asked, top, timeout_s)
    assert clamped.values == values
    assert clamped.header() == ({CLAMPED_HEADER: header} if header else {})
