"""Routing tables: weighted targets, sticky assignment, version pins, shadows. Pure logic.

A model's traffic is a line of `SLOTS` slots divided into segments, each owned by one
target in proportion to its weight. A sticky key hashes to a fixed slot; without one a
request draws a random slot. When weights change, `rebalance` moves the fewest slots,
and only from targets that lose weight to targets that gain it: a key stays where it
was unless its slot changed hands, and then only from a loser to a gainer.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aios.errors import InvalidInput, NotFound, NotReady

SLOTS = 1 << 20
# Sticky keys whose slot is remembered (bounded: a key can come from a client header).
STICKY_CACHE_SIZE = 65536

Segment = tuple[int, int, str]  # [start, end) owned by a target


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A named target: a backend and the model version to ask it for."""

    name: str
    backend: str
    version: str
    weight: int
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """Mirror a fraction of traffic to a candidate and compare its answers."""

    backend: str
    model: str
    version: str
    fraction: float
    # For a classifier: compare decisions at this threshold on this output.
    output: str = ""
    threshold: float | None = None
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ModelTable:
    """The routing table of one model, at one revision."""

    model: str
    revision: int
    targets: tuple[TargetSpec, ...]
    sticky: str = "none"  # none | tenant | sub | header:<name>
    shadow: ShadowSpec | None = None
    segments: tuple[Segment, ...] = field(default=(), compare=False)

    def target(self, name: str) -> TargetSpec:
        """The target called ``name``."""
        for t in self.targets:
            if t.name == name:
                return t
        raise InvalidInput(f"model '{self.model}' has no target '{name}'")


def slot_quotas(targets: Sequence[TargetSpec]) -> dict[str, int]:
    """Slots per target in proportion to weight, summing to SLOTS (largest remainder)."""
    total = sum(t.weight for t in targets)
    if total <= 0:
        raise InvalidInput("targets: at least one weight must be positive")
    exact = {t.name: t.weight * SLOTS / total for t in targets}
    quotas = {name: int(v) for name, v in exact.items()}
    short = SLOTS - sum(quotas.values())
    for name in sorted(exact, key=lambda n: (quotas[n] - exact[n], n))[:short]:
        quotas[name] += 1
    return quotas


def _merge(segments: list[Segment]) -> tuple[Segment, ...]:
    merged: list[Segment] = []
    for start, end, owner in sorted(segments):
        if end <= start:
            continue
        if merged and merged[-1][2] == owner and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end, owner)
        else:
            merged.append((start, end, owner))
    return tuple(merged)


def rebalance(segments: Sequence[Segment], targets: Sequence[TargetSpec]) -> tuple[Segment, ...]:
    """Segments for ``targets``' weights, moving as few slots as possible from ``segments``.

    Slots move only from targets over their new quota (or removed) to targets under it.
    """
    quotas = slot_quotas(targets)
    kept: list[Segment] = []
    free: list[tuple[int, int]] = []
    owned = dict.fromkeys(quotas, 0)
    # Walk each owner's segments from the start; whatever is beyond its quota is freed.
    for start, end, owner in sorted(segments):
        room = quotas.get(owner, 0) - owned.get(owner, 0)
        keep = max(0, min(end - start, room))
        if keep:
            kept.append((start, start + keep, owner))
            owned[owner] += keep
        if start + keep < end:
            free.append((start + keep, end))
    if not segments:
        free = [(0, SLOTS)]
    for target in targets:
        need = quotas[target.name] - owned[target.name]
        while need > 0:
            start, end = free.pop(0)
            take = min(need, end - start)
            kept.append((start, start + take, target.name))
            need -= take
            if start + take < end:
                free.insert(0, (start + take, end))
    return _merge(kept)


@functools.lru_cache(maxsize=STICKY_CACHE_SIZE)
def sticky_slot(model: str, key: str) -> int:
    """A stable slot for ``key`` of ``model`` (the same on every replica and restart).
    Cached: the same tenants call again and again, and hashing is a hot-path cost."""
    digest = hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SLOTS


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call goes, and why (for the response headers and the decision log)."""

    target: str
    backend: str
    version: str
    revision: int
    timeout_s: float | None
    reason: str = "weights"  # weights | sticky | pinned | fallback | breaker | sequence
    weights: str = ""  # the table's weights in force: "name=weight,..."
    sequence: str = ""  # the sequence the call belongs to, and its place in it
    position: int = 0


class Router:
    """Picks a target per call from the current tables; knows which targets are ejected."""

    def __init__(self, tables: Mapping[str, ModelTable],
                 rng: Callable[[], float] = random.random) -> None:
        self._tables: dict[str, ModelTable] = {}
        self._starts: dict[str, list[int]] = {}
        self._weights: dict[str, str] = {}
        self._rng = rng
        for table in tables.values():
            self.install(table)

    def install(self, table: ModelTable) -> None:
        """Use ``table`` (with its segments) from now on."""
        self._tables[table.model] = table
        self._starts[table.model] = [s for s, _, _ in table.segments]
        self._weights[table.model] = ",".join(f"{t.name}={t.weight}" for t in table.targets)

    def shadow_of(self, model: str) -> ShadowSpec | None:
        """The shadow ``model``'s table has now, if any."""
        table = self._tables.get(model)
        return table.shadow if table is not None else None

    def table(self, model: str) -> ModelTable:
        """The current table of ``model``; NotFound if there is none."""
        table = self._tables.get(model)
        if table is None:
            raise NotFound(f"Request for unknown model: '{model}' is not found")
        return table

    def tables(self) -> dict[str, ModelTable]:
        """All current tables."""
        return dict(self._tables)

    def resolve(self, model: str, pinned: str, key: str | None,
                ejected: frozenset[str] = frozenset()) -> Route:
        """The route for a call; ``key`` is the sticky key (None: draw at random)."""
        table = self.table(model)
        weights = self._weights[model]
        if pinned:
            # A client-pinned version bypasses the split if a target serves it.
            pinned_targets = [t for t in table.targets if t.version == pinned]
            chosen = pinned_targets[0] if pinned_targets else max(
                table.targets, key=lambda t: t.weight)
            return Route(chosen.name, chosen.backend, pinned, table.revision, chosen.timeout_s,
                         "pinned", weights)
        slot = sticky_slot(model, key) if key is not None else int(self._rng() * SLOTS)
        starts = self._starts[model]
        owner = table.segments[bisect.bisect_right(starts, slot) - 1][2]
        reason = "weights" if key is None else "sticky"
        if owner in ejected:
            owner, reason = self._fallback(table, slot, ejected), "breaker"
        t = table.target(owner)
        return Route(t.name, t.backend, t.version, table.revision, t.timeout_s, reason, weights)

    def route_to(self, model: str, target: str) -> Route | None:
        """The route to ``target`` of ``model``'s current table (None: it has none)."""
        table = self.table(model)
        for t in table.targets:
            if t.name == target:
                return Route(t.name, t.backend, t.version, table.revision, t.timeout_s,
                             "sequence", self._weights[model])
        return None

    @staticmethod
    def _fallback(table: ModelTable, slot: int, ejected: frozenset[str]) -> str:
        # The ejected target's share goes to the rest, in proportion to their weights.
        live = [t for t in table.targets if t.name not in ejected and t.weight > 0]
        if not live:
            raise NotReady(f"every target of model '{table.model}' is ejected as failing")
        total = sum(t.weight for t in live)
        point = slot * total // SLOTS
        for t in live:
            if point < t.weight:
                return t.name
            point -= t.weight
        return live[-1].name
