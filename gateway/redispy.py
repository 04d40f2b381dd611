"""redis-py (asyncio, hiredis parser) as the quota's client: what `gateway.resp` is
measured against (`make bench --transports`; `quota.redis_client: redis-py`).

The same calls as `PipelinedRedis`, each bounded by the quota's timeout. One difference:
an ``undo`` after a timed-out call goes on whichever pooled connection is free, so it may
run before the late call does (`PipelinedRedis` queues it behind it); the lease then
lapses by its TTL, as it did before leases were undone. And its timers can expire while
the loop is busy, before a reply that has arrived is read: the quota then decides by its
fallback although Redis answered (loadtests/README.md, "Transports"; why `resp` stays).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aios.redisconf import RedisEndpoint
from aios.tasks import Tasks
from gateway.resp import Script, run_script


class RedisPyClient:
    """A pooled redis-py client to the Redis at ``url``."""

    def __init__(self, url: str, timeout_s: float, connect_timeout_s: float) -> None:
        self._client = RedisEndpoint.from_url(url).client(None, connect_timeout_s)
        self._timeout = timeout_s
        self._undos = Tasks()

    async def execute(self, *args: Any, undo: Sequence[Any] = ()) -> Any:
        """Run one command within the timeout; its reply, a redis-py exception, or
        TimeoutError."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except (asyncio.CancelledError, TimeoutError):
            if undo:
                self._undos.spawn(self._client.execute_command(*undo))  # type: ignore[no-untyped-call]
            raise

    async def run(self, script: Script, keys: list[str], args: list[Any],
                  undo: Sequence[Any] = ()) -> Any:
        """EVALSHA ``script`` (`gateway.resp.run_script`)."""
        return await run_script(self.execute, script, keys, args, undo)

    async def aclose(self) -> None:
        """Close the pool."""
        await self._undos.aclose()
        await self._client.aclose()
