"""Quotas: the GCRA decision, the local and Redis limiters, and the Redis failure policy."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from aios.config import QuotaSettings, TenantQuota
from aios.errors import QuotaExceeded, QuotaUnavailable
from gateway.quota import (
    Limit,
    LocalLimiter,
    Prefetch,
    Quotas,
    RedisLimiter,
    gcra,
    redis_client,
)
from gateway.redispy import RedisPyClient
from tests.redis_server import RedisServer
from tests.tcpproxy import DelayProxy

LIMIT = Limit(rate_per_s=10, burst=5, max_concurrent=0)


@pytest.mark.parametrize(("tat", "now", "cost", "allowed", "remaining", "retry"), [
    (0.0, 0.0, 1, True, 4, 0.0),        # fresh: burst of 5, one taken
    (0.4, 0.0, 1, True, 0, 0.0),        # four taken already: the fifth passes
    (0.5, 0.0, 1, False, 0, 0.1),       # burst spent: next slot in one interval
    (0.5, 0.1, 1, True, 0, 0.0),        # ...which arrives
    (0.0, 0.0, 5, True, 0, 0.0),        # a batch the size of the burst
    (0.1, 0.0, 5, False, 0, 0.1),
    (0.0, 10.0, 1, True, 4, 0.0),       # idle time refills, never beyond the burst
])
def test_gcra(tat: float, now: float, cost: int, allowed: bool, remaining: int,
              retry: float) -> None:
    decision, new_tat = gcra(tat, now, cost, LIMIT)
    assert decision.allowed is allowed
    assert decision.remaining == remaining
    assert decision.retry_after_s == pytest.approx(retry)
    assert new_tat == (pytest.approx(max(tat, now) + cost * 0.1) if allowed else tat)


@pytest.mark.parametrize("now", [1102.95383162537, 3640.5077535118667, 7582.041567075,
                                 1216.1909274620946, 8.0])
def test_a_request_that_exactly_fits_the_burst_passes_whatever_the_clock(now: float) -> None:
    """Clock readings where (now + 1000) - 1000 != now in floating point."""
    limit = Limit(rate_per_s=0.001, burst=1, max_concurrent=0)
    first, tat = gcra(now, now, 1, limit)
    second, _ = gcra(tat, now + 0.005, 1, limit)
    assert (first.allowed, second.allowed) == (True, False)
    assert second.retry_after_s == pytest.approx(1000 - 0.005)


def test_gcra_caps_a_window_at_burst_plus_rate() -> None:
    tat, accepted = 0.0, 0
    for i in range(10_000):  # 10 s of attempts every millisecond
        decision, tat = gcra(tat, i / 1000, 1, LIMIT)
        accepted += decision.allowed
    assert accepted <= 5 + 10 * 10
    assert accepted >= 10 * 10


@pytest.mark.parametrize(("limit", "replicas", "share"), [
    (Limit(100, 50, 8), 1, Limit(100, 50, 8)),
    (Limit(100, 50, 8), 2, Limit(50, 25, 4)),
    (Limit(100, 1, 0), 4, Limit(25, 1, 0)),
    (Limit(10, 5, 3), 2, Limit(5, 2, 2)),
])
def test_replica_share(limit: Limit, replicas: int, share: Limit) -> None:
    assert limit.share(replicas) == share


async def test_local_limiter_rate_and_concurrency() -> None:
    clock = [0.0]
    limiter = LocalLimiter(clock=lambda: clock[0])
    limit = Limit(rate_per_s=1000, burst=1000, max_concurrent=2)
    first, lease1 = await limiter.acquire("t:m", limit, 1)
    _, lease2 = await limiter.acquire("t:m", limit, 1)
    third, lease3 = await limiter.acquire("t:m", limit, 1)
    assert first.allowed and lease1 and lease2
    assert (third.allowed, third.reason, lease3) == (False, "concurrency", None)
    assert (await limiter.acquire("t:other", limit, 1))[1] is not None, "keys are separate"
    await limiter.release(lease1)
    assert (await limiter.acquire("t:m", limit, 1))[1] is not None


def settings(server: RedisServer, **overrides: object) -> QuotaSettings:
    return QuotaSettings.model_validate({
        "backend": "redis", "redis_url": server.url, "key_prefix": f"test:{time.time_ns()}:",
        "redis_timeout_ms": 100, "redis_retry_interval_s": 0.2, **overrides})


@pytest.fixture
async def redis_limiter(redis_server: RedisServer) -> AsyncIterator[RedisLimiter]:
    s = settings(redis_server, lease_ttl_s=0.5)
    client = redis_client(s)
    yield RedisLimiter(client, s.key_prefix, s.lease_ttl_s)
    await client.aclose()


async def test_redis_limiter_rate(redis_limiter: RedisLimiter) -> None:
    limit = Limit(rate_per_s=1, burst=5, max_concurrent=0)
    decisions = [(await redis_limiter.acquire("t:m", limit, 1))[0] for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[5].reason == "rate"
    assert 0.9 <= decisions[5].retry_after_s <= 1.0


async def test_redis_limiter_batch_cost(redis_limiter: RedisLimiter) -> None:
    limit = Limit(rate_per_s=1, burst=64, max_concurrent=0)
    assert (await redis_limiter.acquire("t:batch", limit, 64))[0].allowed
    assert not (await redis_limiter.acquire("t:batch", limit, 1))[0].allowed


async def test_redis_leases_cap_and_expire(redis_limiter: RedisLimiter) -> None:
    limit = Limit(rate_per_s=1000, burst=1000, max_concurrent=2)
    leases = [(await redis_limiter.acquire("t:c", limit, 1))[1] for _ in range(3)]
    assert leases[0] and leases[1] and leases[2] is None
    await redis_limiter.release(leases[0])
    assert (await redis_limiter.acquire("t:c", limit, 1))[1] is not None
    # Nobody releases now (a dead gateway): the leases lapse after lease_ttl_s.
    assert (await redis_limiter.acquire("t:c", limit, 1))[1] is None
    await asyncio.sleep(0.6)
    assert (await redis_limiter.acquire("t:c", limit, 1))[1] is not None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis this test may stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def outcome(quotas: Quotas) -> str:
    """Take one unit of tenant acme's quota for model m: ok, 429 or 503."""
    try:
        await quotas.acquire("acme", "m", 1)
    except QuotaExceeded:
        return "429"
    except QuotaUnavailable as exc:
        assert "fail_closed" in exc.message
        return "503"
    return "ok"


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_redis_outage_follows_the_tenant_policy(own_redis: RedisServer,
                                                      policy: str) -> None:
    tenant = TenantQuota(rate_per_s=1, burst=4, on_redis_error=policy)  # type: ignore[arg-type]
    s = settings(own_redis, replicas=2, default=tenant)
    registry = CollectorRegistry()
    client = redis_client(s)
    quotas = Quotas(s, RedisLimiter(client, s.key_prefix, s.lease_ttl_s), LocalLimiter(),
                    registry)
    try:
        await quotas.acquire("acme", "m", 1)  # Redis up: shared state
        own_redis.stop()
        started = time.monotonic()
        outcomes = [await outcome(quotas) for _ in range(4)]
        assert time.monotonic() - started < 1.0, "each decision is bounded by the timeout"
        if policy == "fail_open":
            # This replica's share of a burst of 4 across 2 replicas is 2.
            assert outcomes == ["ok", "ok", "429", "429"]
        else:
            assert outcomes == ["503"] * 4
        assert registry.get_sample_value(
            "aios_gateway_quota_redis_unavailable_decisions_total",
            {"tenant": "acme", "policy": policy}) == 4

        own_redis.start()
        await asyncio.sleep(0.25)  # past redis_retry_interval_s
        # Back on Redis, which still remembers nothing of the outage (a fresh server):
        # the full burst is available again, proving the shared limiter is in use.
        assert [await outcome(quotas) for _ in range(5)] == ["ok"] * 4 + ["429"]
    finally:
        await client.aclose()


