"""Per tenant x model quotas: a GCRA rate limit with burst, and a cap on requests in flight.

`gcra` is the pure decision. `LocalLimiter` keeps its state in-process (the embedded
default); `RedisLimiter` keeps it in Redis with one atomic Lua script per check (one round
trip), so every replica draws on the same allowance. Concurrency slots in Redis are
leases with an expiry: a gateway that dies mid-request frees its slots when they lapse.

With Redis, a high-rate tenant's units are taken a few at a time (`Prefetch`): one
round trip buys the next few milliseconds of its rate, spent locally. Units a replica
holds are already counted in Redis, so the shared bound holds whatever the replicas do;
units it does not spend lapse, which errs on the side of refusing.

`Quotas` chooses between them: if Redis errs or is slower than the configured timeout,
the tenant's policy decides: `fail_open` falls back to the in-process limiter at this
replica's share of the limit, `fail_closed` answers 503. Redis is tried again after a
short interval, so service returns to it by itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from aios.config import QuotaSettings, TenantQuota
from aios.errors import QuotaExceeded, QuotaUnavailable
from aios.tasks import Tasks
from gateway.redispy import RedisPyClient
from gateway.resp import PipelinedRedis, Script

logger = logging.getLogger(__name__)

UNREACHABLE_LOG_INTERVAL_S = 1.0
# A replica never prefetches more than this share of a tenant's burst.
PREFETCH_BURST_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class Limit:
    """The limits applied to one tenant x model key."""

    rate_per_s: float
    burst: int
    max_concurrent: int

    def share(self, replicas: int) -> Limit:
        """This replica's share when each replica enforces the limit on its own."""
        if replicas == 1:
            return self
        return Limit(self.rate_per_s / replicas, max(1, self.burst // replicas),
                     math.ceil(self.max_concurrent / replicas) if self.max_concurrent else 0)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check; on refusal, when to come back."""

    allowed: bool
    remaining: int
    retry_after_s: float
    reset_s: float
    reason: str  # "" | "rate" | "concurrency"


# What rounding may leave of a wait that is exactly zero (seconds; the Lua script has
# the same in milliseconds).
GCRA_SLACK_S = 1e-6


def gcra(tat: float, now: float, cost: int, limit: Limit) -> tuple[Decision, float]:
    """Generic cell rate algorithm: return the decision and the new theoretical arrival time.

    Allows ``burst`` back-to-back units, then ``rate_per_s`` units per second: over any
    window of T seconds at most ``burst + rate_per_s * T`` units pass.
    """
    interval = 1.0 / limit.rate_per_s
    tolerance = limit.burst * interval
    # Measured from now, not as clock readings: a reading plus a step minus the same step
    # is not always the reading again in floating point, which refused (or let through)
    # a request that exactly fits the burst.
    ahead = max(tat - now, 0.0)  # how far the theoretical arrival time runs ahead
    wait = ahead + cost * interval - tolerance
    if wait > GCRA_SLACK_S:
        return Decision(False, 0, wait, ahead, "rate"), tat
    after = ahead + cost * interval
    remaining = int((tolerance - after) / interval + 1e-9)
    return Decision(True, remaining, 0.0, after, ""), now + after


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted request; released when the request is done."""

    limiter: Limiter
    key: str
    lease_id: str
    held: bool = True  # False: nothing to give back (a Redis grant without a slot)


class Limiter(Protocol):
    """Where quota state lives."""

    async def acquire(self, key: str, limit: Limit, cost: int) -> tuple[Decision, Lease | None]:
        """Check and, if allowed, take ``cost`` units and one concurrency slot."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the concurrency slot back."""
        ...


class LocalLimiter:
    """Quota state in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}

    async def acquire(self, key: str, limit: Limit, cost: int) -> tuple[Decision, Lease | None]:
        """Check and take, synchronously (no await inside: atomic on the event loop)."""
        in_flight = self._in_flight.get(key, 0)
        if limit.max_concurrent and in_flight >= limit.max_concurrent:
            return Decision(False, 0, 1.0, 1.0, "concurrency"), None
        now = self._clock()
        decision, tat = gcra(self._tat.get(key, now), now, cost, limit)
        if not decision.allowed:
            return decision, None
        self._tat[key] = tat
        self._in_flight[key] = in_flight + 1
        return decision, Lease(self, key, "")

    async def release(self, lease: Lease) -> None:
        """Free the slot."""
        left = self._in_flight.get(lease.key, 1) - 1
        if left:
            self._in_flight[lease.key] = left
        else:
            self._in_flight.pop(lease.key, None)


# KEYS: rate key, lease key. ARGV: interval ms, burst, cost, max concurrent, lease id,
# lease ttl ms. Uses Redis' clock so that replicas agree on "now".
_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
if max_conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_conc then
    return {0, 0, 1000, 1000, 'concurrency'}
  end
end
local tolerance = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local ahead = math.max(tat - now, 0)
local wait = ahead + cost * interval - tolerance
if wait > 0.001 then
  return {0, 0, math.ceil(wait), math.ceil(ahead), 'rate'}
end
local after = ahead + cost * interval
redis.call('SET', KEYS[1], string.format('%.3f', now + after), 'PX', math.ceil(after) + 1000)
if max_conc > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])) + 1000)
end
return {1, math.floor((tolerance - after) / interval + 1e-9), 0, math.ceil(after), ''}
"""

_SCRIPT = Script(_LUA)


@dataclass(slots=True)
class _Stock:
    units: int
    expires: float


class Prefetch:
    """Units this replica has already taken from the shared allowance, per key."""

    def __init__(self, hold_s: float, clock: Callable[[], float]) -> None:
        self._hold_s = hold_s
        self._clock = clock
        self._stock: dict[str, _Stock] = {}

    def chunk(self, limit: Limit, cost: int) -> int:
        """How many units to take from Redis at once for a request of ``cost``; 0 when
        this key should ask Redis for exactly what each request costs."""
        if limit.max_concurrent:  # slots are per request, so the round trip is anyway
            return 0
        chunk = int(min(limit.rate_per_s * self._hold_s, limit.burst * PREFETCH_BURST_SHARE))
        return chunk if chunk >= 2 and chunk > cost else 0

    def take(self, key: str, cost: int) -> bool:
        """Spend ``cost`` units held for ``key``, if there are enough that have not lapsed."""
        stock = self._stock.get(key)
        if stock is None or stock.units < cost:
            return False
        if stock.expires <= self._clock():
            del self._stock[key]
            return False
        stock.units -= cost
        return True

    def put(self, key: str, units: int) -> None:
        """Hold ``units`` just taken from Redis (what was held before has been spent or is
        given up: it is counted in Redis either way)."""
        self._stock[key] = _Stock(units, self._clock() + self._hold_s)


class RedisLimiter:
    """Quota state in Redis, shared by every gateway replica."""

    def __init__(self, client: QuotaRedis, prefix: str, lease_ttl_s: float) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_ttl_ms = lease_ttl_s * 1000

    async def acquire(self, key: str, limit: Limit, cost: int) -> tuple[Decision, Lease | None]:
        """One EVALSHA: check the lease count and the rate, take both if allowed."""
        lease_id = uuid.uuid4().hex if limit.max_concurrent else ""
        # The hash tag keeps a key's two entries on one cluster slot.
        base = f"{self._prefix}{{{key}}}"
        # A script that runs after this call gave up (Redis paused, then resumed) would take
        # a slot nobody releases: the lease is removed right behind it.
        undo = ("ZREM", f"{base}:leases", lease_id) if lease_id else ()
        allowed, remaining, retry_ms, reset_ms, reason = await self._client.run(
            _SCRIPT, [f"{base}:rate", f"{base}:leases"],
            [1000.0 / limit.rate_per_s, limit.burst, cost, limit.max_concurrent, lease_id,
             self._lease_ttl_ms], undo=undo)
        decision = Decision(bool(allowed), int(remaining), int(retry_ms) / 1000,
                            int(reset_ms) / 1000,
                            reason.decode() if isinstance(reason, bytes) else str(reason))
        if not decision.allowed:
            return decision, None
        return decision, Lease(self, base, lease_id, held=bool(lease_id))

    async def release(self, lease: Lease) -> None:
        """Remove the lease; if this fails the lease lapses by itself."""
        if lease.lease_id:
            await self._client.execute("ZREM", f"{lease.key}:leases", lease.lease_id)


class QuotaRedis(Protocol):
    """The quota's Redis client (`gateway.resp.PipelinedRedis`, or redis-py's for the
    transport A/B)."""

    async def execute(self, *args: Any, undo: Sequence[Any] = ()) -> Any:
        """One command within the client's timeout."""
        ...

    async def run(self, script: Script, keys: list[str], args: list[Any],
                  undo: Sequence[Any] = ()) -> Any:
        """One script within the client's timeout."""
        ...

    async def aclose(self) -> None:
        """Close the connection(s)."""
        ...


def redis_client(settings: QuotaSettings) -> QuotaRedis:
    """A Redis client that fails fast: no retries; calls are bounded by the quota's
    timeout (`Quotas`), and so is connecting."""
    timeout_s, connect_s = settings.redis_timeout_ms / 1000, \
        settings.redis_connect_timeout_ms / 1000
    if settings.redis_client == "redis-py":
        return RedisPyClient(settings.redis_url, timeout_s, connect_s)
    return PipelinedRedis(settings.redis_url, timeout_s, connect_s)


_PREPAID = Decision(True, 0, 0.0, 0.0, "")


class Quotas:
    """The gateway's quota check: Redis (or local) first, the tenant's policy on failure."""

    def __init__(self, settings: QuotaSettings, primary: Limiter, fallback: LocalLimiter,
                 registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._primary = primary
        self._fallback = fallback
        self._shared = not isinstance(primary, LocalLimiter)
        self._clock = clock
        self._prefetch = Prefetch(settings.prefetch_s, clock)
        # Per key, the chunk being taken from Redis now: requests that find the stock
        # empty meanwhile wait for it rather than each take a chunk of their own.
        self._refills: dict[str, asyncio.Future[None]] = {}
        self._redis_down_until = 0.0
        self._unreachable_since_log = 0
        self._last_log = 0.0
        self._tasks = Tasks()  # lease releases on their way
        self.rejections = Counter(
            "aios_gateway_quota_rejections", "Requests refused by quota",
            ("tenant", "model", "reason"), registry=registry)
        self.unreachable = Counter(
            "aios_gateway_quota_redis_unavailable_decisions",
            "Quota decisions taken while Redis was unreachable, by policy",
            ("tenant", "policy"), registry=registry)

    def cost_is_batch(self, tenant: str) -> bool:
        """Whether ``tenant`` pays per item of a batch (so the caller must count them)."""
        return self._settings.for_tenant(tenant).cost == "batch"

    async def acquire(self, tenant: str, model: str, batch: int) -> Lease:
        """Take the quota for one request, or raise QuotaExceeded / QuotaUnavailable."""
        quota = self._settings.for_tenant(tenant)
        limit = Limit(quota.rate_per_s, quota.burst, quota.max_concurrent)
        cost = batch if quota.cost == "batch" else 1
        if cost > limit.burst:
            raise QuotaExceeded(f"a request costing {cost} exceeds the burst of {limit.burst} "
                                f"for tenant '{tenant}'", limit.burst, 0, 3600, 0)
        key = f"{tenant}:{model}"
        decision, lease = await self._decide(key, tenant, quota, limit, cost)
        if lease is None:
            self.rejections.labels(tenant, model, decision.reason).inc()
            what = ("concurrent requests" if decision.reason == "concurrency"
                    else "request rate")
            raise QuotaExceeded(f"tenant '{tenant}' is over its {what} quota for model "
                                f"'{model}'", limit.burst, decision.remaining,
                                decision.retry_after_s, decision.reset_s)
        return lease

    async def _decide(self, key: str, tenant: str, quota: TenantQuota, limit: Limit,
                      cost: int) -> tuple[Decision, Lease | None]:
        if not self._shared:
            return await self._primary.acquire(key, limit, cost)
        if self._clock() >= self._redis_down_until:
            try:
                # The shared limiter's client bounds each call by redis_timeout_ms.
                return await self._shared_acquire(key, limit, cost)
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_down_until = self._clock() + self._settings.redis_retry_interval_s
                logger.warning("quota: Redis unreachable (%s); deciding by tenant policy "
                               "for %.1fs", type(exc).__name__,
                               self._settings.redis_retry_interval_s)
        self.unreachable.labels(tenant, quota.on_redis_error).inc()
        self._log_unreachable(quota.on_redis_error)
        if quota.on_redis_error == "fail_closed":
            raise QuotaUnavailable(f"quota store unavailable and tenant '{tenant}' is "
                                   "fail_closed; try again shortly")
        return await self._fallback.acquire(key, limit.share(self._settings.replicas), cost)

    async def _shared_acquire(self, key: str, limit: Limit, cost: int,
                              ) -> tuple[Decision, Lease | None]:
        chunk = self._prefetch.chunk(limit, cost)
        if chunk:
            if self._prefetch.take(key, cost):
                return self._prepaid(key)
            refill = self._refills.get(key)
            if refill is not None:
                await asyncio.shield(refill)
                if self._prefetch.take(key, cost):
                    return self._prepaid(key)
            else:
                decision, lease = await self._refill(key, limit, chunk)
                if lease is not None:
                    self._prefetch.put(key, chunk - cost)
                    return decision, lease
        # Without prefetch, or a chunk refused: exactly this request's cost, so a refusal
        # comes from Redis with its exact retry time and no unit is left unused.
        return await self._primary.acquire(key, limit, cost)

    def _prepaid(self, key: str) -> tuple[Decision, Lease]:
        """A request paid for by units this replica holds (nothing to release)."""
        return _PREPAID, Lease(self._primary, key, "", held=False)

    async def _refill(self, key: str, limit: Limit, chunk: int,
                      ) -> tuple[Decision, Lease | None]:
        """Take a chunk for ``key``; whoever finds the stock empty meanwhile waits for it
        (a chunk each would spend the tenant's allowance on units nobody uses)."""
        done = asyncio.get_running_loop().create_future()
        self._refills[key] = done
        try:
            return await self._primary.acquire(key, limit, chunk)
        finally:
            del self._refills[key]
            done.set_result(None)

    def _log_unreachable(self, policy: str) -> None:
        # One line a second, with the count, rather than a line per request.
        self._unreachable_since_log += 1
        now = self._clock()
        if now - self._last_log >= UNREACHABLE_LOG_INTERVAL_S:
            logger.warning("quota: %d request(s) decided without Redis (last policy %s)",
                           self._unreachable_since_log, policy)
            self._unreachable_since_log = 0
            self._last_log = now

    def release(self, lease: Lease) -> None:
        """Give a request's slot back, off the response path."""
        if not lease.held:
            return
        self._tasks.spawn(self._release(lease))

    async def _release(self, lease: Lease) -> None:
        try:
            await lease.limiter.release(lease)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("quota: could not release a lease (%s); it lapses by itself",
                           type(exc).__name__)
