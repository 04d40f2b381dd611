"""Both rollout stores: compare-and-set on a rollout's seq, one active rollout per model,
finished ones kept; with Redis, one lease holder at a time and every replica's counters."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from aios.errors import Conflict
from gateway.rollout import Counters, Rollout
from gateway.rolloutstore import FileRolloutStore, RedisRolloutStore, RolloutStore
from tests.redis_server import RedisServer


def rollout(ident: str, state: str = "running") -> Rollout:
    return Rollout(id=ident, model="m", plan={"steps": [0, 100]}, stable="one",
                   candidate="two", candidate_backend="local", candidate_version="2",
                   state=state, step=0, step_started_at=0.0, baseline={}, started_by="a",
                   at=time.time())  # type: ignore[arg-type]


@pytest_asyncio.fixture(params=["file", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                redis_server: RedisServer) -> AsyncIterator[RolloutStore]:
    if request.param == "file":
        yield FileRolloutStore(tmp_path / "rollouts.json")
        return
    client = aioredis.Redis.from_url(redis_server.url)
    yield RedisRolloutStore(client, f"aios:test-rolloutstore-{time.time_ns()}:")
    await client.aclose()


async def test_a_save_is_compared_and_set_on_seq(store: RolloutStore) -> None:
    first = await store.save(rollout("r1"), 0)
    assert first.seq == 1
    moved = await store.save(dataclasses.replace(first, step=1), 1)
    assert moved.seq == 2
    with pytest.raises(Conflict, match=r"rollout r1 of 'm' moved on \(seq 2, not 1\)"):
        await store.save(dataclasses.replace(first, step=1), 1)
    assert [(r.id, r.step, r.seq) for r in await store.rollouts()] == [("r1", 1, 2)]


async def test_one_active_rollout_per_model_and_the_finished_are_kept(
        store: RolloutStore) -> None:
    first = await store.save(rollout("r1"), 0)
    with pytest.raises(Conflict, match=r"'m' has a rollout running \(r1\)"):
        await store.save(rollout("r2"), 0)
    await store.save(dataclasses.replace(first, state="completed"), first.seq)
    await store.save(rollout("r2"), 0)
    assert [r.id for r in await store.rollouts()] == ["r2", "r1"]
    with pytest.raises(Conflict, match="rollout r3 of 'n' is gone"):
        await store.save(dataclasses.replace(rollout("r3"), model="n"), 4)


async def test_counters_are_kept_per_replica(store: RolloutStore) -> None:
    await store.publish("m", "a", {"two": Counters(requests=3)})
    await store.publish("m", "a", {"two": Counters(requests=5)})
    gathered = await store.gathered("m")
    if isinstance(store, RedisRolloutStore):
        await store.publish("m", "b", {"two": Counters(requests=2)})
        gathered = await store.gathered("m")
        assert sorted(g["two"].requests for g in gathered) == [2, 5]
    else:
        assert [g["two"].requests for g in gathered] == [5]
    assert await store.gathered("other") == []


async def test_one_lease_holder_at_a_time_until_it_lapses(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = RedisRolloutStore(client, f"aios:test-lease-{time.time_ns()}:")
    try:
        assert await store.lease("m", "a", 0.3)
        assert not await store.lease("m", "b", 0.3)
        assert await store.lease("m", "a", 0.3)  # renewed
        assert await store.lease("other", "b", 0.3)
        await asyncio.sleep(0.4)
        assert await store.lease("m", "b", 0.3)
        assert not await store.lease("m", "a", 0.3)
    finally:
        await client.aclose()