async def test_cost_beyond_burst_is_refused_outright() -> None:
    s = QuotaSettings(default=TenantQuota(rate_per_s=10, burst=32, cost="batch"))
    quotas = Quotas(s, LocalLimiter(), LocalLimiter(), CollectorRegistry())
    with pytest.raises(QuotaExceeded, match="a request costing 64 exceeds the burst of 32"):
        await quotas.acquire("acme", "m", 64)
    lease = await quotas.acquire("acme", "m", 32)
    with pytest.raises(QuotaExceeded, match="over its request rate quota") as info:
        await quotas.acquire("acme", "m", 1)
    assert info.value.headers()["RateLimit-Limit"] == "32"
    assert int(info.value.headers()["Retry-After"]) >= 1
    quotas.release(lease)


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_slow_redis_is_bounded_by_the_timeout(own_redis: RedisServer, policy: str) -> None:
    tenant = TenantQuota(rate_per_s=1, burst=4, on_redis_error=policy)  # type: ignore[arg-type]
    async with DelayProxy(own_redis.port, delay_s=0.5) as proxy:
        s = settings(own_redis, redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                     redis_timeout_ms=50, default=tenant)
        client = redis_client(s)
        quotas = Quotas(s, RedisLimiter(client, s.key_prefix, s.lease_ttl_s), LocalLimiter(),
                        CollectorRegistry())
        try:
            started = time.monotonic()
            first = await outcome(quotas)
            assert time.monotonic() - started < 0.3, "not held for Redis' 500 ms"
            assert first == ("ok" if policy == "fail_open" else "503")
            proxy.delay_s = 0.0  # Redis answers promptly again
            await asyncio.sleep(0.25)  # past redis_retry_interval_s
            assert await outcome(quotas) == "ok"
        finally:
            await client.aclose()


