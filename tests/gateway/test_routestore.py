"""Routing stores: the history records what changed, and stays bounded on every store."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from aios.config import GatewaySettings, ModelRoute
from aios.errors import Conflict
from gateway import routestore
from gateway.proposals import Proposal, approved, rejected
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


async def test_proposals_are_kept_answered_once_and_pruned(
        store: tuple[str, RouteStore, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, routes, _ = store
    monkeypatch.setattr(routestore, "KEPT_PROPOSALS", 20)  # the bound, made small
    first = Proposal("p-1", "m", "set_weights", {"weights": {"a": 1}}, 1, "alice", "", 1.0)
    await routes.propose(first)
    await routes.propose(Proposal("p-2", "m", "set_weights", {}, 1, "bob", "", 2.0))
    assert [p.id for p in await routes.proposals()] == ["p-2", "p-1"]
    answer = approved(first, "carol", "ok", 3.0)
    await routes.resolve(answer, "pending")
    with pytest.raises(Conflict, match=r"^proposal p-1 is approved, not pending$"):
        await routes.resolve(rejected(first, "dave", "late", 4.0), "pending")
    with pytest.raises(Conflict, match=r"^proposal p-9 is gone, not pending$"):
        await routes.resolve(dataclasses.replace(first, id="p-9"), "pending")
    kept = {p.id: p for p in await routes.proposals()}
    assert (kept["p-1"].state, kept["p-1"].resolver) == ("approved", "carol")
    for i in range(25):  # resolved ones beyond the limit are let go
        await routes.propose(Proposal(f"r-{i}", "m", "set_weights", {}, 1, "x", "", 10.0 + i,
                                     state="rejected"))
    kept = {p.id: p for p in await routes.proposals()}
    assert "p-2" in kept, "a pending proposal is always kept"
    assert len([p for p in kept.values() if p.state != "pending"]) == 20
