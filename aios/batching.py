"""Coalescing concurrent infer calls into one request to the next hop.

Each hop forwards calls as they come, so under load the next hop sees them one at a time
and pays a whole exchange for each: an HTTP round trip, a wake-up, and at Triton a
Python-backend round trip. Calls for one key (same next hop, model version and input
layout) that arrive in the same event-loop turn, or while the key already has
``max_in_flight`` requests out, go together as one request; the answer is cut back into
one reply per call. Nothing waits for company: a call alone in its turn with nothing
out goes as it came, bytes unchanged.

How a merged request looks is the `Merger`'s, given to the coalescer when it is made:
the sidecar merges tensors into one Triton request (`sidecar.batching`), the gateway wraps
calls in an envelope for its sidecar (`gateway.batching`). `together` returns None when
nothing was done, and then every call is sent on its own; it raises an AiosError when the
hop failed, and every call gets it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aios.errors import AiosError
from aios.kserve import InferHeader
from aios.metrics import LoopHistogram
from aios.tasks import Tasks
from aios.tensors import Tensors
from aios.upstream import HttpReply, HttpUpstream

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)
Q = TypeVar("Q", bound=Hashable)

# How long an answer about the next hop (a model's config, whether it is a sidecar) is
# trusted before it is asked again.
ANSWER_TTL_S = 10.0

# Datatypes whose JSON values can be merged (orjson writes these from numpy; FP16 and
# BYTES calls go alone).
MERGEABLE_DATATYPES = frozenset({
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP32", "FP64",
})
CALLS_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
JSON_HEADERS = {"content-type": "application/json"}

# ((input name, datatype, shape after the batch dim), ...)
Layout = tuple[tuple[str, str, tuple[int, ...]], ...]


def input_layout(header: InferHeader, content_headers: Mapping[str, str]) -> Layout | None:
    """The input layout under which a call may go with others, or None if it must go
    alone: binary or compressed bodies, parameters, requested outputs, a non-string id,
    uneven rows, datatypes that cannot be merged."""
    doc = header.doc
    if content_headers or not doc.keys() <= {"id", "inputs"}:
        return None
    if not isinstance(doc.get("id", ""), str):
        return None
    layout = []
    for tensor in doc["inputs"]:
        shape = tensor["shape"]
        # Every input must carry the same rows, as Triton requires of a batch.
        if (tensor.get("parameters") or not shape or shape[0] != header.batch
                or shape[0] < 1 or tensor["datatype"] not in MERGEABLE_DATATYPES):
            return None
        layout.append((tensor["name"], tensor["datatype"], tuple(shape[1:])))
    return tuple(layout)


def content_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers that make a body more than plain JSON (binary tensors, compression)."""
    return {k: v for k, v in headers
            if k in ("inference-header-content-length", "content-encoding")}


@dataclass(slots=True)
class Waiting:
    """A call waiting for its batch to be sent: what sending it alone takes, its rows, and
    for the sidecar its decoded inputs."""

    path: str
    body: bytes
    headers: list[tuple[str, str]]
    extra: Mapping[str, str] | None
    timeout_s: float | None
    rows: int
    request_id: str
    inputs: Tensors
    reply: asyncio.Future[HttpReply]


class _Batch(Generic[K]):
    # A plain class: mypyc cannot compile a generic dataclass.
    __slots__ = ("calls", "due", "key", "rows")

    def __init__(self, key: K) -> None:
        self.key = key
        self.calls: list[Waiting] = []
        self.rows = 0
        self.due = False  # its loop turn is over; it waits for a request to come back


class Merger(Protocol[K_contra]):
    """How calls of one key go to the next hop as one request."""

    def rows(self, key: K_contra) -> int:
        """Rows one merged request for ``key`` may hold (0: its calls are not merged)."""
        ...

    async def together(self, key: K_contra, calls: list[Waiting]) -> list[HttpReply] | None:
        """Send ``calls`` as one request; their replies in order, or None if the next hop
        did nothing with it (then each is sent alone)."""
        ...