@pytest.mark.parametrize(("limit", "hold_s", "cost", "chunk"), [
    (Limit(1e6, 100_000, 0), 0.05, 1, 5000),    # 5% of the burst caps it
    (Limit(1000, 100_000, 0), 0.05, 1, 50),     # 50 ms of the rate caps it
    (Limit(1000, 100_000, 0), 0.05, 32, 50),    # a batch smaller than the chunk
    (Limit(1000, 100_000, 0), 0.05, 50, 0),     # ...or not: exactly its cost
    (Limit(20, 10, 0), 0.05, 1, 0),             # a small quota asks Redis every time
    (Limit(1e6, 100_000, 3), 0.05, 1, 0),       # slots are taken per request
    (Limit(1e6, 100_000, 0), 0.0, 1, 0),        # prefetch off
])
def test_prefetch_chunk(limit: Limit, hold_s: float, cost: int, chunk: int) -> None:
    assert Prefetch(hold_s, time.monotonic).chunk(limit, cost) == chunk


def test_prefetched_units_are_spent_once_and_lapse() -> None:
    clock = [0.0]
    prefetch = Prefetch(0.05, lambda: clock[0])
    assert not prefetch.take("t:m", 1), "nothing held yet"
    prefetch.put("t:m", 3)
    assert [prefetch.take("t:m", 1) for _ in range(4)] == [True, True, True, False]
    prefetch.put("t:m", 8)
    assert not prefetch.take("t:m", 9) and prefetch.take("t:m", 8)
    prefetch.put("t:m", 5)
    clock[0] = 0.05
    assert not prefetch.take("t:m", 1), "units not spent within hold_s lapse"


