"""Prometheus metrics both services keep per model and version, in a registry of their own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from aios.errors import AiosError

# Fine enough for p50/p95/p99 between 0.5 ms and 5 s.
LATENCY_BUCKETS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
)


class Series:
    """The labelled series of one metric, each made once: `labels()` locks and hashes on
    every call, and these are used on every request."""

    def __init__(self, metric: MetricWrapperBase) -> None:
        self._metric = metric
        self._made: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        """The child of ``labels`` (a Counter, Gauge or Histogram child)."""
        series = self._made.get(labels)
        if series is None:
            series = self._made[labels] = self._metric.labels(*labels)
        return series


@dataclass
class Outcome:
    """The result code of a tracked call, set by the caller once it has one."""

    code: str = ""


class RequestMetrics:
    """Requests, latency and in-flight count of one service, labelled by model/version."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        prefix = f"aios_{service}"
        labels = ("model", "version", "protocol")
        self.requests = Counter(f"{prefix}_requests", "Model calls answered, by outcome",
                                (*labels, "code"), registry=registry)
        self.latency = Histogram(f"{prefix}_request_duration_seconds",
                                 "Time to answer a model call", labels,
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(f"{prefix}_in_flight_requests", "Model calls being answered",
                               registry=registry)
        # Read at scrape time, on the event loop: a leak of tasks shows as growth here.
        tasks = Gauge(f"{prefix}_asyncio_tasks", "Tasks alive on the event loop",
                      registry=registry)
        tasks.set_function(lambda: len(asyncio.all_tasks()))
        self._count = Series(self.requests)
        self._latency = Series(self.latency)

    @contextmanager
    def track(self, model: str, version: str, protocol: str) -> Iterator[Outcome]:
        """Count and time one call; an AiosError is recorded under its status code."""
        outcome = Outcome()
        start = time.perf_counter()
        self.in_flight.inc()
        try:
            yield outcome
        except AiosError as exc:
            outcome.code = str(exc.http_status) if protocol == "rest" else exc.grpc_code.name
            raise
        finally:
            self.in_flight.dec()
            version = version or "default"
            self._count(model, version, protocol, outcome.code or "error").inc()
            self._latency(model, version, protocol).observe(time.perf_counter() - start)
