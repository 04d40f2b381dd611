"""Live health per model version for the console, from the services' own metrics: the
gateway's registry and each backend's (sidecar's) `/metrics`, read when asked (at most
once a second however many consoles poll) and summarized by `summarize`, a pure function
of the metric families. Counts are cumulative; the console turns two polls into rates and
windowed percentiles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from aios.errors import AiosError
from aios.upstream import HttpUpstream

# A backend's /metrics must answer within this, or it is shown as not answering.
SCRAPE_TIMEOUT_S = 2.0
CACHE_S = 1.0
DRIFT = {"aios_sidecar_drift_psi": "psi", "aios_sidecar_drift_ks": "ks",
         "aios_sidecar_drift_flag": "flagged"}


def summarize(families: Iterable[Metric], service: str) -> dict[str, Any]:
    """What the console shows of one service's metrics (``service``: gateway or sidecar)."""
    requests: list[dict[str, Any]] = []
    latency: dict[tuple[str, str], dict[str, Any]] = {}
    drift: dict[tuple[str, str, str], dict[str, Any]] = {}
    parity: dict[tuple[str, str], dict[str, Any]] = {}
    shadow: list[dict[str, Any]] = []
    cpu = None
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            model, version = labels.get("model", ""), labels.get("version", "")
            if name == f"aios_{service}_requests_total":
                requests.append({"model": model, "version": version,
                                 "protocol": labels.get("protocol", ""),
                                 "code": labels.get("code", ""), "count": value})
            elif name.startswith(f"aios_{service}_request_duration_seconds"):
                entry = latency.setdefault((model, version), {
                    "model": model, "version": version, "buckets": {}, "count": 0.0})
                if name.endswith("_bucket"):
                    le = labels["le"]
                    entry["buckets"][le] = entry["buckets"].get(le, 0.0) + value
                elif name.endswith("_count"):
                    entry["count"] += value
            elif name in DRIFT:
                feature = labels.get("feature", "")
                drift.setdefault((model, version, feature), {
                    "model": model, "version": version, "feature": feature})[DRIFT[name]] = value
            elif name in ("aios_sidecar_parity_ok", "aios_sidecar_parity_max_abs_diff"):
                parity.setdefault((model, version), {"model": model, "version": version})[
                    "ok" if name.endswith("_ok") else "max_abs_diff"] = value
            elif name == "aios_gateway_shadow_decisions_total":
                shadow.append({"model": model, "shadow": labels.get("shadow", ""),
                               "agree": labels.get("agree", ""), "count": value})
            elif name == "aios_sidecar_cpu_seconds_per_request":
                cpu = value
    for entry in latency.values():  # buckets in order of their bound; +Inf (null) last
        bounds = sorted(entry["buckets"].items(), key=lambda b: float(b[0]))
        entry["buckets"] = [[None if le == "+Inf" else float(le), n] for le, n in bounds]
    out: dict[str, Any] = {"requests": requests, "latency": list(latency.values())}
    if service == "gateway":
        out["shadow"] = shadow
    else:
        out.update(drift=list(drift.values()), parity=list(parity.values()),
                   cpu_seconds_per_request=cpu)
    return out


class HealthReader:
    """The health document: this gateway's figures and each backend's."""

    def __init__(self, registry: CollectorRegistry, backends: Mapping[str, HttpUpstream]
                 ) -> None:
        self._registry = registry
        self._backends = dict(backends)
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def health(self) -> dict[str, Any]:
        async with self._lock:  # one scrape at a time, shared by every poll within CACHE_S
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= CACHE_S:
                names = list(self._backends)
                scraped = await asyncio.gather(*(self._scrape(n) for n in names))
                self._cached = (now, {
                    "at": time.time(), "gateway": summarize(self._registry.collect(), "gateway"),
                    "backends": dict(zip(names, scraped, strict=True))})
            return self._cached[1]

    async def _scrape(self, name: str) -> dict[str, Any]:
        try:
            reply = await asyncio.wait_for(
                self._backends[name].request("GET", "/metrics", b"", ()), SCRAPE_TIMEOUT_S)
            if reply.status != 200:
                raise ValueError(f"/metrics answered {reply.status}")
            families = text_string_to_metric_families(reply.body.decode("utf-8", "replace"))
            return {"up": True, **summarize(families, "sidecar")}
        except (AiosError, ValueError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, AiosError) else str(exc) or "timed out"
            return {"up": False, "error": message}