def evalsha_calls(info: bytes) -> int:
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest.mark.parametrize(("prefetch_s", "first_calls"), [(1.0, 20), (0.0, 100)])
async def test_prefetch_spares_redis_and_keeps_the_shared_bound(
        own_redis: RedisServer, prefetch_s: float, first_calls: int) -> None:
    # With prefetch: chunks of 5 (5% of a burst of 100), held for up to a second.
    s = settings(own_redis, prefetch_s=prefetch_s, redis_timeout_ms=1000,
                 tenants={"acme": {"rate_per_s": 10, "burst": 100}})
    client = redis_client(s)
    replicas = [Quotas(s, RedisLimiter(client, s.key_prefix, s.lease_ttl_s), LocalLimiter(),
                       CollectorRegistry()) for _ in range(2)]
    try:
        started = time.monotonic()
        outcomes = [await outcome(replicas[i % 2]) for i in range(100)]
        assert outcomes == ["ok"] * 100
        # A refill of one unit per 100 ms may add a call or two.
        calls = evalsha_calls(await client.execute("INFO", "commandstats"))
        assert first_calls <= calls <= first_calls + 2
        outcomes += [await outcome(replicas[i % 2]) for i in range(40)]
        # Two replicas on one allowance: never more than burst + rate * t in total; the
        # last units, too few for a chunk, are still taken one by one.
        assert outcomes.count("ok") <= 100 + 10 * (time.monotonic() - started) + 1
        assert outcomes[-1] == "429"
    finally:
        await client.aclose()


@pytest.mark.parametrize(("prefetch_s", "expected_calls"), [(1.0, 1), (0.0, 40)])
async def test_requests_that_find_the_stock_empty_together_share_one_chunk(
        own_redis: RedisServer, prefetch_s: float, expected_calls: int) -> None:
    """40 concurrent requests, nothing held yet: one chunk (of 50) from Redis for them
    all, not a chunk each (39 of which nobody would spend, yet Redis would count)."""
    s = settings(own_redis, prefetch_s=prefetch_s, redis_timeout_ms=1000,
                 tenants={"acme": {"rate_per_s": 1000, "burst": 1000}})
    client = redis_client(s)
    quotas = Quotas(s, RedisLimiter(client, s.key_prefix, s.lease_ttl_s), LocalLimiter(),
                    CollectorRegistry())
    try:
        await quotas.acquire("acme", "another-model", 1)  # loads the script into Redis
        before = evalsha_calls(await client.execute("INFO", "commandstats"))
        outcomes = await asyncio.gather(*(outcome(quotas) for _ in range(40)))
        assert outcomes == ["ok"] * 40
        calls = evalsha_calls(await client.execute("INFO", "commandstats")) - before
        assert calls == expected_calls
    finally:
        await client.aclose()


async def test_a_redis_pause_leaves_no_orphaned_leases(own_redis: RedisServer,
                                                       quota_redis_client: str) -> None:
    """Calls that time out while Redis is paused still run when it resumes; the slots they
    take must be given back, so capped tenants are admitted again at once."""
    tenant = TenantQuota(rate_per_s=1000, burst=1000, max_concurrent=3)
    s = settings(own_redis, default=tenant, redis_client=quota_redis_client)
    registry = CollectorRegistry()
    client = redis_client(s)
    quotas = Quotas(s, RedisLimiter(client, s.key_prefix, s.lease_ttl_s), LocalLimiter(),
                    registry)
    unreachable = {"tenant": "acme", "policy": "fail_open"}
    assert own_redis.process is not None
    checker = redis.asyncio.Redis(port=own_redis.port)
    try:
        quotas.release(await quotas.acquire("acme", "m", 1))
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            # All sent before the first times out: 30 scripts wait in Redis.
            paused = await asyncio.gather(*(quotas.acquire("acme", "m", 1) for _ in range(30)),
                                          return_exceptions=True)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        for lease in paused:
            if not isinstance(lease, BaseException):
                quotas.release(lease)
        await checker.ping()  # Redis answers again: the late scripts and their undos ran
        decided_without_redis = registry.get_sample_value(
            "aios_gateway_quota_redis_unavailable_decisions_total", unreachable)
        await asyncio.sleep(0.25)  # past redis_retry_interval_s
        leases = await asyncio.gather(*(quotas.acquire("acme", "m", 1) for _ in range(3)))
        assert registry.get_sample_value(
            "aios_gateway_quota_redis_unavailable_decisions_total",
            unreachable) == decided_without_redis, "decided by Redis, not the fallback"
        keys = [k async for k in checker.scan_iter(f"{s.key_prefix}*:leases")]
        assert [await checker.zcard(k) for k in keys] == [3]
        with pytest.raises(QuotaExceeded, match="concurrent requests"):
            await quotas.acquire("acme", "m", 1)
        for lease in leases:
            quotas.release(lease)
    finally:
        await checker.aclose()
        await client.aclose()


