"""One thread of one's own for a stream of blocking calls (the decision log's write and
fsync), each awaited from the event loop.

`asyncio.to_thread` goes through a thread pool's futures, work items and a wrapped
future per call: ~75 µs of CPU per hop on this VM against ~50 for a thread that waits on
a queue and hands its result back with one `call_soon_threadsafe` (`loadtests/README.md`,
round 7). Calls run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.Future[Any]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its awaiter was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Worker:
    """``async with Worker(name) as w: await w.run(fn, *args)``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Not `_thread`: mypyc names the C field `__thread`, a C keyword.
        self._runner: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Worker:
        self._loop = asyncio.get_running_loop()
        self._runner = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._runner.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._jobs.put(None)
        if self._runner is not None:
            # The last call may still be running (an fsync): wait for it off the loop.
            await asyncio.to_thread(self._runner.join)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker's thread, after every call handed in before."""
        assert self._loop is not None, "run() outside `async with`"
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((lambda: fn(*args), future))
        return await future

    def _serve(self) -> None:
        assert self._loop is not None
        while (job := self._jobs.get()) is not None:
            call, future = job
            try:
                result, error = call(), None
            except BaseException as exc:  # handed to the awaiter, raised there
                result, error = None, exc
            try:
                self._loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
