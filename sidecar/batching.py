"""Coalesce concurrent REST infer calls for one model version into one Triton request.

Triton's dynamic batcher can only merge requests it holds at the same time; the sidecar
forwards calls as they come, so under load Triton sees them one or two at a time and pays
a whole HTTP exchange and a Python-backend round trip for each row (measured: 445 µs per
request at one connection, 109 µs at sixteen). Calls for the same model version, with the
same input layout, that meet (`aios.batching`: the same event-loop turn, or while
requests for that version are out) are sent as one request whose rows are theirs in
order; the answer is cut back into one reply per call. A call alone goes as it came,
bytes unchanged.

Only what Triton would batch is merged: a model whose config has ``max_batch_size > 0``
and ``dynamic_batching`` (rows are independent, as the dynamic batcher already assumes),
JSON calls without parameters or requested outputs, numeric inputs. If Triton refuses a
merged request, every call is sent again on its own, so each gets its own answer.

The merge and the split are pure functions; `TritonBatching` reads each model's config
and sends merged requests; `aios.batching.Coalescer` decides which calls meet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from aios.batching import (
    CALLS_BUCKETS,
    JSON_HEADERS,
    Asked,
    Coalescer,
    Layout,
    Waiting,
    input_layout,
)
from aios.errors import AiosError
from aios.kserve import InferHeader
from aios.metrics import LoopHistogram
from aios.plane import model_path
from aios.tasks import Tasks
from aios.tensors import Tensors
from aios.upstream import HttpReply, HttpUpstream

logger = logging.getLogger(__name__)

# (model, version, input layout)
BatchKey = tuple[str, str, Layout]


def batch_key(model: str, version: str, header: InferHeader,
              content_headers: Mapping[str, str]) -> BatchKey | None:
    """Under which key a call may share a Triton request, or None if it must go alone."""
    layout = input_layout(header, content_headers)
    return None if layout is None else (model, version, layout)


def merge_inputs(layout: Layout, calls: Sequence[Tensors]) -> Tensors:
    """Every call's rows of each input of ``layout``, concatenated in order."""
    return {name: np.concatenate([c[name] for c in calls]) for name, _, _ in layout}


def merged_body(layout: Layout, merged: Tensors) -> bytes:
    """One JSON infer request carrying the ``merged`` inputs."""
    inputs = [{"name": name, "datatype": datatype, "shape": list(merged[name].shape),
               "data": merged[name].ravel()} for name, datatype, _ in layout]
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


def merge_body(key: BatchKey, calls: Sequence[Tensors]) -> bytes:
    """One JSON infer request holding every call's rows, in order."""
    return merged_body(key[2], merge_inputs(key[2], calls))


def runs(rows: Sequence[int], limit: int) -> list[slice]:
    """Consecutive calls (of ``rows`` each) in runs of at most ``limit`` rows; a call of
    more rows than that is a run of its own."""
    out: list[slice] = []
    start, total = 0, 0
    for i, n in enumerate(rows):
        if i > start and total + n > limit:
            out.append(slice(start, i))
            start, total = i, 0
        total += n
    if rows:
        out.append(slice(start, len(rows)))
    return out


def split_doc(doc: Any, rows: Sequence[int], ids: Sequence[str]) -> list[dict[str, Any]] | None:
    """Cut a merged JSON reply (parsed) into one reply per call (``rows`` each, with its
    ``id``); None if the reply is not what a merged request should get back."""
    try:
        outputs = doc["outputs"]
        total = sum(rows)
        cuts = []
        for out in outputs:
            shape, data = out["shape"], out["data"]
            if not shape or shape[0] != total or len(data) % max(total, 1):
                return None
            cuts.append((out, len(data) // total if total else 0))
        common = {k: v for k, v in doc.items() if k not in ("id", "outputs")}
    except (KeyError, TypeError, AttributeError):
        return None
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
        replies.append(one)
    return replies


def split_reply(body: bytes, rows: Sequence[int], ids: Sequence[str]) -> list[bytes] | None:
    """`split_doc` of a reply body, each reply serialized again."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    replies = split_doc(doc, rows, ids)
    return None if replies is None else [orjson.dumps(one) for one in replies]


class TritonMerger:
    """Which models Triton lets us merge calls for (from their config, asked in the
    background), and the merged requests themselves."""

    def __init__(self, http: HttpUpstream, max_rows: int, tasks: Tasks) -> None:
        self._http = http
        self._max_rows = max_rows
        self._models: Asked[tuple[str, str]] = Asked(self._max_rows_of, tasks)

    def rows(self, key: BatchKey) -> int:
        """How many rows one Triton request for this key's model version may carry (0:
        calls for it are not merged)."""
        return self._models.rows((key[0], key[1]))

    async def _max_rows_of(self, model: tuple[str, str]) -> int:
        """Rows a merged request for this model version may hold, from its Triton config
        (0: Triton does not batch it, so neither do we)."""
        name, version = model
        path = model_path(name, version, "/config")
        try:
            reply = await self._http.request("GET", path, b"", ())
            if reply.status == 200:
                config = orjson.loads(reply.body)
                if config.get("dynamic_batching") is not None:
                    return min(int(config.get("max_batch_size", 0)), self._max_rows)
        except (AiosError, orjson.JSONDecodeError, TypeError, ValueError,
                AttributeError) as exc:
            logger.info("no batching for %s/%s: its config could not be read: %s", name,
                        version, exc)
        return 0

    async def together(self, key: BatchKey, calls: list[Waiting]) -> list[HttpReply] | None:
        """The calls as one Triton request; None if Triton refused it."""
        body = merge_body(key, [c.inputs for c in calls])
        reply = await self._http.request("POST", calls[0].path, body, JSON_HEADERS.items())
        replies = split_reply(reply.body, [c.rows for c in calls],
                              [c.request_id for c in calls]) if reply.status == 200 else None
        if replies is None:
            # Triton refused the merged request (one call's data, say): each call on its
            # own gets exactly the answer it would have had.
            logger.debug("merged request of %d calls answered %d; sending each alone",
                          len(calls), reply.status)
            return None
        return [HttpReply(200, JSON_HEADERS, one) for one in replies]


class TritonBatching:
    """Calls to Triton merged where they meet (`aios.batching.Coalescer`)."""

    def __init__(self, http: HttpUpstream, max_rows: int, max_in_flight: int,
                 registry: CollectorRegistry) -> None:
        self.calls = LoopHistogram(
            "aios_sidecar_calls_per_triton_request",
            "Mergeable infer calls per request sent to Triton (1: sent alone)", (),
            CALLS_BUCKETS, registry)
        self.tasks = Tasks()
        self._merger = TritonMerger(http, max_rows, self.tasks)
        self.coalescer: Coalescer[BatchKey] = Coalescer(
            http, self._merger, max_in_flight, self.calls, self.tasks)

    def rows(self, key: BatchKey) -> int:
        """How many rows one Triton request for this key may carry (0: not merged)."""
        return self._merger.rows(key)