ROUNDS = 20
LAG_S = 0.08  # how long the loop is blocked after each wave: beyond redis_timeout_ms


async def test_a_busy_loop_does_not_make_replicas_fail_open(redis_server: RedisServer,
                                                            quota_redis_client: str) -> None:
    """Three replicas share a tenant's quota through Redis while their loop is blocked
    right after sending (as a flooded gateway's is), beyond the Redis timeout: Redis
    answered at once, so nothing is decided by the fallback, and every round admits at
    most burst + rate * t (+ each replica's prefetched stock)."""
    tenant = TenantQuota(rate_per_s=50, burst=100)
    s = settings(redis_server, redis_timeout_ms=50, replicas=3, default=tenant,
                 redis_client=quota_redis_client)
    clients = [redis_client(s) for _ in range(3)]
    registries = [CollectorRegistry() for _ in clients]
    replicas = [Quotas(s, RedisLimiter(c, s.key_prefix, s.lease_ttl_s), LocalLimiter(), r)
                for c, r in zip(clients, registries, strict=True)]
    stock = 3 * Prefetch(s.prefetch_s, time.monotonic).chunk(
        Limit(tenant.rate_per_s, tenant.burst, 0), 1)
    loop = asyncio.get_running_loop()

    async def one(replica: Quotas, tenant_name: str) -> bool:
        try:
            await replica.acquire(tenant_name, "m", 1)
        except QuotaExceeded:
            return False
        return True

    admitted = []
    # The lag under test is the one made below; a full collection of this test process's
    # heap (large late in the suite) would add an unplanned stall of its own.
    gc.collect()
    gc.disable()
    try:
        for round_ in range(ROUNDS):
            name = f"flood-{round_}"  # a fresh allowance each round
            started = time.monotonic()
            calls: list[asyncio.Future[bool]] = []
            for _ in range(6):
                wave = [asyncio.ensure_future(one(replicas[i % 3], name)) for i in range(60)]
                # Runs after the wave's first steps, which send to Redis.
                loop.call_soon(time.sleep, LAG_S)
                await asyncio.sleep(0)
                calls += wave
            results = await asyncio.gather(*calls)
            elapsed = time.monotonic() - started
            admitted.append((sum(results), tenant.burst + tenant.rate_per_s * elapsed + stock))
    finally:
        gc.enable()
        for c in clients:
            await c.aclose()
    fallbacks = [sample.value for r in registries for metric in r.collect()
                 if metric.name.endswith("unavailable_decisions")
                 for sample in metric.samples if sample.name.endswith("_total")]
    assert sum(fallbacks) == 0, "every decision came from Redis"
    over = [(got, bound) for got, bound in admitted if got > bound]
    assert not over, f"rounds over the shared bound (admitted, bound): {over}"
    assert all(got >= tenant.burst for got, _ in admitted), admitted


async def test_the_redis_py_client_decides_as_ours(redis_server: RedisServer) -> None:
    s = settings(redis_server, redis_client="redis-py", lease_ttl_s=5)
    client = redis_client(s)
    assert isinstance(client, RedisPyClient)
    limiter = RedisLimiter(client, s.key_prefix, s.lease_ttl_s)
    try:
        limit = Limit(rate_per_s=10, burst=3, max_concurrent=2)
        first = [await limiter.acquire("k", limit, 1) for _ in range(3)]
        assert [d.allowed for d, _ in first] == [True, True, False]
        assert first[2][0].reason == "concurrency"
        lease = first[0][1]
        assert lease is not None
        await limiter.release(lease)
        again, _ = await limiter.acquire("k", limit, 1)
        assert again.allowed
    finally:
        await client.aclose()