class Coalescer(Generic[K]):
    """Forwards infer calls to one next hop, merging those of one key that meet."""

    def __init__(self, http: HttpUpstream, merger: Merger[K], max_in_flight: int,
                 calls_per_request: LoopHistogram, tasks: Tasks) -> None:
        self._http = http
        self._merger = merger
        self._max_in_flight = max_in_flight
        self._calls_per_request = calls_per_request
        self._open: dict[K, _Batch[K]] = {}
        self._in_flight: dict[K, int] = {}
        self._tasks = tasks

    async def forward(self, key: K | None, path: str, body: bytes,
                      headers: list[tuple[str, str]], extra: Mapping[str, str] | None,
                      timeout_s: float | None, rows: int, request_id: str = "",
                      inputs: Tensors | None = None) -> HttpReply:
        """Send one infer call, with others of its key where they meet."""
        limit = self._merger.rows(key) if key is not None else 0
        if key is None or rows > limit:
            return await self._http.request("POST", path, body, headers, extra, timeout_s)
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > limit:
            self._send(self._open.pop(key))
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(key)
            loop.call_soon(self._close, key, batch)
        waiting = Waiting(path, body, headers, extra, timeout_s, rows, request_id,
                          inputs or {}, loop.create_future())
        batch.calls.append(waiting)
        batch.rows += rows
        return await waiting.reply

    def _close(self, key: K, batch: _Batch[K]) -> None:
        """The loop turn that opened ``batch`` is over: send it, unless its key already
        has its share of requests out; then it goes when one comes back, with whatever
        joined it meanwhile."""
        if self._open.get(key) is not batch:
            return
        if self._in_flight.get(key, 0) >= self._max_in_flight:
            batch.due = True
            return
        del self._open[key]
        self._send(batch)

    def _send(self, batch: _Batch[K]) -> None:
        self._in_flight[batch.key] = self._in_flight.get(batch.key, 0) + 1
        self._tasks.spawn(self._run(batch))

    async def _run(self, batch: _Batch[K]) -> None:
        live = [c for c in batch.calls if not c.reply.done()]  # a cancelled caller left
        try:
            if len(live) == 1:
                await self._alone(live[0])
            elif live:
                await self._together(batch.key, live)
        except asyncio.CancelledError:
            for call in live:
                call.reply.cancel()
            raise
        finally:
            left = self._in_flight[batch.key] = self._in_flight[batch.key] - 1
            waiting = self._open.get(batch.key)
            if waiting is not None and waiting.due and left < self._max_in_flight:
                del self._open[batch.key]
                self._send(waiting)

    async def _alone(self, call: Waiting) -> None:
        self._calls_per_request.observe(1)
        try:
            reply = await self._http.request("POST", call.path, call.body, call.headers,
                                             call.extra, call.timeout_s)
        except AiosError as exc:
            _settle(call, exc)
        else:
            _settle(call, reply)

    async def _together(self, key: K, calls: list[Waiting]) -> None:
        try:
            replies = await self._merger.together(key, calls)
        except AiosError as exc:
            for call in calls:
                _settle(call, exc)
            return
        if replies is None:
            await asyncio.gather(*(self._alone(c) for c in calls))
            return
        self._calls_per_request.observe(len(calls))
        for call, reply in zip(calls, replies, strict=True):
            _settle(call, reply)


class Asked(Generic[Q]):
    """How many rows may merge, per question about the next hop, asked in the background
    and trusted for ANSWER_TTL_S: until the first answer, 0 (calls go alone meanwhile,
    never waiting for it); a stale answer stands while it is asked again."""

    def __init__(self, ask: Callable[[Q], Awaitable[int]], tasks: Tasks) -> None:
        self._ask = ask
        self._tasks = tasks
        self._answers: dict[Q, tuple[int, float]] = {}
        self._asking: set[Q] = set()

    def rows(self, question: Q) -> int:
        """The latest answer to ``question`` (0 if none yet)."""
        rows, until = self._answers.get(question, (0, 0.0))
        if until <= time.monotonic() and question not in self._asking:
            self._asking.add(question)
            self._tasks.spawn(self._refresh(question))
        return rows

    async def _refresh(self, question: Q) -> None:
        try:
            rows = await self._ask(question)
        finally:
            self._asking.discard(question)
        self._answers[question] = (max(rows, 0), time.monotonic() + ANSWER_TTL_S)


def _settle(call: Waiting, outcome: HttpReply | AiosError) -> None:
    if call.reply.done():
        return
    if isinstance(outcome, AiosError):
        call.reply.set_exception(outcome)
    else:
        call.reply.set_result(outcome)
