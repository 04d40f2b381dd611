"""OpenTelemetry tracing across gateway → sidecar → Triton, or nothing at all when off.

A service gets one `Tracing`. On, it continues the caller's W3C ``traceparent`` (REST
header or gRPC metadata), opens a span per step and injects the current span into the
call to the next hop; spans leave by OTLP, configured by the standard ``OTEL_*``
variables (endpoint, headers, batch sizes). Off (the default), every method returns a
shared no-op: the hot path pays a method call per step (`make bench` reports it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_NO_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True)
class TracingSettings:
    """Whether to trace, and under which service name (the CLI reads OTEL_* for these)."""

    enabled: bool = False
    service_name: str = "aios"


TRACING_OFF = TracingSettings()


def carrier(items: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The W3C trace headers among request headers or gRPC metadata."""
    return {k: v if isinstance(v, str) else bytes(v).decode("latin-1")
            for k, v in items if k in TRACE_HEADERS}


class Tracing:
    """Spans for one service; ``tracer`` None means tracing is off."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded (off: no span is ever current)."""
        return self._tracer is not None

    def server(self, name: str, headers: Iterable[tuple[str, Any]],
               **attributes: str | int) -> AbstractContextManager[Any]:
        """The span of a call this service serves, continuing the caller's trace."""
        if self._tracer is None:
            return _NOTHING
        parent = _PROPAGATOR.extract(carrier(headers))
        return self._tracer.start_as_current_span(name, parent, SpanKind.SERVER,
                                                  attributes=attributes)

    def span(self, name: str, parent: Mapping[str, str] | None = None,
             **attributes: str | int) -> AbstractContextManager[Any]:
        """A step of the current call (or of the trace ``parent`` names, from `inject`)."""
        if self._tracer is None:
            return _NOTHING
        context: Context | None = _PROPAGATOR.extract(parent) if parent else None
        return self._tracer.start_as_current_span(name, context, attributes=attributes)

    def inject(self) -> Mapping[str, str]:
        """The trace headers that make the current span the next hop's parent."""
        if self._tracer is None:
            return _NO_HEADERS
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        return headers


@contextlib.contextmanager
def open_tracing(settings: TracingSettings) -> Iterator[Tracing]:
    """A `Tracing` exporting by OTLP/HTTP while the block runs; flushed at its end."""
    if not settings.enabled:
        yield Tracing()
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Exporter and batching read OTEL_EXPORTER_OTLP_* and OTEL_BSP_* themselves.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    logger.info("tracing: OTLP export as service %s", settings.service_name)
    try:
        yield Tracing(provider.get_tracer("aios"))
    finally:
        provider.shutdown()


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits ("" outside a recorded span)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
