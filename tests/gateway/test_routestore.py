"""Routing stores: the history records what changed, and stays bounded on every store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from aios.config import GatewaySettings, ModelRoute
from gateway.routestore import (
    RouteStore,
    new_change,
    open_route_store,
    route_diff,
    table_from_route,
)
from gateway.routing import ModelTable
from tests.redis_server import RedisServer


@pytest.mark.parametrize(("before", "after", "diff"), [
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, ({"b": 2}, {"b": 3})),
    ({"t": {"x": {"w": 1, "v": "1"}}}, {"t": {"x": {"w": 2, "v": "1"}}},
     ({"t": {"x": {"w": 1}}}, {"t": {"x": {"w": 2}}})),
    ({"t": {"x": {"w": 1}}}, {"t": {"x": {"w": 1}, "y": {"w": 5}}},
     ({"t": {"y": None}}, {"t": {"y": {"w": 5}}})),
    ({"shadow": {"fraction": 0.1}}, {"shadow": None}, ({"shadow": {"fraction": 0.1}},
                                                        {"shadow": None})),
    ({"a": [1, 2]}, {"a": [1, 3]}, ({"a": [1, 2]}, {"a": [1, 3]})),
    ({"a": 1}, {"a": 1}, ({}, {})),
])
def test_route_diff(before: Any, after: Any, diff: tuple[Any, Any]) -> None:
    assert route_diff(before, after) == diff


TARGETS = 10_000


def big_table(revision: int, canary_weight: int, previous: ModelTable | None) -> ModelTable:
    targets = {f"t{i}": {"backend": "local", "version": "1", "weight": 1}
               for i in range(TARGETS - 1)}
    targets["canary"] = {"backend": "local", "version": "2", "weight": canary_weight}
    return table_from_route("claims_risk", ModelRoute.model_validate({"targets": targets}),
                            revision, previous)


@pytest.fixture(params=["file", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                redis_server: RedisServer) -> AsyncIterator[tuple[str, RouteStore, Path]]:
    settings = GatewaySettings.model_validate({"routing": {
        "store": request.param, "state_file": str(tmp_path / "routes.json"),
        "redis_url": redis_server.url, "key_prefix": f"test:{time.time_ns()}:",
        "history_limit": 25}})
    async with AsyncExitStack() as stack:
        yield request.param, await open_route_store(settings, stack), tmp_path


async def test_forty_changes_to_a_large_table_keep_a_small_bounded_history(
        store: tuple[str, RouteStore, Path]) -> None:
    kind, routes, tmp = store
    current = (await routes.load({"claims_risk": big_table(1, 1, None)}))["claims_risk"]
    for step in range(40):
        after = big_table(current.revision + 1, step + 2, current)
        await routes.commit(after, current.revision, new_change(
            "claims_risk", after.revision, "ops", "set_weights", f"step {step}", current, after))
        current = after
    changes = await routes.history("claims_risk", 100)
    assert len(changes) == 25, "history_limit holds on every store"
    assert [c.reason for c in changes] == [f"step {s}" for s in range(39, 14, -1)]
    assert (changes[0].before, changes[0].after) == (
        {"targets": {"canary": {"weight": 40}}}, {"targets": {"canary": {"weight": 41}}})
    assert [c.revision for c in await routes.history(None, 3)] == [41, 40, 39]
    if kind == "file":
        history = tmp / "routes-history.jsonl"
        assert len(history.read_text().splitlines()) <= 25 + 2
        assert history.stat().st_size < 25 * 1024, "diffs, not two whole tables per change"
