"""Shadow traffic: copies of sampled calls go to a candidate, off the hot path.

The primary's answer never waits for the shadow: `offer` only enqueues (a full queue
drops the copy, counted). Copies are taken from the queue in batches, whatever came
within `linger_s` of the first (up to SHADOW_BATCH), and a batch's copies are sent at
once, so that they meet on the way (one envelope to the sidecar, one request to the
shadow's model version: a shadow trickling in one row at a time would cost the backend
a model execution per row). Each copy has its own timeout; the shadow's outputs are
compared with the primary's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from aios.compare import compare, encode_expected
from aios.errors import AiosError
from aios.ids import new_ulid
from aios.kserve import with_model
from aios.metrics import LATENCY_BUCKETS
from aios.plane import DECISION_HEADER, SHADOW_COMPARE_HEADER, SHADOW_HEADER, model_path
from aios.tasks import Tasks
from aios.tensors import Outputs, grpc_outputs, rest_outputs
from aios.tracing import Tracing
from aios.upstream import GrpcReply, HttpReply, Metadata
from gateway.routing import ShadowSpec

logger = logging.getLogger(__name__)


class RestSender(Protocol):
    """What sends a REST shadow copy: a backend's `HttpUpstream`, or its
    `gateway.batching.BackendBatching`, which puts copies that meet in one envelope."""

    async def request(self, method: str, path: str, body: bytes,
                      headers: Iterable[tuple[str, str]],
                      extra: Mapping[str, str] | None = None,
                      timeout_s: float | None = None) -> HttpReply:
        """Send one call; the reply, or an AiosError."""
        ...


class GrpcSender(Protocol):
    """What sends a gRPC shadow copy: a backend's `gateway.batching.GrpcCalls` (or its
    `GrpcUpstream`)."""

    async def call(self, method: str, payload: bytes, metadata: Metadata,
                   extra: Mapping[str, str] | None = None,
                   timeout_s: float | None = None) -> GrpcReply:
        """Send one call; the reply, or an AiosError."""
        ...


# Copies taken from the queue at once, at most.
SHADOW_BATCH = 64

DIFF_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One mirrored call: what the primary was sent and what it answered."""

    model: str
    spec: ShadowSpec
    payload: bytes
    headers: tuple[tuple[str, Any], ...]
    identity: Mapping[str, str]
    primary: HttpReply | GrpcReply
    grpc_method: str = ""  # set for gRPC calls
    trace: Mapping[str, str] = field(default_factory=dict)  # the primary's span


