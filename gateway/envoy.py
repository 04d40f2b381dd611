"""Envoy v3 configuration from our routing tables and auth/quota config. Pure logic.

Built from the typed `envoy_data_plane` classes, so the output is well-formed by
construction. What Envoy enforces, and how it maps to what the gateway does:

- a model's split is a route with `weighted_clusters`, one entry per target. Envoy cannot
  rewrite the path per weighted cluster, so each entry sets ``x-aios-version`` (and the
  target's name); the sidecar serves an unpinned call at that version. Envoy's split is
  per request, not sticky: a sticky key is a gateway feature.
- a shadow is a `request_mirror_policies` entry with the shadow's fraction. Envoy marks a
  mirrored copy by appending ``-shadow`` to its Host; the route sets
  ``x-aios-shadow-model``/``-version``, which the sidecar applies to such copies only.
- `jwt_authn` verifies tokens (issuer, audience, a JWKS: never an HMAC secret), copies
  tenant and subject into the headers the sidecar records, and `rbac` allows an
  inference only with an ``infer:<model>`` or ``infer:*`` scope (deny unless allowed).
- quotas become rate-limit descriptors (tenant, model) for a rate-limit service, whose
  own config `ratelimit_service_config` writes (envoyproxy/ratelimit's format).
- gRPC carries the model name inside the message, which Envoy's router cannot see: the
  exported listener routes REST; keep gRPC on the gateway.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import betterproto2
from envoy_data_plane.envoy.config.bootstrap.v3 import (
    Admin,
    Bootstrap,
    BootstrapDynamicResources,
    BootstrapStaticResources,
)
from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiConfigSource,
    ApiConfigSourceApiType,
    ApiVersion,
    ConfigSource,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpUri,
    Node,
    RuntimeFractionalPercent,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.ratelimit.v3 import RateLimitServiceConfig
from envoy_data_plane.envoy.config.rbac.v3 import (
    Permission,
    PermissionSet,
    Policy,
    Principal,
    RbacAction,
    SourcedMetadata,
)
from envoy_data_plane.envoy.config.rbac.v3 import Rbac as RbacRules
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RateLimit,
    RateLimitAction,
    RateLimitActionGenericKey,
    RateLimitActionRequestHeaders,
    Route,
    RouteAction,
    RouteActionRequestMirrorPolicy,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
    WeightedClusterClusterWeight,
)
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import (
    JwtAuthentication,
    JwtClaimToHeader,
    JwtProvider,
    JwtProviderNormalizePayload,
    JwtRequirement,
    JwtRequirementOrList,
    RemoteJwks,
    RequirementRule,
)
from envoy_data_plane.envoy.extensions.filters.http.ratelimit.v3 import RateLimit as RateLimitFilter
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    Rds,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import UpstreamTlsContext
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    ListMatcher,
    MetadataMatcher,
    MetadataMatcherPathSegment,
    PathMatcher,
    RegexMatcher,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType
from envoy_data_plane.google.protobuf import Any as AnyMessage

from aios.config import (
    AuthSettings,
    ConfigError,
    EnvoyOptions,
    GatewaySettings,
    QuotaSettings,
    UpstreamSettings,
    split_address,
)
from aios.errors import error_body
from aios.plane import (
    REVISION_HEADER,
    SHADOW_HEADER,
    SHADOW_MODEL_HEADER,
    SHADOW_VERSION_HEADER,
    SUBJECT_HEADER,
    TARGET_HEADER,
    TENANT_HEADER,
    VERSION_HEADER,
)
from gateway.routing import ModelTable

# A client must not choose these: Envoy drops them before our routes set them.
ROUTING_HEADERS = (VERSION_HEADER, TARGET_HEADER, REVISION_HEADER, SHADOW_MODEL_HEADER,
                   SHADOW_VERSION_HEADER, SHADOW_HEADER)

ROUTE_CONFIG_NAME = "aios_routes"
LISTENER_NAME = "aios_rest"
JWKS_CLUSTER = "aios_jwks"
RATELIMIT_CLUSTER = "aios_ratelimit"
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "jwt_payload"
ADS_CLUSTER = "aios_xds"
# Paths a load balancer may call without a token: KServe health and server metadata.
HEALTH_PATHS = ("/v2", "/v2/health/live", "/v2/health/ready")
# /v2/models/<m>[/versions/<v>] and .../ready: what `open_model_calls` can open.
_OPEN_CALL_PATTERNS = {"metadata": "", "ready": "/ready", "config": "/config",
                       "stats": "/stats"}


def cluster_name(backend: str) -> str:
    """The Envoy cluster of one of our backends (a sidecar's REST port)."""
    return f"aios_backend_{backend}"


def _duration(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def _endpoints(name: str, address: str) -> ClusterLoadAssignment:
    host, port = split_address(address)
    return ClusterLoadAssignment(cluster_name=name, endpoints=[LocalityLbEndpoints(
        lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=Address(
            socket_address=SocketAddress(address=host, port_value=port))))])])


