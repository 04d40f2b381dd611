"""The dashboard and alert rules only use metrics the services really expose."""

from __future__ import annotations

import json
import re

import httpx
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from aios.config import EnvoyOptions, GatewaySettings
from gateway.routestore import table_from_route
from gateway.xds import XdsServer
from tests.conftest import Stack
from tests.helpers import REPO, bearer, infer_json

METRIC = re.compile(r"\baios_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def exposed_families(stack: Stack) -> set[str]:
    httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
               content=infer_json([[5255.7, 46, 1, 14, 19, 5.6, 1, 0]]), headers=bearer())
    texts = [httpx.get(f"http://{service}/metrics").text
             for service in (stack.gateway_http, stack.sidecar_http)]
    # `aios envoy serve`'s metrics, from the same server class in this process.
    registry = CollectorRegistry()
    gateway = GatewaySettings(auth={"jwks_file": "/keys/jwks.json"})
    XdsServer(gateway, EnvoyOptions(), {m: table_from_route(m, r, 1, None)
                                        for m, r in gateway.models.items()}, registry)
    texts.append(generate_latest(registry).decode())
    return {family(line.split()[2]) for text in texts for line in text.splitlines()
            if line.startswith("# TYPE ")}


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dashboard_exprs() -> list[str]:
    doc = json.loads((REPO / "deploy/grafana/aios-gateway.json").read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    doc = yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_every_metric_in_the_dashboard_and_alerts_exists(stack: Stack) -> None:
    families = exposed_families(stack)
    used = {m for e in [*dashboard_exprs(), *alert_exprs()] for m in METRIC.findall(e)}
    assert used, "no metrics found in the dashboard or alerts"
    missing = sorted(m for m in used if family(m) not in families)
    assert not missing, missing


def test_alerts_cover_what_ops_must_hear_about() -> None:
    names = {r["alert"] for g in yaml.safe_load(
        (REPO / "deploy/prometheus/alerts.yaml").read_text())["groups"] for r in g["rules"]}
    assert {"AiosLatencySLOBreach", "AiosFeatureDrift", "AiosParityFailure",
            "AiosDecisionLogDrops", "AiosQuotaRedisFailOpen", "AiosEnvoyConfigRejected"} <= names
