"""Prometheus metrics both services keep per model and version, in a registry of their own."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
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


class Outcome:
    """One tracked call, as a context manager: counted and timed when it ends; the caller
    sets ``code`` once it has one (an AiosError sets it by itself)."""

    __slots__ = ("_labels", "_metrics", "_start", "code")

    def __init__(self, metrics: RequestMetrics, labels: tuple[str, str, str]) -> None:
        self.code = ""
        self._metrics = metrics
        self._labels = labels
        self._start = 0.0

    def __enter__(self) -> Outcome:
        self._start = time.perf_counter()
        self._metrics.now += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        metrics = self._metrics
        metrics.now -= 1
        if isinstance(exc, AiosError):
            self.code = str(exc.http_status) if self._labels[2] == "rest" \
                else exc.grpc_code.name
        metrics.done(self._labels, self.code or "error", time.perf_counter() - self._start)


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
        # Counted on the event loop and read at scrape time: no lock per request.
        self.now = 0
        in_flight = Gauge(f"{prefix}_in_flight_requests", "Model calls being answered",
                          registry=registry)
        in_flight.set_function(lambda: self.now)
        # Read at scrape time, on the event loop: a leak of tasks shows as growth here.
        tasks = Gauge(f"{prefix}_asyncio_tasks", "Tasks alive on the event loop",
                      registry=registry)
        tasks.set_function(lambda: len(asyncio.all_tasks()))
        self.count = Series(self.requests)
        self.latency_of = Series(self.latency)

    def labels(self, model: str, version: str, protocol: str) -> tuple[str, str, str]:
        """The labels a call is counted under."""
        return model, version or "default", protocol

    def done(self, labels: tuple[str, str, str], code: str, seconds: float) -> None:
        """Count and time one answered call (`track` does it for a call answered alone)."""
        self.count(*labels, code).inc()
        self.latency_of(*labels).observe(seconds)

    def track(self, model: str, version: str, protocol: str) -> Outcome:
        """Count and time one call; an AiosError is recorded under its status code."""
        return Outcome(self, self.labels(model, version, protocol))