def _http2_options() -> dict[str, AnyMessage]:
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": AnyMessage.pack(
        UpstreamHttpProtocolOptions(explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions())))}


def backend_cluster(backend: str, upstream: UpstreamSettings, settings: GatewaySettings,
                    ) -> Cluster:
    """A sidecar's REST endpoint, ejected after failures as the gateway's breaker does."""
    name = cluster_name(backend)
    res = settings.resilience
    return Cluster(
        name=name, type=ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_duration(upstream.connect_timeout_s),
        load_assignment=_endpoints(name, upstream.http),
        outlier_detection=OutlierDetection(
            consecutive_5xx=res.eject_after_failures,
            base_ejection_time=_duration(res.ejection_s)))


def clusters(settings: GatewaySettings, options: EnvoyOptions) -> list[Cluster]:
    """One cluster per backend, plus the JWKS and rate-limit services where used."""
    out = [backend_cluster(name, upstream, settings)
           for name, upstream in sorted(settings.backends.items())]
    auth = settings.auth
    if auth.enabled and auth.jwks_url:
        url = urlsplit(auth.jwks_url)
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        out.append(Cluster(
            name=JWKS_CLUSTER, type=ClusterDiscoveryType.STRICT_DNS,
            connect_timeout=_duration(auth.jwks_fetch_timeout_s),
            load_assignment=_endpoints(JWKS_CLUSTER, f"{url.hostname}:{port}"),
            transport_socket=TransportSocket(
                name="envoy.transport_sockets.tls",
                typed_config=AnyMessage.pack(UpstreamTlsContext(sni=url.hostname or "")),
            ) if tls else None))
    if settings.quota.enabled:
        out.append(Cluster(
            name=RATELIMIT_CLUSTER, type=ClusterDiscoveryType.STRICT_DNS,
            connect_timeout=_duration(1.0),
            load_assignment=_endpoints(RATELIMIT_CLUSTER, options.ratelimit_service),
            typed_extension_protocol_options=_http2_options()))
    return out


def _set(name: str, value: str) -> HeaderValueOption:
    # Overwrite: a value the client sent under our header name must not survive.
    return HeaderValueOption(
        header=HeaderValue(key=name, value=value),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD)


def _rate_limits(model: str, quota: QuotaSettings) -> list[RateLimit]:
    if not quota.enabled:
        return []
    return [RateLimit(actions=[
        RateLimitAction(request_headers=RateLimitActionRequestHeaders(
            header_name=TENANT_HEADER, descriptor_key="tenant")),
        RateLimitAction(generic_key=RateLimitActionGenericKey(
            descriptor_key="model", descriptor_value=model)),
    ])]


def _timeout(settings: GatewaySettings, backend: str, own: float | None) -> datetime.timedelta:
    return _duration(own or settings.backends[backend].request_timeout_s)


