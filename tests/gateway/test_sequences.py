"""Sequence affinity's parts: the parameters, and the maps (in-process with a clock of
the test's own; Redis on a redis-server of the module's own)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from aios.errors import InvalidInput, NotReady
from gateway.sequences import Held, LocalSequences, RedisSequences, SequenceCall, sequence_of
from tests.redis_server import RedisServer


@pytest.mark.parametrize(("parameters", "expected"), [
    ({}, None),
    ({"sequence_id": 0}, None),  # Triton: 0 is no sequence
    ({"sequence_id": ""}, None),
    ({"sequence_id": 42, "sequence_start": True}, SequenceCall("42", True, False)),
    ({"sequence_id": "claim-7", "sequence_end": True}, SequenceCall("claim-7", False, True)),
])
def test_sequence_parameters(parameters: dict[str, Any], expected: SequenceCall | None) -> None:
    assert sequence_of(parameters) == expected


@pytest.mark.parametrize(("parameters", "message"), [
    ({"sequence_id": True}, "parameter 'sequence_id' must be a non-negative integer"),
    ({"sequence_id": 1.5}, "parameter 'sequence_id' must be a non-negative integer"),
    ({"sequence_id": "x" * 129}, "string of at most 128 characters"),
    ({"sequence_id": 1, "sequence_end": 1}, "parameter 'sequence_end' must be true or false"),
    ({"sequence_start": True}, "parameter 'sequence_start' needs a 'sequence_id'"),
])
def test_bad_sequence_parameters(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        sequence_of(parameters)


def test_local_sequences_count_positions_slide_their_expiry_and_are_released() -> None:
    now = [0.0]
    seqs = LocalSequences(limit=2, clock=lambda: now[0])

    async def run() -> None:
        assert await seqs.hold("m", "1", "stable", idle_s=10) == Held("stable", 1)
        now[0] = 9
        assert await seqs.held("m", "1", 10) == Held("stable", 2)
        now[0] = 18  # 9 s after the last request: still held (the expiry slides)
        assert await seqs.held("m", "1", 10) == Held("stable", 3)
        now[0] = 28.5
        assert await seqs.held("m", "1", 10) is None  # idled out
        await seqs.hold("m", "2", "canary", 10)
        await seqs.hold("m", "3", "canary", 10)
        with pytest.raises(NotReady, match="2 sequences are open on this gateway"):
            await seqs.hold("m", "4", "canary", 10)
        await seqs.release("m", "2")
        await seqs.hold("m", "4", "canary", 10)
        now[0] = 100  # the expired make room
        await seqs.hold("m", "5", "stable", 10)

    asyncio.run(run())


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def test_redis_sequences_are_shared_and_expire(redis_url: str) -> None:
    async def run() -> None:
        a, b = (aioredis.Redis.from_url(redis_url) for _ in range(2))
        one, two = RedisSequences(a, "t:"), RedisSequences(b, "t:")  # two replicas
        assert await one.held("m", "9", 10) is None
        await one.hold("m", "9", "canary", idle_s=0.3)
        assert await two.held("m", "9", 0.3) == Held("canary", 2)
        assert await one.held("m", "9", 0.3) == Held("canary", 3)
        await asyncio.sleep(0.5)
        assert await two.held("m", "9", 0.3) is None
        await one.hold("m", "10", "stable", 10)
        await two.release("m", "10")
        assert await one.held("m", "10", 10) is None
        assert await a.keys("t:seq:*") == []
        await a.aclose()
        await b.aclose()

    asyncio.run(run())


def test_an_unreachable_redis_is_503() -> None:
    async def run() -> None:
        client = aioredis.Redis(port=1, socket_connect_timeout=0.2)
        with pytest.raises(NotReady, match="sequence affinity: Redis unreachable"):
            await RedisSequences(client, "t:").held("m", "1", 1)
        await client.aclose()

    asyncio.run(run())
