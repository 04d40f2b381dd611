"""The circuit breaker: ejected after N consecutive failures, readmitted after a while."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.breaker import Breaker


def test_five_consecutive_failures_eject_and_time_readmits() -> None:
    clock = [0.0]
    registry = CollectorRegistry()
    breaker = Breaker(5, 10.0, registry, clock=lambda: clock[0])
    for _ in range(4):
        breaker.record("m", "a", ok=False)
    breaker.record("m", "a", ok=True)  # a success resets the count
    for _ in range(4):
        breaker.record("m", "a", ok=False)
    assert breaker.ejected("m") == frozenset()
    breaker.record("m", "a", ok=False)
    assert breaker.ejected("m") == frozenset({"a"})
    assert breaker.ejected("other") == frozenset()
    assert registry.get_sample_value("aios_gateway_target_ejected",
                                     {"model": "m", "target": "a"}) == 1
    clock[0] = 10.5
    assert breaker.ejected("m") == frozenset(), "readmitted after the ejection time"
    assert registry.get_sample_value("aios_gateway_target_ejected",
                                     {"model": "m", "target": "a"}) == 0
    breaker.record("m", "a", ok=False)  # still failing: out again at once
    assert breaker.ejected("m") == frozenset({"a"})
    clock[0] = 21.0
    assert breaker.ejected("m") == frozenset()
    breaker.record("m", "a", ok=True)  # recovered
    breaker.record("m", "a", ok=False)
    assert breaker.ejected("m") == frozenset()
