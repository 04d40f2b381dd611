"""Where routing tables live: a JSON file (embedded default) or Redis (shared by replicas).

Every change is committed against the revision it was based on (a stale one is a
Conflict) and recorded with who made it, when, why, and what it changed (`route_diff`:
the fields that differ, before and after, so a change to one weight of a large table
records one weight). Each store keeps the latest ``history_limit`` changes.
With Redis, a change is published and every replica also polls revisions, so a replica
that missed the message catches up within one poll interval.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aios.config import GatewaySettings, ModelRoute, RoutingSettings
from aios.errors import Conflict, NotReady
from aios.redisconf import RedisEndpoint
from gateway.proposals import Proposal, State
from gateway.routing import ModelTable, ShadowSpec, TargetSpec, rebalance

logger = logging.getLogger(__name__)

REDIS_CONNECT_TIMEOUT_S = 2.0
# Resolved proposals kept (the pending ones are all kept).
KEPT_PROPOSALS = 1000


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change of a model's routing table."""

    model: str
    revision: int
    who: str
    at: float
    action: str
    reason: str
    before: dict[str, Any] | None
    after: dict[str, Any]
    # A four-eyes model's change: who approved it (``who`` proposed it), why, and the
    # proposal it came from.
    approved_by: str = ""
    approval_reason: str = ""
    proposal_id: str = ""
    # A rollout's change: the rollout, its step, and the gate figures it went by.
    evidence: dict[str, Any] | None = None


def route_of(table: ModelTable) -> dict[str, Any]:
    """The table in the config / admin API shape (what `ModelRoute` validates)."""
    doc: dict[str, Any] = {
        "targets": {t.name: {k: v for k, v in (("backend", t.backend), ("version", t.version),
                                               ("weight", t.weight), ("timeout_s", t.timeout_s))
                             if v is not None}
                    for t in table.targets},
        "sticky": table.sticky,
        "shadow": None if table.shadow is None else asdict(table.shadow),
    }
    return doc


def table_from_route(model: str, route: ModelRoute, revision: int,
                     previous: ModelTable | None) -> ModelTable:
    """A table for ``route``, its slots rebalanced from ``previous`` (fewest keys moved)."""
    targets = tuple(TargetSpec(name, t.backend, t.version, t.weight, t.timeout_s)
                    for name, t in route.targets.items())
    shadow = None
    if route.shadow is not None:
        s = route.shadow
        shadow = ShadowSpec(s.backend, s.model or model, s.version, s.fraction, s.output,
                            s.threshold, s.timeout_s)
    segments = rebalance(previous.segments if previous else (), targets)
    return ModelTable(model, revision, targets, route.sticky, shadow, segments)


def _encode(table: ModelTable) -> dict[str, Any]:
    return {"model": table.model, "revision": table.revision, "route": route_of(table),
            "segments": [list(s) for s in table.segments]}


def _decode(doc: Mapping[str, Any]) -> ModelTable:
    table = table_from_route(doc["model"], ModelRoute.model_validate(doc["route"]),
                             int(doc["revision"]), None)
    segments = tuple((int(a), int(b), str(o)) for a, b, o in doc["segments"])
    return ModelTable(table.model, table.revision, table.targets, table.sticky, table.shadow,
                      segments)


class RouteStore(Protocol):
    """Persistence and change notification for routing tables."""

    async def load(self, seed: Mapping[str, ModelTable]) -> dict[str, ModelTable]:
        """The stored tables; ``seed`` fills in models the store does not know yet."""
        ...

    async def commit(self, table: ModelTable, base_revision: int, change: Change) -> None:
        """Store ``table`` if the stored revision is still ``base_revision``; else Conflict."""
        ...

    async def history(self, model: str | None, limit: int) -> list[Change]:
        """The latest changes, newest first."""
        ...

    async def watch(self, apply: Callable[[ModelTable], None]) -> None:
        """Call ``apply`` with every newer table another replica commits (runs until cancelled)."""
        ...

    async def propose(self, proposal: Proposal) -> None:
        """Keep a new four-eyes proposal (`gateway.proposals`)."""
        ...

    async def proposals(self) -> list[Proposal]:
        """The kept proposals, newest first."""
        ...

    async def resolve(self, proposal: Proposal, expected: State) -> None:
        """Store ``proposal`` (same id) if the kept one is still in state ``expected``;
        else Conflict saying what it is."""
        ...


