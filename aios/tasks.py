"""Background work owned by one object: kept referenced while it runs (asyncio holds
only weak references to tasks), and cancelled together when the owner closes."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any, Protocol


class Tasks:
    """The background tasks of one owner."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background until it ends or `aclose` cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel what is still running, and wait for it to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Swept(Protocol):
    """A connection that checks its own deadlines when asked."""

    def sweep(self, now: float) -> None:
        """End what has overrun its time at ``now`` (the loop's clock)."""
        ...


async def sweep_forever(connections: Collection[Swept], interval_s: float) -> None:
    """Every ``interval_s``, let each of ``connections`` check its deadlines: one timer for
    a server's connections instead of one per connection and read."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for conn in list(connections):
            conn.sweep(now)