def _mirror(table: ModelTable) -> tuple[list[RouteActionRequestMirrorPolicy],
                                        list[HeaderValueOption]]:
    shadow = table.shadow
    if shadow is None:
        return [], []
    # Parts per million: fractions like 0.125 survive exactly.
    numerator = round(shadow.fraction * 1_000_000)
    policy = RouteActionRequestMirrorPolicy(
        cluster=cluster_name(shadow.backend),
        runtime_fraction=RuntimeFractionalPercent(
            runtime_key=f"aios.shadow.{table.model}",
            default_value=FractionalPercent(
                numerator=numerator, denominator=FractionalPercentDenominatorType.MILLION)))
    headers = [_set(SHADOW_MODEL_HEADER, shadow.model)]
    if shadow.version:
        headers.append(_set(SHADOW_VERSION_HEADER, shadow.version))
    return [policy], headers


def model_routes(table: ModelTable, settings: GatewaySettings) -> list[Route]:
    """A model's routes: pinned versions first, then the weighted split (with its mirror)."""
    model = table.model
    revision = _set(REVISION_HEADER, str(table.revision))
    limits = _rate_limits(model, settings.quota)
    # A mirrored request's body is buffered: up to the size the gateway accepts.
    body_limit = settings.server.max_body_bytes
    routes = []
    heaviest = max(table.targets, key=lambda t: t.weight)
    # The gateway shadows pinned calls too.
    mirrors, shadow_headers = _mirror(table)
    seen: set[str] = set()
    for target in table.targets:
        if not target.version or target.version in seen:
            continue
        seen.add(target.version)
        routes.append(Route(
            name=f"{model}/versions/{target.version}", request_body_buffer_limit=body_limit,
            match=RouteMatch(path_separated_prefix=f"/v2/models/{model}/versions/"
                                                   f"{target.version}"),
            route=RouteAction(cluster=cluster_name(target.backend), rate_limits=limits,
                              request_mirror_policies=mirrors,
                              timeout=_timeout(settings, target.backend, target.timeout_s)),
            request_headers_to_add=[revision, _set(TARGET_HEADER, target.name),
                                    *shadow_headers]))
    # A version no target serves goes where the gateway sends it: the heaviest backend.
    routes.append(Route(
        name=f"{model}/versions/other", request_body_buffer_limit=body_limit,
        match=RouteMatch(safe_regex=RegexMatcher(
            regex=f"/v2/models/{_re(model)}/versions/[0-9]+(/.*)?")),
        route=RouteAction(cluster=cluster_name(heaviest.backend), rate_limits=limits,
                          request_mirror_policies=mirrors,
                          timeout=_timeout(settings, heaviest.backend, heaviest.timeout_s)),
        request_headers_to_add=[revision, _set(TARGET_HEADER, heaviest.name),
                                *shadow_headers]))
    weighted = [t for t in table.targets if t.weight > 0]
    routes.append(Route(
        name=model, request_body_buffer_limit=body_limit,
        match=RouteMatch(path_separated_prefix=f"/v2/models/{model}"),
        route=RouteAction(
            weighted_clusters=WeightedCluster(clusters=[
                WeightedClusterClusterWeight(
                    name=cluster_name(t.backend), weight=t.weight,
                    request_headers_to_add=[_set(TARGET_HEADER, t.name)] + (
                        [_set(VERSION_HEADER, t.version)] if t.version else []))
                for t in weighted]),
            request_mirror_policies=mirrors, rate_limits=limits,
            timeout=_timeout(settings, heaviest.backend,
                             max((t.timeout_s or 0.0 for t in weighted), default=0.0)
                             or None)),
        request_headers_to_add=[revision, *shadow_headers]))
    return routes


def _re(text: str) -> str:
    # Model names are [A-Za-z0-9_.-]: only the dot is special in RE2.
    return text.replace(".", r"\.")