class FileRouteStore:
    """Tables in a JSON file (written atomically), history in a JSON-lines file beside it,
    cut back to the latest ``history_limit`` changes once it holds a tenth more."""

    def __init__(self, path: Path, poll_interval_s: float = 0.5,
                 history_limit: int = 10_000) -> None:
        self._path = path
        self._poll_interval_s = poll_interval_s
        self._history = path.with_name(path.stem + "-history.jsonl")
        self._history_limit = history_limit
        self._history_lines: int | None = None  # counted on the first commit
        self._tables: dict[str, ModelTable] = {}
        self._proposals_path = path.with_name(path.stem + "-proposals.json")

    async def load(self, seed: Mapping[str, ModelTable]) -> dict[str, ModelTable]:
        if self._path.exists():
            docs = json.loads(self._path.read_text())
            self._tables = {m: _decode(d) for m, d in docs.items()}
        for model, table in seed.items():
            self._tables.setdefault(model, table)
        self._write()
        return dict(self._tables)

    def _write(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({m: _encode(t) for m, t in self._tables.items()}, indent=1))
        os.replace(tmp, self._path)

    async def commit(self, table: ModelTable, base_revision: int, change: Change) -> None:
        current = self._tables.get(table.model)
        stored = current.revision if current is not None else 0  # 0: a new model's table
        if stored != base_revision:
            raise Conflict(f"routing table of '{table.model}' is at revision {stored}, "
                           f"not {base_revision}")
        self._tables[table.model] = table
        self._write()
        await asyncio.to_thread(self._append, json.dumps(asdict(change)))

    def _lines(self) -> list[str]:
        try:
            return self._history.read_text().splitlines()
        except FileNotFoundError:
            return []

    def _append(self, line: str) -> None:
        if self._history_lines is None:
            self._history_lines = len(self._lines())
        with self._history.open("a") as out:
            out.write(line + "\n")
        self._history_lines += 1
        if self._history_lines > self._history_limit + max(1, self._history_limit // 10):
            kept = self._lines()[-self._history_limit:]
            tmp = self._history.with_suffix(".tmp")
            tmp.write_text("".join(f"{k}\n" for k in kept))
            os.replace(tmp, self._history)
            self._history_lines = len(kept)

    def _read_history(self, model: str | None, limit: int) -> list[Change]:
        changes = (Change(**json.loads(line)) for line in reversed(self._lines()))
        return list(itertools.islice(
            (c for c in changes if model is None or c.model == model), limit))

    async def history(self, model: str | None, limit: int) -> list[Change]:
        # Off the event loop: the file may hold history_limit changes.
        return await asyncio.to_thread(self._read_history, model, limit)

    async def watch(self, apply: Callable[[ModelTable], None]) -> None:
        # One gateway owns the file; a reader beside it (`aios envoy serve`) polls it.
        seen = self._mtime()
        while True:
            await asyncio.sleep(self._poll_interval_s)
            mtime = self._mtime()
            if mtime == seen:
                continue
            seen = mtime
            try:
                docs = json.loads(self._path.read_text())
            except (OSError, ValueError) as exc:  # replaced atomically; a read may still fail
                logger.warning("routing store: %s; retrying", exc)
                continue
            for model, doc in docs.items():
                known = self._tables.get(model)
                if known is None or int(doc["revision"]) > known.revision:
                    self._tables[model] = table = _decode(doc)
                    apply(table)

    def _mtime(self) -> int:
        try:
            return self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def _read_proposals(self) -> dict[str, Proposal]:
        try:
            docs = json.loads(self._proposals_path.read_text())
        except FileNotFoundError:
            return {}
        return {d["id"]: Proposal(**d) for d in docs}

    def _write_proposals(self, kept: dict[str, Proposal]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._proposals_path.with_suffix(".tmp")
        tmp.write_text(json.dumps([p.to_json() for p in kept.values()], indent=1))
        os.replace(tmp, self._proposals_path)

    async def propose(self, proposal: Proposal) -> None:
        kept = self._read_proposals()
        kept[proposal.id] = proposal
        self._write_proposals(pruned(kept))

    async def proposals(self) -> list[Proposal]:
        return newest_first(self._read_proposals().values())

    async def resolve(self, proposal: Proposal, expected: State) -> None:
        kept = self._read_proposals()
        current = kept.get(proposal.id)
        if current is None or current.state != expected:
            raise Conflict(f"proposal {proposal.id} is "
                           f"{'gone' if current is None else current.state}, not {expected}")
        kept[proposal.id] = proposal
        self._write_proposals(kept)


# KEYS: table key, revisions hash, history list. ARGV: model, base revision, table JSON,
# change JSON, history limit, channel. Checks the revision and commits in one step.
_COMMIT = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then return current end
local doc = cjson.decode(ARGV[3])
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], doc['revision'])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('PUBLISH', ARGV[6], ARGV[1])
return -1
"""


# KEYS: proposals hash. ARGV: id, expected state, new JSON. 'ok', or the kept state
# ('' if none): the compare-and-set of a proposal's state.
_RESOLVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return '' end
local state = cjson.decode(raw)['state']
if state ~= ARGV[2] then return state end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 'ok'
"""


