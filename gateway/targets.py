"""What each routing target served: calls by outcome and their latency, per model and
target, counted on the event loop. The rollouts' gates read these (`counters`), summed
over replicas; Prometheus reads the same series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from aios.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram
from gateway.rollout import Counters


class TargetMetrics:
    """Calls per (model, target) by outcome (ok | error), and their latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = LoopCounter("aios_gateway_target_requests",
                                     "Model calls by the routing target that served them, "
                                     "by outcome (error: 5xx, UNAVAILABLE, no answer)",
                                     ("model", "target", "outcome"), registry)
        self._latency = LoopHistogram("aios_gateway_target_duration_seconds",
                                      "Time a routing target took to answer",
                                      ("model", "target"), LATENCY_BUCKETS, registry)

    def observe(self, model: str, target: str, ok: bool, seconds: float) -> None:
        self._requests.labels(model, target, "ok" if ok else "error").inc()
        self._latency.labels(model, target).observe(seconds)

    def counters(self, model: str) -> dict[str, Counters]:
        """This process's cumulative counters per target of ``model``."""
        out: dict[str, Counters] = {}
        for (m, target, outcome), count in self._requests.series():
            if m == model:
                c = out.get(target, Counters())
                n = int(count.value)
                out[target] = Counters(c.requests + n, c.errors + (n if outcome == "error"
                                                                   else 0), c.buckets)
        for (m, target), dist in self._latency.series():
            if m == model:
                c = out.get(target, Counters())
                cumulative, running = [], 0
                for n in dist.counts:
                    running += n
                    cumulative.append(running)
                out[target] = Counters(c.requests, c.errors, tuple(cumulative))
        return out


def shadow_counters(decisions: Counter, model: str) -> dict[str, Counters]:
    """Decisions compared per shadow label (backend/model/version) of ``model``, from the
    shadow runner's counter."""
    out: dict[str, Counters] = {}
    for family in decisions.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total") or sample.labels.get("model") != model:
                continue
            label = f"shadow:{sample.labels['shadow']}"
            c = out.get(label, Counters())
            n = int(sample.value)
            out[label] = Counters(agree=c.agree + (n if sample.labels["agree"] == "true" else 0),
                                  disagree=c.disagree + (0 if sample.labels["agree"] == "true"
                                                         else n))
    return out
