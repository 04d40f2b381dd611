"""Prometheus metrics both services keep per model and version, in a registry of their own."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aios.errors import AiosError

# Fine enough for p50/p95/p99 between 0.5 ms and 5 s.
LATENCY_BUCKETS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
)


class _Count:
    """One labelled series of a `LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount


class _Distribution:
    """One labelled series of a `LoopHistogram`: a count per bucket and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound it does not exceed."""
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


S = TypeVar("S", _Count, _Distribution)


class _LoopMetric(Collector, Generic[S]):
    """A metric updated only on the event loop's thread, as hot-path metrics are here.

    prometheus_client's own take a lock per update (a histogram two, after a Python loop
    over its buckets) and a lock per `labels()`: a few microseconds per call, several
    times per request. These are plain attributes, read at scrape time, which is also
    on the event loop. Same names and exposition as prometheus_client's."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        registry.register(self)

    def _new(self) -> S:
        raise NotImplementedError

    def labels(self, *values: str) -> S:
        """The series of ``values`` (one per label name), made on first use."""
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: {len(self._labelnames)} label values needed")
            series = self._series[values] = self._new()
        return series

    def series(self) -> list[tuple[tuple[str, ...], S]]:
        """Every labelled series, with its label values."""
        return list(self._series.items())


class LoopCounter(_LoopMetric[_Count]):
    """A counter (exposed as ``<name>_total``)."""

    def _new(self) -> _Count:
        return _Count()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (a counter without labels)."""
        self.labels().inc(amount)

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in self._series.items():
            family.add_metric(list(values), series.value)
        yield family


class LoopHistogram(_LoopMetric[_Distribution]):
    """A histogram with fixed bucket bounds (and +Inf)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self._bounds = tuple(float(b) for b in buckets)
        # Bound labels as prometheus_client writes them (1048576 is "1.048576e+06").
        self._les = [str(floatToGoString(b)) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]

    def _new(self) -> _Distribution:
        return _Distribution(self._bounds)

    def observe(self, amount: float) -> None:
        """Count ``amount`` (a histogram without labels)."""
        self.labels().observe(amount)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation,
                                       labels=self._labelnames)
        for values, series in self._series.items():
            family.add_metric(list(values),
                              list(zip(self._les, itertools.accumulate(series.counts),
                                       strict=True)), series.sum)
        yield family


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
        self.requests = LoopCounter(f"{prefix}_requests", "Model calls answered, by outcome",
                                    (*labels, "code"), registry)
        self.latency = LoopHistogram(f"{prefix}_request_duration_seconds",
                                     "Time to answer a model call", labels, LATENCY_BUCKETS,
                                     registry)
        # Counted on the event loop and read at scrape time: no lock per request.
        self.now = 0
        in_flight = Gauge(f"{prefix}_in_flight_requests", "Model calls being answered",
                          registry=registry)
        in_flight.set_function(lambda: self.now)
        # Read at scrape time, on the event loop: a leak of tasks shows as growth here.
        tasks = Gauge(f"{prefix}_asyncio_tasks", "Tasks alive on the event loop",
                      registry=registry)
        tasks.set_function(lambda: len(asyncio.all_tasks()))

    def labels(self, model: str, version: str, protocol: str) -> tuple[str, str, str]:
        """The labels a call is counted under."""
        return model, version or "default", protocol

    def done(self, labels: tuple[str, str, str], code: str, seconds: float) -> None:
        """Count and time one answered call (`track` does it for a call answered alone)."""
        self.requests.labels(*labels, code).inc()
        self.latency.labels(*labels).observe(seconds)

    def track(self, model: str, version: str, protocol: str) -> Outcome:
        """Count and time one call; an AiosError is recorded under its status code."""
        return Outcome(self, self.labels(model, version, protocol))
