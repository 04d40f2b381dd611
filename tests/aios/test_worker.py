"""The worker thread: calls run in order off the loop, results and errors come back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aios.worker import Worker


async def test_calls_run_in_order_on_one_thread_off_the_loop() -> None:
    seen: list[tuple[int, str]] = []
    loop_thread = threading.current_thread().name

    def note(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 2

    async with Worker("test-worker") as worker:
        results = await asyncio.gather(*(worker.run(note, i) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-worker"} != {loop_thread}


async def test_an_error_reaches_the_awaiter_and_the_worker_goes_on() -> None:
    def fail() -> None:
        raise OSError(28, "No space left on device")

    async with Worker("test-worker") as worker:
        with pytest.raises(OSError, match="No space left on device"):
            await worker.run(fail)
        assert await worker.run(sum, [1, 2, 3]) == 6


async def test_a_cancelled_awaiter_does_not_break_the_worker() -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    async with Worker("test-worker") as worker:
        waiting = asyncio.create_task(worker.run(slow))
        await asyncio.to_thread(started.wait, 5)
        waiting.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await worker.run(len, "four") == 4
