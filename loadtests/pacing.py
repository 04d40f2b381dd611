"""Load that stays within a tenant's quota: a client-side pacer, as a well-behaved caller
paces itself (a scenario that is not about quotas must not be failed by them).

`Pacer` is the gateway's own rule (GCRA: a rate and a burst) run on the caller's side at
a share of the rate, so that the caller's clock and the gateway's never disagree enough
to cross the line. Pure: the caller passes the time and sleeps for what it is told.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aios.config import TenantQuota

# The share of a tenant's rate and burst the load uses.
SHARE = 0.8


@dataclass
class Pacer:
    """How long to wait before a request of ``cost`` units, at ``rate_per_s`` units per
    second with ``burst`` units of credit."""

    rate_per_s: float
    burst: float
    per_row: bool  # a request costs its rows (the tenant's quota cost is "batch")
    _tat: float = field(default=0.0)  # the theoretical arrival time of the next unit

    @staticmethod
    def for_quota(quota: TenantQuota, share: float = SHARE) -> Pacer:
        return Pacer(quota.rate_per_s * share, max(1.0, quota.burst * share),
                     quota.cost == "batch")

    def wait(self, now: float, rows: int) -> float:
        """Seconds to sleep before sending a request of ``rows`` rows at ``now``; the
        request is counted as sent at the end of that sleep."""
        cost = rows if self.per_row else 1
        interval = 1.0 / self.rate_per_s
        tat = max(self._tat, now)
        # A request may go once it would leave the bucket no fuller than its burst.
        allowed_at = tat + cost * interval - self.burst * interval
        delay = max(0.0, allowed_at - now)
        self._tat = tat + cost * interval
        return delay
