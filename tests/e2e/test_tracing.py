"""One trace across gateway → sidecar (→ Triton): spans from both processes, collected by
an OTLP/HTTP receiver this test runs, under the trace id the client sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from aios.auditlog import records
from aios.tracing import Tracing
from aios_cli.cli import tracing_settings
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import (
    STARTUP_TIMEOUT_S,
    aios,
    bearer,
    free_ports,
    gateway_config,
    http_ready,
    infer_json,
    interrupt_and_wait,
    running,
    wait_until,
    write_config,
)

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
REST_TRACE = "0af7651916cd43dd8448eb211c80319c"
GRPC_TRACE = "5b8efff798038103d269b633813fc60c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]


def protobuf_spans(body: bytes) -> Iterator[Span]:
    """Spans of an OTLP/protobuf export (what the Python SDK sends)."""
    for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
        service = next(a.value.string_value for a in resource.resource.attributes
                       if a.key == "service.name")
        for scope in resource.scope_spans:
            for s in scope.spans:
                yield Span(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                           s.parent_span_id.hex(), {a.key: a.value.string_value or
                                                    a.value.int_value for a in s.attributes})


def json_spans(body: bytes) -> Iterator[Span]:
    """Spans of an OTLP/JSON export (what Triton's exporter sends; ids in hex)."""
    for resource in json.loads(body)["resourceSpans"]:
        service = next(a["value"]["stringValue"] for a in resource["resource"]["attributes"]
                       if a["key"] == "service.name")
        for scope in resource["scopeSpans"]:
            for s in scope["spans"]:
                yield Span(service, s["name"], s["traceId"].lower(), s["spanId"].lower(),
                           s.get("parentSpanId", "").lower(),
                           {a["key"]: next(iter(a["value"].values()))
                            for a in s.get("attributes", [])})


class Receiver:
    """An OTLP/HTTP (protobuf) trace receiver on a free port."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                parse = json_spans if "json" in self.headers["content-type"] else protobuf_spans
                with lock:
                    spans.extend(parse(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def of(self, trace_id: str) -> list[Span]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[Receiver, str, str, Path]]:
    """Triton, a sidecar and a gateway (shadowing every call) exporting spans to one
    receiver, as `aios up` runs them with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set."""
    tmp_path = tmp_path_factory.mktemp("traced")
    receiver = Receiver()
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    tr_http, tr_grpc, tr_metrics, sc_http, sc_grpc = free_ports(5)
    h = "127.0.0.1"
    triton_config = write_config(tmp_path / "triton.yaml", {"triton": {
        "http_port": tr_http, "grpc_port": tr_grpc, "metrics_port": tr_metrics}})
    triton_log = tmp_path / "triton.log"
    triton = aios("triton", "--config", str(triton_config), "--workdir", str(tmp_path),
                  log=triton_log, env=env)
    wait_until(lambda: http_ready(tr_http), STARTUP_TIMEOUT_S, "triton ready", triton,
               triton_log)
    sidecar = {"sidecar": {"server": {"http_port": sc_http, "grpc_port": sc_grpc},
                           "triton": {"http": f"{h}:{tr_http}", "grpc": f"{h}:{tr_grpc}"},
                           "decision_log": {"directory": str(tmp_path / "decisions")},
                           "parity": {"golden_interval_s": 3600}}}
    gateway, gw_http, gw_grpc = gateway_config(
        f"{h}:{sc_http}", f"{h}:{sc_grpc}", {"claims_risk": {
            "targets": {"default": {"backend": "local", "version": "2"}},
            "shadow": {"backend": "local", "version": "1", "fraction": 1.0}}})
    try:
        with running("sidecar", sidecar, sc_http, tmp_path, env), \
                running("gateway", gateway, gw_http, tmp_path, env):
            yield receiver, f"{h}:{gw_http}", f"{h}:{gw_grpc}", tmp_path / "decisions"
    finally:
        interrupt_and_wait(triton)
        receiver.close()


def by_name(spans: list[Span], service: str) -> dict[str, Span]:
    return {s.name: s for s in spans if s.service == service}


def test_one_trace_across_gateway_and_sidecar(traced: Any) -> None:
    receiver, gw_http, _, decisions = traced
    resp = httpx.post(f"http://{gw_http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM]), headers={
                          **bearer(), "x-request-id": "traced-1",
                          "traceparent": f"00-{REST_TRACE}-{CLIENT_SPAN}-01"})
    assert resp.status_code == 200
    # Both sidecar server spans (primary and shadow) and the gateway's shadow span.
    wait_until(lambda: sum(s.name == "sidecar infer" for s in receiver.of(REST_TRACE)) == 2
               and any(s.name == "shadow" for s in receiver.of(REST_TRACE)), 20,
               "spans of both processes")
    spans = receiver.of(REST_TRACE)
    gateway = by_name(spans, "aios-gateway")
    assert {"gateway infer", "auth", "quota", "route", "forward", "shadow"} <= set(gateway)
    root = gateway["gateway infer"]
    assert root.parent == CLIENT_SPAN and root.attributes["model"] == "claims_risk"
    for step in ("auth", "quota", "route", "forward"):
        assert gateway[step].parent == root.span_id, step
    sidecar = [s for s in spans if s.service == "aios-sidecar"]
    served = {s.parent: s for s in sidecar if s.name == "sidecar infer"}
    # The sidecar continues the gateway's forward span, and the shadow's own span.
    primary = served[gateway["forward"].span_id]
    shadow = served[gateway["shadow"].span_id]
    assert (primary.attributes["version"], shadow.attributes["version"]) == ("2", "1")
    steps = {s.name: s for s in sidecar if s.parent == primary.span_id}
    assert set(steps) == {"parity check", "forward", "decision-log write"}
    # Triton continues the sidecar's forward span.
    wait_until(lambda: any(s.service == "triton" and s.parent == steps["forward"].span_id
                           for s in receiver.of(REST_TRACE)), 20, "Triton's span")
    (request,) = [s for s in receiver.of(REST_TRACE) if s.parent == steps["forward"].span_id]
    assert request.name == "InferRequest"
    model = next(s for s in receiver.of(REST_TRACE) if s.parent == request.span_id)
    assert model.attributes["triton.model_version"] == "2"
    # The decision record names the trace.
    record = next(r for r in records(decisions) if r.request_id == "traced-1")
    assert record.trace_id == REST_TRACE


def test_grpc_metadata_carries_the_trace(traced: Any) -> None:
    receiver, _, gw_grpc, _ = traced
    with grpc.insecure_channel(gw_grpc) as channel:
        channel.unary_unary(INFER)(grpc_request(), timeout=10, metadata=(
            *bearer().items(), ("traceparent", f"00-{GRPC_TRACE}-{CLIENT_SPAN}-01")))
    wait_until(lambda: any(s.name == "sidecar infer" and s.service == "aios-sidecar"
                           for s in receiver.of(GRPC_TRACE)), 20, "sidecar span")
    gateway = by_name(receiver.of(GRPC_TRACE), "aios-gateway")
    assert gateway["gateway ModelInfer"].parent == CLIENT_SPAN
    assert any(s.parent == gateway["forward"].span_id for s in receiver.of(GRPC_TRACE)
               if s.service == "aios-sidecar")


@pytest.mark.parametrize("environ, enabled", [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
])
def test_tracing_is_on_only_when_otel_variables_say_so(environ: dict[str, str],
                                                       enabled: bool) -> None:
    settings = tracing_settings(environ, "gateway")
    assert (settings.enabled, settings.service_name) == (enabled, "aios-gateway")


def test_off_tracing_allocates_nothing_per_call() -> None:
    off = Tracing()
    assert off.server("gateway infer", [("traceparent", "x")]) is off.span("auth")
    assert off.inject() is off.inject() and not off.inject()
