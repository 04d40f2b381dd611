"""The console's health summary, from Prometheus text as the services expose it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.health import summarize

SIDECAR = """
# TYPE aios_sidecar_requests counter
aios_sidecar_requests_total{model="claims_risk",version="2",protocol="rest",code="200"} 40
aios_sidecar_requests_total{model="claims_risk",version="2",protocol="grpc",code="UNAVAILABLE"} 2
# TYPE aios_sidecar_request_duration_seconds histogram
aios_sidecar_request_duration_seconds_bucket{model="m",version="2",protocol="rest",le="0.001"} 10
aios_sidecar_request_duration_seconds_bucket{model="m",version="2",protocol="rest",le="+Inf"} 40
aios_sidecar_request_duration_seconds_bucket{model="m",version="2",protocol="rest",le="0.01"} 35
aios_sidecar_request_duration_seconds_count{model="m",version="2",protocol="rest"} 40
aios_sidecar_request_duration_seconds_sum{model="m",version="2",protocol="rest"} 0.1
# TYPE aios_sidecar_drift_psi gauge
aios_sidecar_drift_psi{model="claims_risk",version="2",feature="claimant_age"} 0.31
# TYPE aios_sidecar_drift_flag gauge
aios_sidecar_drift_flag{model="claims_risk",version="2",feature="claimant_age"} 1
# TYPE aios_sidecar_parity_ok gauge
aios_sidecar_parity_ok{model="claims_risk",version="2"} 1
# TYPE aios_sidecar_cpu_seconds_per_request gauge
aios_sidecar_cpu_seconds_per_request 0.00012
"""


def test_a_sidecars_figures_are_summarized_per_model_version() -> None:
    doc = summarize(text_string_to_metric_families(SIDECAR), "sidecar")
    assert doc["requests"] == [
        {"model": "claims_risk", "version": "2", "protocol": "rest", "code": "200",
         "count": 40.0},
        {"model": "claims_risk", "version": "2", "protocol": "grpc", "code": "UNAVAILABLE",
         "count": 2.0}]
    assert doc["latency"] == [{"model": "m", "version": "2", "count": 40.0,
                               "buckets": [[0.001, 10.0], [0.01, 35.0], [None, 40.0]]}]
    assert doc["drift"] == [{"model": "claims_risk", "version": "2",
                             "feature": "claimant_age", "psi": 0.31, "flagged": 1.0}]
    assert doc["parity"] == [{"model": "claims_risk", "version": "2", "ok": 1.0}]
    assert doc["cpu_seconds_per_request"] == 0.00012
    assert "shadow" not in doc


def test_the_gateways_own_figures_carry_shadow_agreement() -> None:
    text = """
# TYPE aios_gateway_shadow_decisions counter
aios_gateway_shadow_decisions_total{model="claims_risk",shadow="v1",agree="true"} 9
aios_gateway_shadow_decisions_total{model="claims_risk",shadow="v1",agree="false"} 1
"""
    doc = summarize(text_string_to_metric_families(text), "gateway")
    assert doc == {"requests": [], "latency": [], "shadow": [
        {"model": "claims_risk", "shadow": "v1", "agree": "true", "count": 9.0},
        {"model": "claims_risk", "shadow": "v1", "agree": "false", "count": 1.0}]}
