"""Coalesce concurrent REST infer calls for one model version into one Triton request.

Triton's dynamic batcher can only merge requests it holds at the same time; the sidecar
forwards calls as they come, so under load Triton sees them one or two at a time and pays
a whole HTTP exchange and a Python-backend round trip for each row (measured: 445 µs per
request at one connection, 109 µs at sixteen). Calls that reach the sidecar in the same
event-loop turn, for the same model version, with the same input layout, are sent as one
request whose rows are theirs in order; the answer is cut back into one reply per call.
Nothing waits for company: a call alone in its turn goes as it came, bytes unchanged.

Only what Triton would batch is merged: a model whose config has ``max_batch_size > 0``
and ``dynamic_batching`` (rows are independent, as the dynamic batcher already assumes),
JSON calls without parameters or requested outputs, numeric inputs. If Triton refuses a
merged request, every call is sent again on its own, so each gets its own answer.

The merge and the split are pure functions; `Coalescer` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Histogram

from aios.errors import AiosError
from aios.kserve import InferHeader
from aios.tensors import Tensors
from aios.upstream import HttpReply, HttpUpstream

logger = logging.getLogger(__name__)

# Datatypes orjson writes straight from numpy (FP16 and BYTES calls go alone).
MERGEABLE_DATATYPES = frozenset({
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP32", "FP64",
})
# How long a model's batching answer (from its Triton config) is trusted.
CONFIG_TTL_S = 10.0
CALLS_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
JSON_HEADERS = {"content-type": "application/json"}

# (model, version, ((input name, datatype, shape after the batch dim), ...))
BatchKey = tuple[str, str, tuple[tuple[str, str, tuple[int, ...]], ...]]


def batch_key(model: str, version: str, header: InferHeader,
              content_headers: Mapping[str, str]) -> BatchKey | None:
    """Under which key a call may share a Triton request, or None if it must go alone."""
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
    return model, version, tuple(layout)


def merge_body(key: BatchKey, calls: Sequence[Tensors]) -> bytes:
    """One JSON infer request holding every call's rows, in order."""
    inputs = []
    for name, datatype, _ in key[2]:
        data = np.concatenate([c[name] for c in calls])
        inputs.append({"name": name, "datatype": datatype, "shape": list(data.shape),
                       "data": data.ravel()})
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


