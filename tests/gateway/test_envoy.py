"""`gateway.envoy`: the Envoy config matches the routing table, auth and quota config."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
from envoy_data_plane.envoy.config.route.v3 import Route, RouteConfiguration
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from envoy_data_plane.envoy.type.v3 import FractionalPercentDenominatorType

from aios.config import ConfigError, EnvoyOptions, GatewaySettings, ModelRoute
from gateway.envoy import (
    bootstrap,
    cluster_name,
    clusters,
    jwt_filter,
    ratelimit_service_config,
    rbac_filter,
    route_configuration,
    to_json,
)
from gateway.routestore import Change, FileRouteStore, table_from_route
from gateway.routing import ModelTable
from tests.helpers import REPO, TEST_HS256_SECRET, write_config

BACKENDS = {"a": {"http": "sidecar-a:8090", "grpc": "sidecar-a:8091"},
            "b": {"http": "10.0.0.7:9090", "grpc": "10.0.0.7:9091", "request_timeout_s": 12}}
CANARY = {"targets": {"stable": {"backend": "a", "version": "1", "weight": 70},
                      "canary": {"backend": "b", "version": "2", "weight": 30}},
          "shadow": {"backend": "b", "version": "2", "fraction": 0.125}}


JWKS_FILE = "/keys/jwks.json"


def settings(**overrides: Any) -> GatewaySettings:
    data: dict[str, Any] = {"backends": BACKENDS, "models": {
        "claims_risk": CANARY, "fraud.v2": {"backend": "a"}}, "auth": {"jwks_file": JWKS_FILE}}
    data.update(overrides)
    return GatewaySettings.model_validate(data)


def tables(gw: GatewaySettings, revision: int = 7) -> dict[str, ModelTable]:
    return {m: table_from_route(m, r, revision, None) for m, r in gw.models.items()}


def routes(config: RouteConfiguration) -> dict[str, Route]:
    return {r.name: r for r in config.virtual_hosts[0].routes}


def headers(options: Any) -> dict[str, str]:
    return {h.header.key: h.header.value for h in options}


def test_the_bootstrap_is_well_formed_envoy_json() -> None:
    gw = settings()
    config = bootstrap(gw, tables(gw), EnvoyOptions(listen_port=10123))
    assert Bootstrap.FromString(bytes(config)) == config
    data = json.loads(json.dumps(to_json(config)))
    # protobuf's JSON names, which Envoy reads (not betterproto2's camel case).
    backend = data["staticResources"]["clusters"][0]
    assert backend["outlierDetection"] == {"consecutive5xx": 5, "baseEjectionTime": "10s"}
    hcm = data["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]
    assert hcm["typedConfig"]["@type"].endswith("HttpConnectionManager")
    assert data["staticResources"]["listeners"][0]["address"]["socketAddress"][
        "portValue"] == 10123


@pytest.mark.parametrize("weights", [(70, 30), (50, 50), (99, 1), (100, 0), (0, 100)])
def test_weighted_clusters_carry_the_tables_weights_and_versions(
        weights: tuple[int, int]) -> None:
    gw = settings()
    route = ModelRoute.model_validate({**CANARY, "targets": {
        "stable": {**CANARY["targets"]["stable"], "weight": weights[0]},
        "canary": {**CANARY["targets"]["canary"], "weight": weights[1]}}})
    table = table_from_route("claims_risk", route, 12, None)
    split = routes(route_configuration(gw, {"claims_risk": table}))["claims_risk"]
    assert split.match.path_separated_prefix == "/v2/models/claims_risk"
    got = [(c.name, c.weight, headers(c.request_headers_to_add))
           for c in split.route.weighted_clusters.clusters]
    expected = [(cluster_name(b), w, {"x-aios-target": t, "x-aios-version": v})
                for t, b, v, w in (("stable", "a", "1", weights[0]),
                                   ("canary", "b", "2", weights[1])) if w > 0]
    assert got == expected
    assert headers(split.request_headers_to_add)["x-aios-route-revision"] == "12"


def test_the_shadow_is_a_mirror_policy_with_its_fraction() -> None:
    gw = settings()
    config = routes(route_configuration(gw, tables(gw)))
    for name in ("claims_risk", "claims_risk/versions/1", "claims_risk/versions/other"):
        (mirror,) = config[name].route.request_mirror_policies
        assert mirror.cluster == cluster_name("b")
        fraction = mirror.runtime_fraction.default_value
        assert (fraction.numerator, fraction.denominator) == (
            125_000, FractionalPercentDenominatorType.MILLION)
        assert headers(config[name].request_headers_to_add)["x-aios-shadow-version"] == "2"
    assert config["fraud.v2"].route.request_mirror_policies == []


def test_pinned_versions_go_to_the_backend_that_serves_them() -> None:
    gw = settings()
    config = routes(route_configuration(gw, tables(gw)))
    assert config["claims_risk/versions/1"].route.cluster == cluster_name("a")
    assert config["claims_risk/versions/2"].route.cluster == cluster_name("b")
    assert config["claims_risk/versions/2"].route.timeout.total_seconds() == 12
    # A version no target names goes to the heaviest target, as the gateway sends it.
    other = config["claims_risk/versions/other"]
    assert other.route.cluster == cluster_name("a")
    assert other.match.safe_regex.regex == "/v2/models/claims_risk/versions/[0-9]+(/.*)?"
    assert config["fraud.v2/versions/other"].match.safe_regex.regex.startswith(
        r"/v2/models/fraud\.v2/")
    # The client's own routing headers are dropped before ours are set.
    vhost = route_configuration(gw, tables(gw)).virtual_hosts[0]
    assert {"x-aios-version", "x-aios-shadow-version", "x-aios-target"} <= set(
        vhost.request_headers_to_remove)
    assert vhost.routes[-1].direct_response.status == 404


def test_clusters_name_every_backend_address() -> None:
    gw = settings(auth={"jwks_url": "https://idp.example/.well-known/jwks.json"})
    found = {c.name: c for c in clusters(gw, EnvoyOptions(ratelimit_service="rl:8081"))}
    for backend, upstream in BACKENDS.items():
        host, port = upstream["http"].split(":")
        addr = found[cluster_name(backend)].load_assignment.endpoints[0].lb_endpoints[
            0].endpoint.address.socket_address
        assert (addr.address, addr.port_value) == (host, int(port))
        assert found[cluster_name(backend)].outlier_detection.consecutive_5xx == 5
    jwks = found["aios_jwks"]
    assert jwks.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address\
        .port_value == 443
    assert jwks.transport_socket is not None
    assert found["aios_ratelimit"].load_assignment.endpoints[0].lb_endpoints[0].endpoint\
        .address.socket_address.address == "rl"


@pytest.mark.parametrize("auth, providers", [
    ({"jwks_file": JWKS_FILE}, {"aios_jwks_file"}),
    ({"jwks_url": "http://idp:8080/jwks"}, {"aios_jwks_url"}),
    ({"jwks_file": JWKS_FILE, "jwks_url": "http://idp:8080/jwks"},
     {"aios_jwks_file", "aios_jwks_url"}),
    ({"jwks_file": JWKS_FILE, "hs256_secret": TEST_HS256_SECRET}, {"aios_jwks_file"}),
])
def test_jwt_providers_verify_the_configured_issuer_and_audience(
        auth: dict[str, Any], providers: set[str]) -> None:
    gw = settings(auth={"issuer": "https://idp.example", "audience": "claims-api",
                        "leeway_s": 12.5, **auth})
    jwt = jwt_filter(gw.auth)
    assert set(jwt.providers) == providers
    for provider in jwt.providers.values():
        assert (provider.issuer, provider.audiences) == ("https://idp.example", ["claims-api"])
        assert provider.clock_skew_seconds == 13 and provider.require_expiration
        assert {(c.claim_name, c.header_name) for c in provider.claim_to_headers} == {
            ("tenant", "x-aios-tenant"), ("sub", "x-aios-subject")}
    # Model calls need a token, except the open ones (GET metadata and ready).
    open_rule, model_rule = jwt.rules
    assert open_rule.requires is None
    assert open_rule.match.safe_regex.regex == \
        "/v2/models/[A-Za-z0-9_.\\-]+(/versions/[0-9]+)?(/(ready))?"
    assert model_rule.match.prefix == "/v2/models/" and model_rule.requires is not None


@pytest.mark.parametrize("auth", [{"hs256_secret": TEST_HS256_SECRET}, {}],
                         ids=["HS256 only", "no key"])
def test_an_hmac_secret_is_never_exported(auth: dict[str, Any]) -> None:
    gw = settings(auth=auth)
    with pytest.raises(ConfigError, match=r"gateway\.auth: Envoy verifies tokens with public "
                       "keys only: set jwks_file or jwks_url"):
        jwt_filter(gw.auth)
    both = settings(auth={**auth, "jwks_file": JWKS_FILE})
    exported = json.dumps(to_json(bootstrap(both, tables(both), EnvoyOptions())))
    assert TEST_HS256_SECRET not in exported and '"oct"' not in exported


def test_rbac_allows_a_model_only_with_its_scope() -> None:
    gw = settings()
    rbac = rbac_filter(gw.auth, ["claims_risk"]).rules
    policy = rbac.policies["infer:claims_risk"]
    matchers = [p.sourced_metadata.metadata_matcher for p in policy.principals]
    assert [m.value.list_match.one_of.string_match.exact for m in matchers] == [
        "infer:claims_risk", "infer:*"]
    assert [(m.filter, m.path[1].key) for m in matchers] == [
        ("envoy.filters.http.jwt_authn", "scope")] * 2
    assert set(rbac.policies) == {"health", "open_model_calls", "infer:claims_risk"}


def test_rate_limit_descriptors_per_tenant_and_model() -> None:
    gw = settings(quota={"tenants": {"acme": {"rate_per_s": 2.5, "burst": 5}},
                         "default": {"rate_per_s": 40}})
    split = routes(route_configuration(gw, tables(gw)))["claims_risk"]
    (limit,) = split.route.rate_limits
    assert limit.actions[0].request_headers.header_name == "x-aios-tenant"
    assert (limit.actions[1].generic_key.descriptor_key,
            limit.actions[1].generic_key.descriptor_value) == ("model", "claims_risk")
    service = ratelimit_service_config(gw.quota, ["claims_risk"], "aios")
    assert service["descriptors"] == [
        {"key": "tenant", "value": "acme", "descriptors": [
            {"key": "model", "value": "claims_risk",
             "rate_limit": {"unit": "second", "requests_per_unit": 3}}]},
        {"key": "tenant", "descriptors": [
            {"key": "model", "value": "claims_risk",
             "rate_limit": {"unit": "second", "requests_per_unit": 40}}]}]


@pytest.mark.parametrize("off, absent", [
    ({"auth": {"enabled": False}}, {"envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"}),
    ({"quota": {"enabled": False}}, {"envoy.filters.http.ratelimit"}),
])
def test_features_that_are_off_leave_no_filter(off: dict[str, Any], absent: set[str]) -> None:
    gw = settings(**off)
    config = bootstrap(gw, tables(gw), EnvoyOptions())
    hcm = config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.unpack()
    assert isinstance(hcm, HttpConnectionManager)
    names = [f.name for f in hcm.http_filters]
    assert not absent & set(names) and names[-1] == "envoy.filters.http.router"
    if "quota" in off:
        assert "aios_ratelimit" not in {c.name for c in config.static_resources.clusters}


async def test_export_reads_the_live_routing_table(tmp_path: Path) -> None:
    """`aios envoy export` writes what the store holds now, not the config's seed."""
    state = tmp_path / "routes.json"
    config = {"gateway": {"backends": BACKENDS, "models": {"claims_risk": CANARY},
                          "routing": {"state_file": str(state)},
                          "auth": {"jwks_file": JWKS_FILE}}}
    path = write_config(tmp_path / "stack.yaml", config)
    gw = GatewaySettings.model_validate(config["gateway"])
    store = FileRouteStore(state)
    seeded = (await store.load(tables(gw, 1)))["claims_risk"]
    moved = ModelRoute.model_validate({**CANARY, "targets": {
        "stable": {**CANARY["targets"]["stable"], "weight": 40},
        "canary": {**CANARY["targets"]["canary"], "weight": 60}}})
    after = table_from_route("claims_risk", moved, 2, seeded)
    await store.commit(after, 1, Change("claims_risk", 2, "ops", 0.0, "weights", "", None, {}))
    out = tmp_path / "envoy.yaml"
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "aios_cli", "envoy", "export", "--config", str(path),
                         "--out", str(out), "--ratelimit-out", str(tmp_path / "rl.yaml")],
        cwd=REPO, check=True, capture_output=True)
    data = yaml.safe_load(out.read_text())
    hcm = data["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0][
        "typedConfig"]
    split = {r["name"]: r for r in hcm["routeConfig"]["virtualHosts"][0]["routes"]}[
        "claims_risk"]
    assert [(c["name"], c["weight"]) for c in split["route"]["weightedClusters"][
        "clusters"]] == [("aios_backend_a", 40), ("aios_backend_b", 60)]
    assert {"header": {"key": "x-aios-route-revision", "value": "2"},
            "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"} in split["requestHeadersToAdd"]
    assert yaml.safe_load((tmp_path / "rl.yaml").read_text())["domain"] == "aios"


def test_the_gateways_edge_limits_carry_over() -> None:
    gw = settings(server={"http_port": 8080, "grpc_port": 8081, "max_body_bytes": 1 << 20,
                          "max_header_bytes": 32 * 1024, "max_headers": 50,
                          "keepalive_timeout_s": 7, "header_timeout_s": 4})
    config = bootstrap(gw, tables(gw), EnvoyOptions())
    hcm = config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.unpack()
    assert isinstance(hcm, HttpConnectionManager)
    assert (hcm.max_request_headers_kb, hcm.request_headers_timeout.total_seconds()) == (32, 4)
    options = hcm.common_http_protocol_options
    assert (options.idle_timeout.total_seconds(), options.max_headers_count) == (7, 50)
    # Mirrored bodies are buffered up to what the gateway accepts.
    model_routes = [r for r in hcm.route_config.virtual_hosts[0].routes if r.route]
    assert {r.request_body_buffer_limit for r in model_routes} == {1 << 20}
