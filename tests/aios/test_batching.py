"""`aios.batching.Asked`: answers about the next hop, asked in the background. No sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from aios import batching
from aios.batching import ANSWER_TTL_S, Asked


def test_calls_go_alone_until_answered_then_a_stale_answer_stands_while_asked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: now[0])
    asked: list[str] = []
    answers = iter([64, 8])

    async def ask(question: str) -> int:
        asked.append(question)
        return next(answers)

    async def main() -> list[int]:
        tasks: list[asyncio.Future[Any]] = []

        def spawn(work: Awaitable[Any]) -> None:
            tasks.append(asyncio.ensure_future(work))

        known = Asked(ask, spawn)
        seen = [known.rows("m"), known.rows("m")]  # asked once, 0 meanwhile
        await asyncio.gather(*tasks)
        seen.append(known.rows("m"))
        now[0] += ANSWER_TTL_S
        seen.append(known.rows("m"))  # stale: stands while asked again
        await asyncio.gather(*tasks)
        seen.append(known.rows("m"))
        return seen

    assert asyncio.run(main()) == [0, 0, 64, 64, 8]
    assert asked == ["m", "m"]


def test_a_failed_question_is_asked_again_on_the_next_call() -> None:
    calls = 0

    async def ask(_: str) -> int:
        nonlocal calls
        calls += 1
        raise OSError("down")

    async def main() -> int:
        tasks: list[asyncio.Future[Any]] = []
        known = Asked(ask, lambda work: tasks.append(asyncio.ensure_future(work)))
        assert known.rows("m") == 0
        await asyncio.gather(*tasks, return_exceptions=True)
        assert known.rows("m") == 0
        await asyncio.gather(*tasks, return_exceptions=True)
        return calls

    assert asyncio.run(main()) == 2