def split_reply(body: bytes, rows: Sequence[int], ids: Sequence[str]) -> list[bytes] | None:
    """Cut a merged JSON reply into one reply per call (``rows`` each, with its ``id``);
    None if the reply is not what a merged request should get back."""
    try:
        doc = orjson.loads(body)
        outputs = doc["outputs"]
        total = sum(rows)
        cuts = []
        for out in outputs:
            shape, data = out["shape"], out["data"]
            if not shape or shape[0] != total or len(data) % max(total, 1):
                return None
            cuts.append((out, len(data) // total if total else 0))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    common = {k: v for k, v in doc.items() if k not in ("id", "outputs")}
    replies, start = [], 0
    for n, request_id in zip(rows, ids, strict=True):
        parts = []
        for out, per_row in cuts:
            part = dict(out)
            part["shape"] = [n, *out["shape"][1:]]
            part["data"] = out["data"][start * per_row:(start + n) * per_row]
            parts.append(part)
        start += n
        one = {"id": request_id, **common} if request_id else dict(common)
        one["outputs"] = parts
        replies.append(orjson.dumps(one))
    return replies


@dataclass(slots=True)
class _Waiting:
    """A call waiting for its turn's batch to be sent."""

    path: str
    body: bytes
    headers: list[tuple[str, str]]
    extra: Mapping[str, str] | None
    inputs: Tensors
    rows: int
    request_id: str
    reply: asyncio.Future[HttpReply]


@dataclass(slots=True)
class _Batch:
    key: BatchKey
    calls: list[_Waiting] = field(default_factory=list)
    rows: int = 0
    due: bool = False  # its loop turn is over; it waits for a request to come back


@dataclass(frozen=True, slots=True)
class _Mergeable:
    max_rows: int
    until: float


class Coalescer:
    """Forwards REST infer calls to Triton, merging those of one loop turn."""

    def __init__(self, http: HttpUpstream, max_rows: int, max_in_flight: int,
                 registry: CollectorRegistry) -> None:
        self._http = http
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._in_flight: dict[BatchKey, int] = {}
        self._calls_per_request = Histogram(
            "aios_sidecar_calls_per_triton_request",
            "Mergeable infer calls per request sent to Triton (1: sent alone)",
            buckets=CALLS_BUCKETS, registry=registry)
        self._open: dict[BatchKey, _Batch] = {}
        self._models: dict[tuple[str, str], _Mergeable] = {}
        self._looking: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def forward(self, key: BatchKey | None, path: str, body: bytes,
                      headers: list[tuple[str, str]], extra: Mapping[str, str] | None,
                      inputs: Tensors, rows: int, request_id: str) -> HttpReply:
        """Send one infer call, with others of this loop turn where it can."""
        limit = self._limit(key) if key is not None else 0
        if key is None or rows > limit:
            return await self._http.request("POST", path, body, headers, extra)
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > limit:
            self._send(self._open.pop(key))
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(key)
            asyncio.get_running_loop().call_soon(self._close, key, batch)
        waiting = _Waiting(path, body, headers, extra, inputs, rows, request_id,
                           asyncio.get_running_loop().create_future())
        batch.calls.append(waiting)
        batch.rows += rows
        return await waiting.reply

    async def aclose(self) -> None:
        """Cancel what is still in flight (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()

    # -- which models may be merged -------------------------------------------------------

    def _limit(self, key: BatchKey) -> int:
        """Rows a merged request for this model may hold (0: do not merge, or not known
        yet; the first calls of a model go alone while its config is read)."""
        model = key[0], key[1]
        known = self._models.get(model)
        if known is not None and known.until > time.monotonic():
            return known.max_rows
        if model not in self._looking:
            self._looking.add(model)
            self._spawn(self._look_up(model))
        return known.max_rows if known is not None else 0

    async def _look_up(self, model: tuple[str, str]) -> None:
        name, version = model
        path = f"/v2/models/{name}{f'/versions/{version}' if version else ''}/config"
        max_rows = 0
        try:
            reply = await self._http.request("GET", path, b"", ())
            if reply.status == 200:
                config = orjson.loads(reply.body)
                if config.get("dynamic_batching") is not None:
                    max_rows = min(int(config.get("max_batch_size", 0)), self._max_rows)
        except (AiosError, orjson.JSONDecodeError, TypeError, ValueError,
                AttributeError) as exc:
            logger.info("no batching for %s/%s: its config could not be read: %s", name,
                        version, exc)
        finally:
            self._looking.discard(model)
        self._models[model] = _Mergeable(max(max_rows, 0), time.monotonic() + CONFIG_TTL_S)

    # -- sending -------------------------------------------------------------------------

    def _close(self, key: BatchKey, batch: _Batch) -> None:
        """The loop turn that opened ``batch`` is over: send it, unless this model version
        already has its share of requests at Triton; then it sends when one comes back,
        with whatever joined it meanwhile."""
        if self._open.get(key) is not batch:
            return
        if self._in_flight.get(key, 0) >= self._max_in_flight:
            batch.due = True
            return
        del self._open[key]
        self._send(batch)

    def _send(self, batch: _Batch) -> None:
        self._in_flight[batch.key] = self._in_flight.get(batch.key, 0) + 1
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch) -> None:
        live = [c for c in batch.calls if not c.reply.done()]  # a cancelled caller left
        try:
            if len(live) == 1:
                await self._alone(live[0])
            elif live:
                await self._merged(batch.key, live)
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

    async def _alone(self, call: _Waiting) -> None:
        self._calls_per_request.observe(1)
        try:
            reply = await self._http.request("POST", call.path, call.body, call.headers,
                                             call.extra)
        except AiosError as exc:
            _settle(call, exc)
        else:
            _settle(call, reply)

    async def _merged(self, key: BatchKey, calls: list[_Waiting]) -> None:
        body = merge_body(key, [c.inputs for c in calls])
        try:
            reply = await self._http.request("POST", calls[0].path, body,
                                             JSON_HEADERS.items())
        except AiosError as exc:
            for call in calls:
                _settle(call, exc)
            return
        replies = split_reply(reply.body, [c.rows for c in calls],
                              [c.request_id for c in calls]) if reply.status == 200 else None
        if replies is None:
            # Triton refused the merged request (one call's data, say): each call on its
            # own gets exactly the answer it would have had.
            logger.debug("merged request of %d calls answered %d; sending each alone",
                         len(calls), reply.status)
            await asyncio.gather(*(self._alone(c) for c in calls))
            return
        self._calls_per_request.observe(len(calls))
        for call, one in zip(calls, replies, strict=True):
            _settle(call, HttpReply(200, JSON_HEADERS, one))


def _settle(call: _Waiting, outcome: HttpReply | AiosError) -> None:
    if call.reply.done():
        return
    if isinstance(outcome, AiosError):
        call.reply.set_exception(outcome)
    else:
        call.reply.set_result(outcome)


def content_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers that make a body more than plain JSON (binary tensors, compression)."""
    return {k: v for k, v in headers
            if k in ("inference-header-content-length", "content-encoding")}
