"""`aios.batching.Asked`: answers about the next hop, asked in the background. No sockets."""

from __future__ import annotations

import asyncio

import pytest

from aios import batching
from aios.batching import ANSWER_TTL_S, Asked
from aios.tasks import Tasks


async def settled(tasks: Tasks) -> None:
    """Let the questions asked so far be answered: they await nothing, so one turn of the
    loop runs them and one more their done callbacks."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not len(tasks)


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
        tasks = Tasks()
        known = Asked(ask, tasks)
        seen = [known.rows("m"), known.rows("m")]  # asked once, 0 meanwhile
        assert len(tasks) == 1
        await settled(tasks)
        seen.append(known.rows("m"))
        now[0] += ANSWER_TTL_S
        seen.append(known.rows("m"))  # stale: stands while asked again
        await settled(tasks)
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
        tasks = Tasks()
        known = Asked(ask, tasks)
        assert known.rows("m") == 0
        await settled(tasks)
        assert known.rows("m") == 0
        await settled(tasks)
        return calls

    assert asyncio.run(main()) == 2