class RedisRouteStore:
    """Tables, revisions and history in Redis; changes announced on a channel."""

    def __init__(self, client: aioredis.Redis, settings: RoutingSettings) -> None:
        self._client = client
        self._settings = settings
        p = settings.key_prefix
        self._revisions, self._history_key, self._channel = f"{p}revisions", f"{p}history", \
            f"{p}changed"
        self._commit = client.register_script(_COMMIT)
        self._resolve = client.register_script(_RESOLVE)
        self._proposals_key = f"{p}proposals"
        self._known: dict[str, int] = {}

    def _table_key(self, model: str) -> str:
        return f"{self._settings.key_prefix}table:{model}"

    async def load(self, seed: Mapping[str, ModelTable]) -> dict[str, ModelTable]:
        try:
            for model, table in seed.items():
                # First replica up seeds the table; the others take what is there.
                if await self._client.set(self._table_key(model), json.dumps(_encode(table)),
                                          nx=True):
                    await self._client.hsetnx(self._revisions, model, table.revision)
            tables = {}
            for model in seed:
                raw = await self._client.get(self._table_key(model))
                if raw is None:
                    raise NotReady(f"routing table of '{model}' vanished while loading")
                tables[model] = _decode(json.loads(raw))
                self._known[model] = tables[model].revision
            return tables
        except RedisError as exc:
            raise NotReady(f"routing store unavailable: {exc}") from exc

    async def commit(self, table: ModelTable, base_revision: int, change: Change) -> None:
        try:
            result = await self._commit(
                keys=[self._table_key(table.model), self._revisions, self._history_key],
                args=[table.model, base_revision, json.dumps(_encode(table)),
                      json.dumps(asdict(change)), self._settings.history_limit, self._channel])
        except RedisError as exc:
            raise NotReady(f"routing store unavailable: {exc}") from exc
        if int(result) != -1:
            raise Conflict(f"routing table of '{table.model}' is at revision {int(result)}, "
                           f"not {base_revision}")
        self._known[table.model] = table.revision

    async def history(self, model: str | None, limit: int) -> list[Change]:
        try:
            raw = await self._client.lrange(self._history_key, 0, self._settings.history_limit)
        except RedisError as exc:
            raise NotReady(f"routing store unavailable: {exc}") from exc
        changes = [Change(**json.loads(r)) for r in raw]
        return [c for c in changes if model is None or c.model == model][:limit]

    async def propose(self, proposal: Proposal) -> None:
        try:
            await self._client.hset(self._proposals_key, proposal.id,
                                    json.dumps(proposal.to_json()))
            kept = {p.id: p for p in await self.proposals()}
            gone = set(kept) - set(pruned(dict(kept)))
            if gone:
                await self._client.hdel(self._proposals_key, *gone)
        except RedisError as exc:
            raise NotReady(f"routing store unavailable: {exc}") from exc

    async def proposals(self) -> list[Proposal]:
        try:
            raw = await self._client.hvals(self._proposals_key)
        except RedisError as exc:
            raise NotReady(f"routing store unavailable: {exc}") from exc
        return newest_first(Proposal(**json.loads(r)) for r in raw)

    async def resolve(self, proposal: Proposal, expected: State) -> None:
        try:
            result = await self._resolve(keys=[self._proposals_key], args=[
                proposal.id, expected, json.dumps(proposal.to_json())])
        except RedisError as exc:
            raise NotReady(f"routing store unavailable: {exc}") from exc
        state = result.decode() if isinstance(result, bytes) else str(result)
        if state != "ok":
            raise Conflict(f"proposal {proposal.id} is {state or 'gone'}, not {expected}")

    async def _catch_up(self, apply: Callable[[ModelTable], None]) -> None:
        revisions = await self._client.hgetall(self._revisions)
        for key, value in revisions.items():
            model = key.decode() if isinstance(key, bytes) else str(key)
            if int(value) > self._known.get(model, 0):
                raw = await self._client.get(self._table_key(model))
                if raw is not None:
                    table = _decode(json.loads(raw))
                    self._known[model] = table.revision
                    apply(table)

    async def watch(self, apply: Callable[[ModelTable], None]) -> None:
        """Apply newer tables as they are announced, and poll in case a message is lost."""
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                try:
                    # A message or the poll interval, whichever first; then catch up.
                    await pubsub.get_message(ignore_subscribe_messages=True,
                                             timeout=self._settings.poll_interval_s)
                    await self._catch_up(apply)
                except (RedisError, OSError) as exc:
                    logger.warning("routing store: %s; retrying", exc)
                    await asyncio.sleep(self._settings.poll_interval_s)
        finally:
            await pubsub.aclose()


