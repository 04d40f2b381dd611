"""The load's client-side pacer keeps every tenant inside the gateway's own GCRA rule."""

from __future__ import annotations

import pytest

from aios.config import TenantQuota
from gateway.quota import Limit, gcra
from loadtests.pacing import Pacer


@pytest.mark.parametrize(("quota", "rows"), [
    (TenantQuota(rate_per_s=300, burst=150, cost="batch"), [64, 1, 32, 16, 64, 8, 2, 64]),
    (TenantQuota(rate_per_s=20, burst=10), [1, 64, 64, 1]),
    (TenantQuota(rate_per_s=5, burst=4, cost="batch"), [3, 1, 2]),
])
def test_a_paced_caller_is_never_refused(quota: TenantQuota, rows: list[int]) -> None:
    pacer = Pacer.for_quota(quota)
    limit = Limit(quota.rate_per_s, quota.burst, quota.max_concurrent)
    now, tat = 0.0, 0.0
    for i in range(400):
        n = rows[i % len(rows)]
        now += pacer.wait(now, n)  # it sleeps as told, then sends
        decision, tat = gcra(tat, now, n if quota.cost == "batch" else 1, limit)
        assert decision.allowed, (i, now)


def test_an_unhurried_caller_does_not_wait_and_a_burst_is_spread() -> None:
    pacer = Pacer(rate_per_s=10, burst=2, per_row=False)
    assert pacer.wait(0.0, 1) == 0.0
    assert pacer.wait(0.0, 1) == 0.0
    assert pacer.wait(0.0, 1) == pytest.approx(0.1)
    assert pacer.wait(100.0, 1) == 0.0  # a long pause refills the credit
    assert Pacer(rate_per_s=10, burst=1, per_row=True).wait(0.0, 5) == pytest.approx(0.4)
