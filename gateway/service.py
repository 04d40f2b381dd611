"""The gateway's lifespan: backends, Redis, the stores, the admin, audit, review and
replay APIs and the shadow workers, opened around one data plane (`gateway.plane`) and
closed after. Apart from the plane so that mypyc can compile the plane (it does not
compile an async generator)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from prometheus_client import CollectorRegistry

from aios.config import GatewaySettings
from aios.metrics import RequestMetrics
from aios.redisconf import RedisEndpoint
from aios.reviewstore import open_review_store
from aios.serve import ServiceParts, run_service
from aios.signedlog import SignedLog
from aios.tracing import TRACING_OFF, Tracing, TracingSettings
from aios.upstream import GrpcUpstream, HttpUpstream
from gateway.admin import RoutingAdmin
from gateway.admin_grpc import RoutingAdminService, register_admin
from gateway.admin_rest import AdminAuth, admin_routes
from gateway.audit import AuditReader
from gateway.audit_grpc import AuditService, register_audit
from gateway.audit_rest import audit_routes
from gateway.auth import build_authenticator
from gateway.batching import BackendBatching, GrpcCalls, calls_histogram
from gateway.breaker import Breaker
from gateway.console import console_routes
from gateway.health import HealthReader
from gateway.oidc import OidcLogin
from gateway.plane import SEQUENCE_REDIS_TIMEOUT_S, Backend, GatewayPlane
from gateway.quota import LocalLimiter, Quotas, RedisLimiter, redis_client
from gateway.replay import Replays
from gateway.replay_rest import replay_routes
from gateway.review import ReviewApi
from gateway.review_grpc import ReviewService, register_review
from gateway.review_rest import review_routes
from gateway.rollout_rest import rollout_routes
from gateway.rollouts import Rollouts
from gateway.rolloutstore import open_rollout_store
from gateway.routestore import load_tables, open_route_store
from gateway.routing import Router
from gateway.sequences import (
    LocalSequences,
    RedisSequences,
    SequenceMap,
)
from gateway.shadow import ShadowRunner
from gateway.targets import shadow_counters
from gateway.versions import BackendVersions, ServedVersions


@asynccontextmanager
async def open_gateway(settings: GatewaySettings, registry: CollectorRegistry,
                       tracing: Tracing) -> AsyncIterator[ServiceParts]:
    """Open backends, Redis, the routing store and the shadow workers; close them after."""
    limit = settings.server.max_body_bytes
    async with AsyncExitStack() as stack:
        calls = calls_histogram(registry) if settings.batching.enabled else None
        backends = {}
        for name, upstream in settings.backends.items():
            http = await stack.enter_async_context(HttpUpstream(name, upstream))
            batching = None
            if calls is not None:
                batching = BackendBatching(name, http, settings.batching.max_rows,
                                           settings.batching.max_in_flight, calls)
                stack.push_async_callback(batching.tasks.aclose)
            grpc = await stack.enter_async_context(GrpcUpstream(name, upstream, limit))
            backends[name] = Backend(http, GrpcCalls(grpc, batching), batching)
        auth = build_authenticator(settings.auth, registry) if settings.auth.enabled else None
        quotas = None
        if settings.quota.enabled:
            local = LocalLimiter()
            primary: LocalLimiter | RedisLimiter = local
            if settings.quota.backend == "redis":
                client = redis_client(settings.quota)
                stack.push_async_callback(client.aclose)
                primary = RedisLimiter(client, settings.quota.key_prefix,
                                       settings.quota.lease_ttl_s)
            quotas = Quotas(settings.quota, primary, local, registry)
        store = await open_route_store(settings, stack)
        router = Router(await load_tables(store, settings))
        watcher = asyncio.create_task(store.watch(router.install))
        stack.callback(watcher.cancel)
        res = settings.resilience
        breaker = Breaker(res.eject_after_failures, res.ejection_s, registry)
        shadows = await stack.enter_async_context(ShadowRunner(
            {n: b.batching or b.http for n, b in backends.items()},
            {n: b.grpc for n, b in backends.items()},
            res.shadow_queue, res.shadow_concurrency, registry, tracing,
            linger_s=res.shadow_linger_s))
        versions = BackendVersions({n: b.http for n, b in backends.items()})
        changes = await SignedLog.open(settings.change_log, "gateway.change_log") \
            if settings.change_log.enabled else None
        admin = RoutingAdmin(settings, router, store, versions, breaker, changes)
        admin_auth = AdminAuth(auth)
        sequences: SequenceMap = LocalSequences()
        if settings.routing.store == "redis":  # every replica holds a sequence in one place
            sequence_client = RedisEndpoint.from_url(settings.routing.redis_url).client(
                SEQUENCE_REDIS_TIMEOUT_S, SEQUENCE_REDIS_TIMEOUT_S)
            stack.push_async_callback(sequence_client.aclose)
            sequences = RedisSequences(sequence_client, settings.routing.key_prefix)
        plane = GatewayPlane(settings, router, backends, auth, quotas, breaker, shadows,
                             RequestMetrics(registry, "gateway"), registry, tracing,
                             ServedVersions(versions), sequences)
        health = HealthReader(registry, {n: b.http for n, b in backends.items()})
        rollouts = Rollouts(settings.routing, admin, open_rollout_store(settings, stack),
                            lambda m: {**plane.targets.counters(m),
                                       **shadow_counters(shadows.metrics.decisions, m)},
                            health, registry)
        driver = asyncio.create_task(rollouts.run())
        stack.callback(driver.cancel)
        audit = await AuditReader.open(settings.audit, router)
        reviews = None
        if settings.review.store_url is not None:
            review_store = await asyncio.to_thread(open_review_store,
                                                   settings.review.store_url)
            stack.callback(review_store.close)
            reviews = ReviewApi(settings.review, review_store, registry)
            figures = asyncio.create_task(reviews.metrics_loop())
            stack.callback(figures.cancel)
        replays = Replays({n: s.directory for n, s in settings.audit.logs.items()},
                          settings.audit.model_repository, router,
                          {n: b.http for n, b in backends.items()})
        stack.push_async_callback(replays.aclose)
        oidc = None
        if settings.console.enabled and settings.console.oidc is not None and auth is not None:
            oidc = await stack.enter_async_context(OidcLogin.open(settings.console.oidc, auth))
        console = console_routes(health, admin_auth, oidc) if settings.console.enabled else []
        yield ServiceParts(plane, [*admin_routes(admin, admin_auth), *console,
                                   *audit_routes(audit, admin_auth),
                                   *replay_routes(replays, admin_auth),
                                   *rollout_routes(rollouts, admin_auth),
                                   *review_routes(reviews, admin_auth)],
                           [register_admin(RoutingAdminService(admin, rollouts, admin_auth)),
                            register_audit(AuditService(audit, admin_auth)),
                            register_review(ReviewService(reviews, admin_auth))])


async def run_gateway(settings: GatewaySettings,
                      tracing: TracingSettings = TRACING_OFF) -> None:
    """Serve the gateway until stopped by a signal."""
    await run_service("gateway", functools.partial(open_gateway, settings), settings.server,
                      tracing)