def route_configuration(settings: GatewaySettings,
                        tables: Mapping[str, ModelTable]) -> RouteConfiguration:
    """Every model's routes on one virtual host; anything else is a KServe-shaped 404."""
    routes = [r for model in sorted(tables) for r in model_routes(tables[model], settings)]
    routes.append(Route(
        name="not_found", match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(
            status=404, body=DataSource(inline_string=error_body("no such endpoint").decode()))))
    return RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        # Least specific first: the virtual host drops a client's routing headers, and
        # only then do routes and weighted clusters set ours.
        most_specific_header_mutations_wins=True,
        virtual_hosts=[VirtualHost(name="aios", domains=["*"], routes=routes,
                                   request_headers_to_remove=list(ROUTING_HEADERS))])


def _open_path_regex(auth: AuthSettings) -> str | None:
    tails = sorted(_OPEN_CALL_PATTERNS[k] for k in auth.open_model_calls)
    if not tails:
        return None
    alternatives = "|".join(t.lstrip("/") for t in tails if t)
    tail = f"(/({alternatives}))?" if alternatives else ""
    if "" not in tails:  # the metadata call (no tail) is not open
        tail = f"/({alternatives})"
    return f"/v2/models/[A-Za-z0-9_.\\-]+(/versions/[0-9]+)?{tail}"


def jwt_providers(auth: AuthSettings) -> dict[str, JwtProvider]:
    """One provider per public key source (JWKS file, JWKS URL). An HS256 secret is never
    exported: whoever could read Envoy's config could then mint tokens. ConfigError when
    auth is on and there is no JWKS."""
    if not (auth.jwks_file or auth.jwks_url):
        raise ConfigError("gateway.auth: Envoy verifies tokens with public keys only: set "
                          "jwks_file or jwks_url (an HS256 secret is never exported)")

    def provider(**source: Any) -> JwtProvider:
        return JwtProvider(
            issuer=auth.issuer, audiences=[auth.audience],
            require_expiration=auth.require_exp, clock_skew_seconds=math.ceil(auth.leeway_s),
            payload_in_metadata=JWT_PAYLOAD_KEY,
            normalize_payload_in_metadata=JwtProviderNormalizePayload(
                space_delimited_claims=["scope"]),
            claim_to_headers=[JwtClaimToHeader(header_name=TENANT_HEADER,
                                               claim_name=auth.tenant_claim),
                              JwtClaimToHeader(header_name=SUBJECT_HEADER, claim_name="sub")],
            **source)

    providers = {}
    if auth.jwks_file:
        providers["aios_jwks_file"] = provider(
            local_jwks=DataSource(filename=str(auth.jwks_file)))
    if auth.jwks_url:
        providers["aios_jwks_url"] = provider(remote_jwks=RemoteJwks(
            http_uri=HttpUri(uri=auth.jwks_url, cluster=JWKS_CLUSTER,
                             timeout=_duration(auth.jwks_fetch_timeout_s)),
            cache_duration=_duration(auth.jwks_cache_ttl_s)))
    return providers


def jwt_filter(auth: AuthSettings) -> JwtAuthentication:
    """Verify tokens on model calls; open calls and health checks need none."""
    providers = jwt_providers(auth)
    names = sorted(providers)
    requires = JwtRequirement(provider_name=names[0]) if len(names) == 1 else JwtRequirement(
        requires_any=JwtRequirementOrList(
            requirements=[JwtRequirement(provider_name=n) for n in names]))
    rules = []
    open_regex = _open_path_regex(auth)
    if open_regex is not None:
        rules.append(RequirementRule(match=RouteMatch(
            safe_regex=RegexMatcher(regex=open_regex),
            headers=[HeaderMatcher(name=":method",
                                   string_match=StringMatcher(exact="GET"))])))
    rules.append(RequirementRule(match=RouteMatch(prefix="/v2/models/"), requires=requires))
    return JwtAuthentication(providers=providers, rules=rules)


