"""Per-target circuit breaking: a target that keeps failing is ejected for a while."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge


class Breaker:
    """Ejects (model, target) after N consecutive failures, for a fixed time; the first
    success after it is readmitted closes it again."""

    def __init__(self, failures: int, ejection_s: float, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._ejection_s = ejection_s
        self._clock = clock
        self._failures: dict[tuple[str, str], int] = {}
        self._until: dict[tuple[str, str], float] = {}
        self._gauge = Gauge("aios_gateway_target_ejected",
                            "1 while a target is ejected as failing", ("model", "target"),
                            registry=registry)

    def ejected(self, model: str) -> frozenset[str]:
        """Targets of ``model`` ejected right now."""
        if not self._until:
            return frozenset()
        now = self._clock()
        out = []
        for (m, target), until in list(self._until.items()):
            if until <= now:
                # Readmitted: one more failure ejects it again at once.
                del self._until[(m, target)]
                self._failures[(m, target)] = self._threshold - 1
                self._gauge.labels(m, target).set(0)
            elif m == model:
                out.append(target)
        return frozenset(out)

    def record(self, model: str, target: str, ok: bool) -> None:
        """Count one call's outcome."""
        key = (model, target)
        if ok:
            self._failures.pop(key, None)
            return
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if count >= self._threshold and key not in self._until:
            self._until[key] = self._clock() + self._ejection_s
            self._gauge.labels(model, target).set(1)
