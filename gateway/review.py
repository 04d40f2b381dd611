"""The review queue as reviewers and ops use it. Protocol-agnostic: the REST
(`gateway.review_rest`) and gRPC (`gateway.review_grpc`) adapters call `ReviewApi`.

Reading needs `review:read`, claiming and deciding `review:decide`, changing a model's
gates `review:admin`. Every transition is the queue's own (`aios.reviewqueue`), written
by compare-and-set, so of two reviewers deciding one item at once exactly one wins and
the other gets 409. The sidecar that wrote the model's record chains the reviewer's and
announces the outcome (`sidecar.review`). Queue figures for Prometheus are read from
the store every ``stats_every_s`` (fleet-wide: every replica shows the same queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aios.config import ReviewApiSettings, ReviewModelConfig, describe_validation
from aios.errors import AiosError, InvalidInput, NotFound
from aios.reviewqueue import Item, claim, decide, release
from aios.reviewstore import GateRevision, ReviewStore, Stats
from gateway.admin import parse
from gateway.auth import Principal

READ, DECIDE, ADMIN = "review:read", "review:decide", "review:admin"
# Without it a reviewer sees, claims and decides only their own tenant's items.
ALL_TENANTS = "review:all-tenants"
STATES = ("pending", "claimed", "decided")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
DECISION_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400)


class DecideBody(BaseModel):
    """POST /admin/reviews/{id}/decision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: str
    reason: str = Field("", max_length=2000)
    value: dict[str, list[float]] | None = None


class ClaimBody(BaseModel):
    """POST /admin/reviews/{id}/claim."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lease_s: float | None = Field(None, gt=0, le=86400)


class GatesBody(BaseModel):
    """PUT /admin/reviews/gates/{model}."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_revision: int = Field(ge=0)
    settings: dict[str, Any]
    reason: str = Field("", max_length=1000)


def parse_listing(params: Mapping[str, str]) -> tuple[str | None, str | None, str | None, int]:
    """(state, gate, model, limit) of a listing's query; InvalidInput naming the bad one."""
    unknown = set(params) - {"state", "gate", "model", "limit"}
    if unknown:
        raise InvalidInput(f"{sorted(unknown)[0]}: unknown parameter (state, gate, model, "
                           "limit)")
    state = params.get("state") or None
    if state is not None and state not in STATES:
        raise InvalidInput(f"state: must be one of {', '.join(STATES)}, got {state!r}")
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= MAX_LIMIT:
            raise InvalidInput(f"limit: must be an integer between 1 and {MAX_LIMIT}")
        limit = int(raw)
    return state, params.get("gate") or None, params.get("model") or None, limit


def stats_json(stats: Stats, now_ns: int) -> dict[str, Any]:
    """The queue's figures: depth and oldest age per gate, decisions, override rate."""
    decided = sum(stats.decided_by_action.values())
    overrides = stats.decided_by_action.get("override", 0)
    seconds = np.asarray(stats.decision_seconds or [0.0])
    return {
        "open": dict(sorted(stats.open_by_gate.items())),
        "oldest_open_s": {g: round((now_ns - t) / 1e9, 3)
                          for g, t in sorted(stats.oldest_open_ns.items())},
        "decided": dict(sorted(stats.decided_by_action.items())),
        "override_rate": overrides / decided if decided else None,
        "time_to_decision_s": None if not stats.decision_seconds else {
            "p50": float(np.quantile(seconds, 0.5)), "p95": float(np.quantile(seconds, 0.95)),
            "mean": float(seconds.mean()), "decisions": len(stats.decision_seconds)},
    }


@dataclass(frozen=True)
class Reviewer:
    """Who is reviewing, and whose items they may see (None: every tenant's)."""

    subject: str
    tenant: str | None

    @classmethod
    def of(cls, principal: Principal) -> Reviewer:
        return cls(principal.subject,
                   None if principal.allows(ALL_TENANTS) else principal.tenant)

    def sees(self, item: Item) -> bool:
        return self.tenant is None or item.tenant == self.tenant


def _not_found(ident: str) -> NotFound:
    return NotFound(f"no review {ident!r} (nor one of a decision with that id)")