def _path(**match: Any) -> Permission:
    return Permission(url_path=PathMatcher(path=StringMatcher(**match)))


def _has_scope(scope: str) -> ValueMatcher:
    return ValueMatcher(list_match=ListMatcher(
        one_of=ValueMatcher(string_match=StringMatcher(exact=scope))))


def rbac_filter(auth: AuthSettings, models: Sequence[str]) -> Rbac:
    """Allow a model call only with its scope (or ``infer:*``); deny what no policy allows."""
    policies = {
        "health": Policy(permissions=[Permission(or_rules=_permission_set(
            [_path(exact=p) for p in HEALTH_PATHS]))], principals=[Principal(any=True)]),
    }
    open_regex = _open_path_regex(auth)
    if open_regex is not None:
        policies["open_model_calls"] = Policy(
            permissions=[Permission(and_rules=_permission_set([
                Permission(header=HeaderMatcher(name=":method",
                                                string_match=StringMatcher(exact="GET"))),
                _path(safe_regex=RegexMatcher(regex=open_regex)),
            ]))],
            principals=[Principal(any=True)])
    for model in models:
        policies[f"infer:{model}"] = Policy(
            permissions=[Permission(or_rules=_permission_set([
                _path(exact=f"/v2/models/{model}"),
                _path(prefix=f"/v2/models/{model}/")]))],
            principals=[Principal(sourced_metadata=SourcedMetadata(
                metadata_matcher=MetadataMatcher(
                    filter=JWT_FILTER,
                    path=[MetadataMatcherPathSegment(key=JWT_PAYLOAD_KEY),
                          MetadataMatcherPathSegment(key="scope")],
                    value=value))) for value in (_has_scope(f"infer:{model}"),
                                            _has_scope("infer:*"))])
    return Rbac(rules=RbacRules(action=RbacAction.ALLOW, policies=policies))


def _permission_set(rules: list[Permission]) -> PermissionSet:
    return PermissionSet(rules=rules)


def http_filters(settings: GatewaySettings, models: Sequence[str],
                 options: EnvoyOptions) -> list[HttpFilter]:
    """jwt_authn → rbac → ratelimit → router, each present only if its feature is on."""
    filters = []
    if settings.auth.enabled:
        filters.append(HttpFilter(name=JWT_FILTER,
                                  typed_config=AnyMessage.pack(jwt_filter(settings.auth))))
        filters.append(HttpFilter(name="envoy.filters.http.rbac", typed_config=AnyMessage.pack(
            rbac_filter(settings.auth, models))))
    if settings.quota.enabled:
        filters.append(HttpFilter(name="envoy.filters.http.ratelimit",
                                  typed_config=AnyMessage.pack(RateLimitFilter(
            domain=options.ratelimit_domain,
            timeout=_duration(settings.quota.redis_timeout_ms / 1000),
            # As the gateway's default: an unreachable limiter does not stop traffic.
            failure_mode_deny=settings.quota.default.on_redis_error == "fail_closed",
            rate_limit_service=RateLimitServiceConfig(
                grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(
                    cluster_name=RATELIMIT_CLUSTER)),
                transport_api_version=ApiVersion.V3)))))
    filters.append(HttpFilter(name="envoy.filters.http.router",
                              typed_config=AnyMessage.pack(Router())))
    return filters


