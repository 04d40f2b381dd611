"""`aios.metrics`: the event-loop metrics expose exactly what prometheus_client's would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from aios.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

SIZES = (64, 1024, 1048576, 16777216)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The registry's text, without prometheus_client's `_created` series."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


@pytest.mark.parametrize("buckets, values", [
    (LATENCY_BUCKETS, [0.0001, 0.0005, 0.00051, 0.004, 0.004, 5.0, 7.5]),
    (SIZES, [0, 64, 65, 1048576, 2e7]),
], ids=["latency", "sizes with exponents"])
def test_a_loop_histogram_reads_like_prometheus_clients(buckets: tuple[float, ...],
                                                         values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("h", "help", ("model", "code"), buckets, ours)
    reference = Histogram("h", "help", ("model", "code"), buckets=buckets, registry=theirs)
    for i, value in enumerate(values):
        labels = ("m", "200" if i % 2 else "503")
        mine.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)
    assert exposition(ours) == exposition(theirs)


def test_a_loop_counter_reads_like_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("aios_calls", "help", ("target",), ours)
    reference = Counter("aios_calls", "help", ("target",), registry=theirs)
    for target, amount in [("stable", 1), ("canary", 3), ("stable", 2)]:
        mine.labels(target).inc(amount)
        reference.labels(target).inc(amount)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("aios_calls_total", {"target": "stable"}) == 3


def test_metrics_without_labels_and_a_wrong_label_count() -> None:
    registry = CollectorRegistry()
    calls = LoopHistogram("calls", "help", (), (1, 2, 4), registry)
    calls.observe(3)
    assert registry.get_sample_value("calls_bucket", {"le": "2.0"}) == 0
    assert registry.get_sample_value("calls_bucket", {"le": "4.0"}) == 1
    with pytest.raises(ValueError, match="calls: 0 label values needed"):
        calls.labels("x")