class ReviewApi:
    """Reads and decides review items, for both admin protocols. An item of a tenant the
    reviewer may not see is not found (its existence is not revealed)."""

    def __init__(self, settings: ReviewApiSettings, store: ReviewStore,
                 registry: CollectorRegistry) -> None:
        self._settings = settings
        self._store = store
        self._open = Gauge("aios_review_open", "Review items pending or claimed", ("gate",),
                           registry=registry)
        self._oldest = Gauge("aios_review_oldest_open_seconds",
                             "Age of the oldest open review item", ("gate",),
                             registry=registry)
        self._override_rate = Gauge("aios_review_override_ratio",
                                    "Decided reviews in which people overrode the model",
                                    registry=registry)
        self._decisions = Counter("aios_review_decisions", "Review decisions made here",
                                  ("action",), registry=registry)
        self._seconds = Histogram("aios_review_decision_seconds",
                                  "From queued to decided", buckets=DECISION_BUCKETS,
                                  registry=registry)

    async def listing(self, reviewer: Reviewer, params: Mapping[str, str]) -> dict[str, Any]:
        state, gate, model, limit = parse_listing(params)
        now = time.time_ns()
        items = await asyncio.to_thread(self._store.items, state, gate, model, limit, now,
                                        reviewer.tenant)
        return {"reviews": [i.to_json(now) for i in items], "count": len(items)}

    async def item(self, reviewer: Reviewer, ident: str) -> dict[str, Any]:
        """One item, by review id or by the decision id it is about."""
        now = time.time_ns()
        found = await asyncio.to_thread(self._store.get, ident)
        if found is None:
            by_decision = await asyncio.to_thread(self._store.by_decision, ident)
            found = by_decision[-1] if by_decision else None
        if found is None or not reviewer.sees(found):
            raise _not_found(ident)
        return found.to_json(now)

    async def _change(self, reviewer: Reviewer, ident: str,
                      step: Callable[[Item], Item]) -> Item:
        def seen(item: Item) -> Item:
            if not reviewer.sees(item):
                raise _not_found(ident)
            return step(item)

        return await asyncio.to_thread(self._store.change, ident, seen)

    async def claim(self, reviewer: Reviewer, ident: str, body: Any) -> dict[str, Any]:
        lease = parse(ClaimBody, body or {}).lease_s or self._settings.lease_s
        item = await self._change(reviewer, ident, lambda i: claim(
            i, reviewer.subject, time.time_ns(), lease))
        return item.to_json(time.time_ns())

    async def release(self, reviewer: Reviewer, ident: str) -> dict[str, Any]:
        item = await self._change(reviewer, ident, lambda i: release(
            i, reviewer.subject, time.time_ns()))
        return item.to_json(time.time_ns())

    async def decide(self, reviewer: Reviewer, ident: str, body: Any) -> dict[str, Any]:
        asked = parse(DecideBody, body)
        item = await self._change(reviewer, ident, lambda i: decide(
            i, reviewer.subject, time.time_ns(), asked.action, asked.reason, asked.value))
        self._decisions.labels(asked.action).inc()
        if item.state == "decided":
            self._seconds.observe((item.decided_ns - item.queued_ns) / 1e9)
        return item.to_json(time.time_ns())

    async def stats(self) -> dict[str, Any]:
        stats = await asyncio.to_thread(self._store.stats, time.time_ns())
        return stats_json(stats, time.time_ns())

    async def gates(self, model: str) -> dict[str, Any]:
        found = await asyncio.to_thread(self._store.gates, model)
        if found is None:
            return {"model": model, "revision": 0, "settings": None,
                    "note": "no change through this API: the sidecars' configured gates "
                            "(sidecar.review.models) are in force"}
        return found.to_json()

    async def set_gates(self, who: str, model: str, body: Any) -> dict[str, Any]:
        asked = parse(GatesBody, body)
        try:  # not strict: YAML and JSON lists stand for the config's tuples
            settings = ReviewModelConfig.model_validate(asked.settings)
        except ValidationError as exc:
            raise InvalidInput("settings." + describe_validation(exc)) from exc
        change = GateRevision(model, asked.base_revision + 1,
                              settings.model_dump(mode="json", exclude_defaults=True), who,
                              asked.reason, time.time_ns())
        await asyncio.to_thread(self._store.set_gates, change, asked.base_revision)
        return change.to_json()

    async def refresh_metrics(self) -> None:
        """The queue's figures, as the gauges show them, read from the store."""
        stats = await asyncio.to_thread(self._store.stats, time.time_ns())
        now = time.time_ns()
        self._open.clear()
        self._oldest.clear()
        for gate, count in stats.open_by_gate.items():
            self._open.labels(gate).set(count)
            self._oldest.labels(gate).set((now - stats.oldest_open_ns[gate]) / 1e9)
        decided = sum(stats.decided_by_action.values())
        self._override_rate.set(stats.decided_by_action.get("override", 0) / decided
                                if decided else 0.0)

    async def metrics_loop(self) -> None:
        while True:
            # The store is down: the gauges keep their last figures.
            with contextlib.suppress(AiosError):
                await self.refresh_metrics()
            await asyncio.sleep(self._settings.stats_every_s)
