"""Sequence affinity: every request of one sequence (model, `sequence_id`) goes to the
target its first request went to, for the life of the sequence, whatever the weights do
meanwhile; its state lives on that backend's Triton.

A sequence is held in a map with a sliding expiry of the model's own idle timeout
(Triton's `sequence_batching.max_sequence_idle_microseconds`, read from the backend),
released by `sequence_end`. The map is in-process, or in Redis with the Redis routing
store so that every replica sends a sequence to the same place. A held target that is
ejected, or no longer in the table, fails the request (503 / 409) instead of moving the
sequence: another backend would not know it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aios.errors import InvalidInput, NotReady
from aios.plane import model_path
from aios.upstream import HttpUpstream

SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
# Triton's default idle timeout, when a model's config does not say.
TRITON_DEFAULT_IDLE_S = 1.0
# Held sequences in one replica's map, at most (the oldest expired go first).
MAX_LOCAL_SEQUENCES = 100_000
MAX_SEQUENCE_ID_CHARS = 128
IDLE_REFRESH_S = 60.0


@dataclass(frozen=True, slots=True)
class SequenceCall:
    """A request's place in its sequence, as the caller gave it."""

    id: str
    start: bool
    end: bool


def sequence_of(parameters: Mapping[str, Any]) -> SequenceCall | None:
    """The sequence a request belongs to (None: none, or id 0 / "" as Triton reads it);
    InvalidInput for a malformed one."""
    if "sequence_id" not in parameters:
        for flag in ("sequence_start", "sequence_end"):
            if flag in parameters:
                raise InvalidInput(f"parameter '{flag}' needs a 'sequence_id'")
        return None
    raw = parameters["sequence_id"]
    if isinstance(raw, bool) or not isinstance(raw, int | str) or (
            isinstance(raw, int) and raw < 0) or (
            isinstance(raw, str) and len(raw) > MAX_SEQUENCE_ID_CHARS):
        raise InvalidInput("parameter 'sequence_id' must be a non-negative integer or a "
                           f"string of at most {MAX_SEQUENCE_ID_CHARS} characters; got "
                           f"{raw!r}")
    flags = []
    for flag in ("sequence_start", "sequence_end"):
        value = parameters.get(flag, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter '{flag}' must be true or false; got {value!r}")
        flags.append(value)
    if raw in (0, ""):
        return None
    return SequenceCall(str(raw), flags[0], flags[1])


def grpc_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelInferRequest's sequence parameters as plain values (InferParameter's set
    field)."""
    out = {}
    for name in SEQUENCE_PARAMETERS:
        if name in parameters:
            kind = parameters[name].WhichOneof("parameter_choice")
            out[name] = getattr(parameters[name], kind) if kind else None
    return out


@dataclass(frozen=True, slots=True)
class Held:
    """Where a sequence is held, and this request's position in it (1: its first)."""

    target: str
    position: int


class SequenceMap(Protocol):
    """Where sequences are held."""

    async def held(self, model: str, sequence: str, idle_s: float) -> Held | None:
        """The sequence's target (its expiry renewed, its position counted), if held."""
        ...

    async def hold(self, model: str, sequence: str, target: str, idle_s: float) -> Held:
        """Hold a (re)started sequence on ``target``."""
        ...

    async def release(self, model: str, sequence: str) -> None:
        ...


class LocalSequences:
    """One replica's sequences, in a dict with expiries."""

    def __init__(self, limit: int = MAX_LOCAL_SEQUENCES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[tuple[str, str], tuple[str, int, float]] = {}
        self._limit = limit
        self._clock = clock

    async def held(self, model: str, sequence: str, idle_s: float) -> Held | None:
        found = self._held.get((model, sequence))
        now = self._clock()
        if found is None or found[2] <= now:
            self._held.pop((model, sequence), None)
            return None
        target, position, _ = found
        self._held[(model, sequence)] = (target, position + 1, now + idle_s)
        return Held(target, position + 1)

    async def hold(self, model: str, sequence: str, target: str, idle_s: float) -> Held:
        now = self._clock()
        if len(self._held) >= self._limit:
            for key in [k for k, (_, _, until) in self._held.items() if until <= now]:
                del self._held[key]
            if len(self._held) >= self._limit:
                raise NotReady(f"{self._limit} sequences are open on this gateway: end some "
                               "(sequence_end) or let them idle out")
        self._held[(model, sequence)] = (target, 1, now + idle_s)
        return Held(target, 1)

    async def release(self, model: str, sequence: str) -> None:
        self._held.pop((model, sequence), None)


# The target and the position, counted and the expiry renewed in one step.
_HELD = """
local target = redis.call('HGET', KEYS[1], 't')
if not target then return false end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {target, n}
"""


class RedisSequences:
    """Sequences in Redis (`<prefix>seq:<model>:<id>`, a hash of target and count), shared
    by every replica."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix + "seq:"
        self._script = client.register_script(_HELD)

    def _key(self, model: str, sequence: str) -> str:
        return f"{self._prefix}{model}:{sequence}"

    async def held(self, model: str, sequence: str, idle_s: float) -> Held | None:
        try:
            found = await self._script(keys=[self._key(model, sequence)],
                                       args=[int(idle_s * 1000)])
        except (RedisError, OSError) as exc:
            raise NotReady(f"sequence affinity: Redis unreachable ({exc})") from exc
        if not found:
            return None
        target, position = found
        return Held(target.decode() if isinstance(target, bytes) else str(target),
                    int(position))

    async def hold(self, model: str, sequence: str, target: str, idle_s: float) -> Held:
        key = self._key(model, sequence)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"t": target, "n": 1})
                pipe.pexpire(key, int(idle_s * 1000))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise NotReady(f"sequence affinity: Redis unreachable ({exc})") from exc
        return Held(target, 1)

    async def release(self, model: str, sequence: str) -> None:
        try:
            await self._redis.delete(self._key(model, sequence))
        except (RedisError, OSError) as exc:
            raise NotReady(f"sequence affinity: Redis unreachable ({exc})") from exc


class IdleTimeouts:
    """Each model's sequence idle timeout, read from a backend's model config (cached)."""

    def __init__(self, http: Mapping[str, HttpUpstream],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._http = http
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, float]] = {}

    async def idle_s(self, backend: str, model: str) -> float:
        known = self._known.get((backend, model))
        now = self._clock()
        if known is not None and now - known[1] < IDLE_REFRESH_S:
            return known[0]
        idle = TRITON_DEFAULT_IDLE_S
        reply = await self._http[backend].request("GET", model_path(model, "", "/config"),
                                                  b"", ())
        if reply.status == 200:
            try:
                micros = json.loads(reply.body).get("sequence_batching", {}).get(
                    "max_sequence_idle_microseconds")
                idle = int(micros) / 1e6 if micros else TRITON_DEFAULT_IDLE_S
            except (ValueError, TypeError, AttributeError):
                pass
        self._known[(backend, model)] = (idle, now)
        return idle