def route_diff(before: Any, after: Any) -> tuple[Any, Any]:
    """What differs between two route documents, as (before, after) holding only the
    fields that changed (None on the side that lacks one); equal documents give ({}, {})."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return before, after
    was, now = {}, {}
    for key in sorted(set(before) | set(after), key=str):
        b, a = before.get(key), after.get(key)
        if b != a:
            was[key], now[key] = route_diff(b, a)
    return was, now


def new_change(model: str, revision: int, who: str, action: str, reason: str,
               before: ModelTable | None, after: ModelTable) -> Change:
    """A change record for the history: the whole table when it is created, else what
    changed."""
    if before is None:
        return Change(model, revision, who, time.time(), action, reason, None, route_of(after))
    was, now = route_diff(route_of(before), route_of(after))
    return Change(model, revision, who, time.time(), action, reason, was, now)


def pruned(kept: dict[str, Proposal]) -> dict[str, Proposal]:
    """``kept`` without the oldest resolved proposals beyond KEPT_PROPOSALS."""
    resolved = [p for p in newest_first(kept.values()) if p.state != "pending"]
    for old in resolved[KEPT_PROPOSALS:]:
        del kept[old.id]
    return kept


def newest_first(proposals: Iterable[Proposal]) -> list[Proposal]:
    return sorted(proposals, key=lambda p: p.at, reverse=True)


def usable_tables(stored: Mapping[str, ModelTable], seed: Mapping[str, ModelTable],
                  backends: Mapping[str, Any]) -> dict[str, ModelTable]:
    """Stored tables, except those naming a backend the config no longer has."""
    tables = dict(stored)
    for model, table in stored.items():
        named = {t.backend for t in table.targets} | (
            {table.shadow.backend} if table.shadow else set())
        if not named <= set(backends):
            logger.warning("stored routing table of %s names unknown backends %s; using the "
                           "configured one", model, sorted(named - set(backends)))
            if model in seed:
                tables[model] = seed[model]
            else:
                del tables[model]
    return tables


async def open_route_store(settings: GatewaySettings, stack: AsyncExitStack) -> RouteStore:
    """The configured store; a Redis client is closed with ``stack``."""
    if settings.routing.store == "file":
        return FileRouteStore(settings.routing.state_file, settings.routing.poll_interval_s,
                              settings.routing.history_limit)
    # A client of its own: pub/sub waits, and must not share the quota's short timeouts.
    client = RedisEndpoint.from_url(settings.routing.redis_url).client(
        None, REDIS_CONNECT_TIMEOUT_S)
    stack.push_async_callback(client.aclose)
    return RedisRouteStore(client, settings.routing)


async def load_tables(store: RouteStore, settings: GatewaySettings) -> dict[str, ModelTable]:
    """The stored tables, seeded from the config for models the store does not know."""
    seed = {m: table_from_route(m, r, 1, None) for m, r in settings.models.items()}
    return usable_tables(await store.load(seed), seed, settings.backends)
