"""`gateway.resp`: the pipelined Redis client against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.resp import PipelinedRedis, Script
from tests.redis_server import RedisServer
from tests.tcpproxy import DelayProxy

ECHO = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
        redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 1.0)
    prefix = f"resp:{time.time_ns()}"
    replies = await asyncio.gather(*(client.run(ECHO, [f"{prefix}:{i}"], [f"v{i}", i])
                                     for i in range(200)))
    assert replies == [[f"{prefix}:{i}".encode(), f"v{i}".encode(), 2 * i] for i in range(200)]
    # One connection carried them all.
    ids = await asyncio.gather(*(client.execute("CLIENT", "ID") for _ in range(5)))
    assert len(set(ids)) == 1
    await client.aclose()


async def test_a_script_flushed_by_redis_is_loaded_again(redis_server: RedisServer) -> None:
    client = PipelinedRedis(redis_server.url, 1.0)
    assert (await client.run(ECHO, ["k"], ["a", 1]))[2] == 2
    await client.execute("SCRIPT", "FLUSH")
    assert (await client.run(ECHO, ["k"], ["a", 2]))[2] == 4
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await client.execute("GET")
    await client.aclose()


async def test_a_late_reply_times_out_and_the_next_call_uses_a_new_connection(
        redis_server: RedisServer) -> None:
    async with DelayProxy(redis_server.port, delay_s=0.5) as proxy:
        client = PipelinedRedis(f"redis://127.0.0.1:{proxy.port}/0", 0.1)
        with pytest.raises((TimeoutError, RedisConnectionError)):
            await client.execute("PING")
        proxy.delay_s = 0.0
        started = time.monotonic()
        assert await client.execute("PING") == b"PONG"
        assert time.monotonic() - started < 0.3, "queued behind the late reply"
        await client.aclose()


async def test_redis_down_is_a_connection_error() -> None:
    client = PipelinedRedis("redis://127.0.0.1:1/0", 0.2)
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await client.execute("PING")


async def test_a_password_in_the_url_authenticates(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        with pytest.raises(ResponseError, match="NOAUTH"):
            await PipelinedRedis(server.url, 1.0).execute("PING")
        for url in (f"redis://:s3cret@127.0.0.1:{server.port}/0",
                    f"redis://default:s3cret@127.0.0.1:{server.port}/2"):
            assert await PipelinedRedis(url, 1.0).execute("PING") == b"PONG"
    finally:
        server.stop()