def listener(settings: GatewaySettings, tables: Mapping[str, ModelTable],
             options: EnvoyOptions, rds: bool = False) -> Listener:
    """The REST listener: an HTTP connection manager with our filters and routes (inline,
    or with ``rds`` by name over ADS)."""
    limits = settings.server
    hcm = HttpConnectionManager(
        stat_prefix="aios", codec_type=HttpConnectionManagerCodecType.AUTO,
        http_filters=http_filters(settings, sorted(tables), options),
        max_request_headers_kb=max(1, limits.max_header_bytes // 1024),
        request_headers_timeout=_duration(limits.header_timeout_s),
        common_http_protocol_options=HttpProtocolOptions(
            idle_timeout=_duration(limits.keepalive_timeout_s),
            max_headers_count=limits.max_headers),
        **({"rds": Rds(config_source=_ads_source(), route_config_name=ROUTE_CONFIG_NAME)}
           if rds else {"route_config": route_configuration(settings, tables)}))
    return Listener(
        name=LISTENER_NAME,
        address=Address(socket_address=SocketAddress(address=options.listen_host,
                                                     port_value=options.listen_port)),
        filter_chains=[FilterChain(filters=[Filter(
            name="envoy.filters.network.http_connection_manager",
            typed_config=AnyMessage.pack(hcm))])])


def _ads_source() -> ConfigSource:
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def bootstrap(settings: GatewaySettings, tables: Mapping[str, ModelTable],
              options: EnvoyOptions) -> Bootstrap:
    """A complete static Envoy bootstrap: listener, routes and clusters."""
    return Bootstrap(
        admin=Admin(address=Address(socket_address=SocketAddress(
            address="127.0.0.1", port_value=options.admin_port))),
        static_resources=BootstrapStaticResources(
            listeners=[listener(settings, tables, options)],
            clusters=clusters(settings, options)))


def ads_bootstrap(options: EnvoyOptions, node_id: str) -> Bootstrap:
    """A bootstrap that takes listeners, routes and clusters from `aios envoy serve`."""
    assert options.xds_address is not None
    ads = _ads_source()
    return Bootstrap(
        node=Node(id=node_id, cluster="aios"),
        admin=Admin(address=Address(socket_address=SocketAddress(
            address="127.0.0.1", port_value=options.admin_port))),
        dynamic_resources=BootstrapDynamicResources(
            ads_config=ApiConfigSource(
                api_type=ApiConfigSourceApiType.GRPC, transport_api_version=ApiVersion.V3,
                grpc_services=[GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(
                    cluster_name=ADS_CLUSTER))]),
            lds_config=ads, cds_config=ads),
        static_resources=BootstrapStaticResources(clusters=[Cluster(
            name=ADS_CLUSTER, type=ClusterDiscoveryType.STRICT_DNS,
            connect_timeout=_duration(1.0),
            load_assignment=_endpoints(ADS_CLUSTER, options.xds_address),
            typed_extension_protocol_options=_http2_options())]))


def ratelimit_service_config(quota: QuotaSettings, models: Sequence[str],
                             domain: str) -> dict[str, Any]:
    """envoyproxy/ratelimit's config for our descriptors: per tenant and model, the
    tenant's rate (the service has no burst: it counts whole seconds)."""

    def per_model(rate: float) -> list[dict[str, Any]]:
        return [{"key": "model", "value": m, "rate_limit": {
            "unit": "second", "requests_per_unit": math.ceil(rate)}} for m in models]

    descriptors = [{"key": "tenant", "value": name, "descriptors": per_model(t.rate_per_s)}
                   for name, t in sorted(quota.tenants.items())]
    descriptors.append({"key": "tenant", "descriptors": per_model(quota.default.rate_per_s)})
    return {"domain": domain, "descriptors": descriptors}


def proto_json_name(field: str) -> str:
    """protobuf's JSON name of a field (its ToJsonName): ``consecutive_5xx`` is
    ``consecutive5xx``. betterproto2's camel case writes ``consecutive5Xx``, which Envoy
    rejects as an unknown field."""
    out, upper = [], False
    for char in field:
        if char == "_":
            upper = True
        else:
            out.append(char.upper() if upper else char)
            upper = False
    return "".join(out)


def to_json(message: betterproto2.Message) -> dict[str, Any]:
    """A message in Envoy's JSON form (typed configs carry ``@type``)."""
    # to_dict calls its casing with each field name; a plain function is what it needs.
    casing = cast(betterproto2.Casing, proto_json_name)
    data: dict[str, Any] = message.to_dict(casing=casing)
    return data
