"""Where rollouts live, who drives them, and the counters their gates read: a JSON file
beside the routing tables (one gateway), or Redis (replicas).

Each model has one current rollout; a new one may replace it only once it is over (the
old one moves to the finished list). Every save compares and sets on the rollout's
``seq``, so two replicas never both move a rollout. With Redis, one replica at a time
holds a model's lease (renewed each interval, lost when it stops renewing) and drives;
every replica publishes its per-target counters, and the driver sums them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aios.config import GatewaySettings
from aios.errors import Conflict, NotReady
from aios.redisconf import RedisEndpoint
from gateway.rollout import Counters, Rollout

# Finished rollouts kept.
KEPT_FINISHED = 200
# A replica's published counters are dropped after this long unrefreshed (it is gone).
COUNTERS_TTL_S = 86_400
REDIS_TIMEOUT_S = 2.0


class RolloutStore(Protocol):
    """Persistence, leases and shared counters for rollouts."""

    async def rollouts(self) -> list[Rollout]:
        """Each model's current rollout, then the finished ones, newest first."""
        ...

    async def save(self, rollout: Rollout, expected_seq: int) -> Rollout:
        """Store ``rollout`` with seq ``expected_seq + 1`` if the stored one is still at
        ``expected_seq`` (0: a new one, where the model has none active); else Conflict."""
        ...

    async def lease(self, model: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the right to drive ``model``'s rollout for ``ttl_s``."""
        ...

    async def publish(self, model: str, replica: str, counters: Mapping[str, Counters]
                      ) -> None:
        """This replica's cumulative counters for ``model``."""
        ...

    async def gathered(self, model: str) -> list[dict[str, Counters]]:
        """Every replica's last published counters for ``model``."""
        ...


def _check(current: Rollout | None, new: Rollout, expected_seq: int) -> None:
    if current is not None and current.id == new.id:
        if current.seq != expected_seq:
            raise Conflict(f"rollout {new.id} of '{new.model}' moved on (seq {current.seq}, "
                           f"not {expected_seq}): read it again")
    elif current is not None and current.active:
        raise Conflict(f"'{new.model}' has a rollout {current.state} ({current.id}): "
                       "abort it or let it finish first")
    elif expected_seq != 0:
        raise Conflict(f"rollout {new.id} of '{new.model}' is gone")


class FileRolloutStore:
    """Rollouts in a JSON file (written atomically); one gateway drives them all."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._counters: dict[str, dict[str, Counters]] = {}

    def _read(self) -> tuple[dict[str, Rollout], list[Rollout]]:
        try:
            doc = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}, []
        return ({m: Rollout.from_json(r) for m, r in doc["current"].items()},
                [Rollout.from_json(r) for r in doc["finished"]])

    def _write(self, current: dict[str, Rollout], finished: list[Rollout]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"current": {m: r.to_json() for m, r in current.items()},
                                   "finished": [r.to_json() for r in finished]}))
        os.replace(tmp, self._path)

    async def rollouts(self) -> list[Rollout]:
        current, finished = self._read()
        return [*sorted(current.values(), key=lambda r: r.at, reverse=True), *finished]

    async def save(self, rollout: Rollout, expected_seq: int) -> Rollout:
        current, finished = self._read()
        old = current.get(rollout.model)
        _check(old, rollout, expected_seq)
        if old is not None and old.id != rollout.id:
            finished = [old, *finished][:KEPT_FINISHED]
        saved = dataclasses.replace(rollout, seq=expected_seq + 1, updated_at=time.time())
        current[rollout.model] = saved
        self._write(current, finished)
        return saved

    async def lease(self, model: str, holder: str, ttl_s: float) -> bool:
        return True

    async def publish(self, model: str, replica: str, counters: Mapping[str, Counters]
                      ) -> None:
        self._counters[model] = dict(counters)

    async def gathered(self, model: str) -> list[dict[str, Counters]]:
        return [self._counters[model]] if model in self._counters else []


# KEYS: current hash, finished list. ARGV: model, id, expected seq, new JSON, kept - 1.
# 'ok', or why not: the compare-and-set of `_check`, in one step.
_SAVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local cur = cjson.decode(raw)
  if cur['id'] == ARGV[2] then
    if tonumber(cur['seq']) ~= tonumber(ARGV[3]) then return 'seq:' .. cur['seq'] end
  elseif cur['state'] == 'awaiting_approval' or cur['state'] == 'running'
      or cur['state'] == 'paused' then
    return 'active:' .. cur['state'] .. ':' .. cur['id']
  else
    redis.call('LPUSH', KEYS[2], raw)
    redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]))
  end
elseif tonumber(ARGV[3]) ~= 0 then
  return 'gone'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 'ok'
"""

# KEYS: lease. ARGV: holder, ttl ms. 1 if the holder has it now.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRolloutStore:
    """Rollouts, leases and every replica's counters in Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._current, self._finished = f"{prefix}rollouts", f"{prefix}rollouts:finished"
        self._prefix = prefix
        self._save = client.register_script(_SAVE)
        self._lease = client.register_script(_LEASE)

    async def rollouts(self) -> list[Rollout]:
        try:
            current = await self._client.hvals(self._current)
            finished = await self._client.lrange(self._finished, 0, KEPT_FINISHED - 1)
        except RedisError as exc:
            raise NotReady(f"rollout store unavailable: {exc}") from exc
        return [*sorted((Rollout.from_json(json.loads(r)) for r in current),
                        key=lambda r: r.at, reverse=True),
                *(Rollout.from_json(json.loads(r)) for r in finished)]

    async def save(self, rollout: Rollout, expected_seq: int) -> Rollout:
        saved = dataclasses.replace(rollout, seq=expected_seq + 1, updated_at=time.time())
        try:
            result = _text(await self._save(
                keys=[self._current, self._finished],
                args=[rollout.model, rollout.id, expected_seq, json.dumps(saved.to_json()),
                      KEPT_FINISHED - 1]))
        except RedisError as exc:
            raise NotReady(f"rollout store unavailable: {exc}") from exc
        if result == "ok":
            return saved
        if result.startswith("seq:"):
            raise Conflict(f"rollout {rollout.id} of '{rollout.model}' moved on (seq "
                           f"{result[4:]}, not {expected_seq}): read it again")
        if result.startswith("active:"):
            _, state, ident = result.split(":", 2)
            raise Conflict(f"'{rollout.model}' has a rollout {state} ({ident}): abort it "
                           "or let it finish first")
        raise Conflict(f"rollout {rollout.id} of '{rollout.model}' is gone")

    async def lease(self, model: str, holder: str, ttl_s: float) -> bool:
        try:
            return bool(await self._lease(keys=[f"{self._prefix}rollout-lease:{model}"],
                                          args=[holder, int(ttl_s * 1000)]))
        except RedisError as exc:
            raise NotReady(f"rollout store unavailable: {exc}") from exc

    async def publish(self, model: str, replica: str, counters: Mapping[str, Counters]
                      ) -> None:
        key = f"{self._prefix}rollout-counters:{model}"
        doc = json.dumps({"at": time.time(),
                          "counters": {k: c.to_json() for k, c in counters.items()}})
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hset(key, replica, doc)
                pipe.expire(key, COUNTERS_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            raise NotReady(f"rollout store unavailable: {exc}") from exc

    async def gathered(self, model: str) -> list[dict[str, Counters]]:
        try:
            raw = await self._client.hvals(f"{self._prefix}rollout-counters:{model}")
        except RedisError as exc:
            raise NotReady(f"rollout store unavailable: {exc}") from exc
        out = []
        for r in raw:
            doc = json.loads(r)
            if time.time() - float(doc["at"]) < COUNTERS_TTL_S:
                out.append({k: Counters.from_json(c) for k, c in doc["counters"].items()})
        return out


def open_rollout_store(settings: GatewaySettings, stack: AsyncExitStack) -> RolloutStore:
    """Beside the routing tables: the same file's folder, or the same Redis."""
    routing = settings.routing
    if routing.store == "file":
        return FileRolloutStore(routing.state_file.with_name(
            routing.state_file.stem + "-rollouts.json"))
    client = RedisEndpoint.from_url(routing.redis_url).client(REDIS_TIMEOUT_S, REDIS_TIMEOUT_S)
    stack.push_async_callback(client.aclose)
    return RedisRolloutStore(client, routing.key_prefix)