class ShadowMetrics:
    """What the shadows did and how they compared, per model and shadow target."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "shadow")
        self.requests = Counter("aios_gateway_shadow_requests", "Shadow calls by outcome",
                                (*labels, "outcome"), registry=registry)
        self.dropped = Counter("aios_gateway_shadow_dropped",
                               "Shadow copies dropped because the queue was full", ("model",),
                               registry=registry)
        self.decisions = Counter("aios_gateway_shadow_decisions",
                                 "Decisions compared with the primary, by agreement",
                                 (*labels, "agree"), registry=registry)
        self.abs_diff = Histogram("aios_gateway_shadow_abs_diff",
                                  "Max absolute output difference shadow vs primary", labels,
                                  buckets=DIFF_BUCKETS, registry=registry)
        self.latency = Histogram("aios_gateway_shadow_latency_seconds", "Shadow call latency",
                                 labels, buckets=LATENCY_BUCKETS, registry=registry)


def shadow_label(spec: ShadowSpec) -> str:
    """The shadow target as a metric label: backend/model/version."""
    return f"{spec.backend}/{spec.model}/{spec.version or 'default'}"


def _outputs(reply: HttpReply | GrpcReply) -> Outputs:
    if isinstance(reply, HttpReply):
        return rest_outputs(reply.body, reply.headers)
    return grpc_outputs(reply.payload)


class ShadowRunner:
    """A bounded queue, and batches of copies (at most ``concurrency`` in flight) sent and
    compared with their primaries."""

    def __init__(self, http: Mapping[str, RestSender], grpc: Mapping[str, GrpcSender],
                 queue_size: int, concurrency: int, registry: CollectorRegistry,
                 tracing: Tracing, rng: Callable[[], float] = random.random,
                 linger_s: float = 0.0) -> None:
        self._tracing = tracing
        self._http = http
        self._grpc = grpc
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(queue_size)
        self._slots = asyncio.Semaphore(concurrency)
        self._linger_s = linger_s
        self._rng = rng
        self._tasks = Tasks()  # the dispatcher and the batches in flight
        self.metrics = ShadowMetrics(registry)

    def sampled(self, spec: ShadowSpec | None) -> bool:
        """Whether this call gets a shadow copy."""
        return spec is not None and self._rng() < spec.fraction

    def offer(self, job: ShadowJob) -> None:
        """Enqueue without waiting; a full queue drops the copy (counted)."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.dropped.labels(job.model).inc()

    async def __aenter__(self) -> ShadowRunner:
        self._tasks.spawn(self._dispatch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._tasks.aclose()

    async def _dispatch(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            while len(jobs) < SHADOW_BATCH and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            await self._slots.acquire()
            self._tasks.spawn(self._batch(jobs))

    async def _batch(self, jobs: list[ShadowJob]) -> None:
        try:
            await asyncio.gather(*(self._one(job) for job in jobs))
        finally:
            self._slots.release()

    async def _one(self, job: ShadowJob) -> None:
        try:
            await self._run(job)
        except Exception:
            logger.exception("shadow comparison failed for %s", job.model)

    async def _run(self, job: ShadowJob) -> None:
        with self._tracing.span("shadow", job.trace, shadow=shadow_label(job.spec)):
            await self._shadow(job)

    async def _shadow(self, job: ShadowJob) -> None:
        spec, label = job.spec, shadow_label(job.spec)
        extra = {**job.identity, SHADOW_HEADER: "1", DECISION_HEADER: new_ulid(),
                 **self._tracing.inject()}
        try:
            ours: Outputs | None = _outputs(job.primary)
        except (ValueError, KeyError, zlib.error, OSError):
            ours = None  # sent all the same (its record is evidence); counted below
        if ours is not None and spec.output in ours and spec.threshold is not None:
            # The copy's record then says whether its decisions agree (aios.compare).
            expected = encode_expected(spec.output, spec.threshold, ours[spec.output])
            if expected is not None:
                extra[SHADOW_COMPARE_HEADER] = expected
        start = time.perf_counter()
        try:
            # A deadline on this task (`wait_for` would run the call in a task of its own).
            async with asyncio.timeout(spec.timeout_s):
                if isinstance(job.primary, HttpReply):
                    reply = await self._http[spec.backend].request(
                        "POST", model_path(spec.model, spec.version, "/infer"), job.payload,
                        job.headers, extra)
                    if reply.status != 200:
                        self.metrics.requests.labels(job.model, label, "error").inc()
                        return
                    answer: HttpReply | GrpcReply = reply
                else:
                    payload = with_model(job.payload, spec.model, spec.version)
                    answer = await self._grpc[spec.backend].call(
                        job.grpc_method, payload, job.headers, extra)
        except TimeoutError:
            self.metrics.requests.labels(job.model, label, "timeout").inc()
            return
        except AiosError:
            self.metrics.requests.labels(job.model, label, "error").inc()
            return
        finally:
            self.metrics.latency.labels(job.model, label).observe(time.perf_counter() - start)
        try:
            if ours is None:
                raise ValueError("the primary's answer could not be decoded")
            result = compare(ours, _outputs(answer), spec.output, spec.threshold)
        except (ValueError, KeyError, zlib.error, OSError):
            # Undecodable or differently shaped answers: counted, not compared.
            self.metrics.requests.labels(job.model, label, "mismatch").inc()
            return
        self.metrics.requests.labels(job.model, label, "ok").inc()
        self.metrics.abs_diff.labels(job.model, label).observe(result.max_abs)
        if result.rows:
            self.metrics.decisions.labels(job.model, label, "true").inc(result.agreed)
            self.metrics.decisions.labels(job.model, label, "false").inc(
                result.rows - result.agreed)
