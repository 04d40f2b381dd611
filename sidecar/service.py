"""The sidecar's lifespan: the Triton upstreams, the decision log, parity and drift and
the review desk, opened around one data plane (`sidecar.plane`) and closed after. Apart
from the plane so that mypyc can compile the plane (it does not compile an async
generator)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from prometheus_client import CollectorRegistry

from aios.config import SidecarSettings
from aios.errors import NotReady
from aios.readable import load_names
from aios.reviewstore import open_review_store
from aios.serve import ServiceParts, run_service
from aios.tracing import TRACING_OFF, Tracing, TracingSettings
from aios.upstream import (
    TRITON_CLIENT_ERRORS,
    GrpcUpstream,
    HttpUpstream,
)
from sidecar.batching import TritonBatching
from sidecar.decisionlog import DecisionLog
from sidecar.parity import Parity, load_profiles
from sidecar.plane import SidecarPlane
from sidecar.redaction import NONE as NO_FEATURE_RULES
from sidecar.redaction import build as build_feature_rules
from sidecar.redaction import read_key
from sidecar.review import ReviewDesk
from sidecar.reviewevents import Announcer


@asynccontextmanager
async def open_sidecar(settings: SidecarSettings, registry: CollectorRegistry,
                       tracing: Tracing) -> AsyncIterator[ServiceParts]:
    """Open the connections to Triton, the decision log and the parity checks."""
    limit = settings.server.max_body_bytes
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            HttpUpstream("triton", settings.triton, TRITON_CLIENT_ERRORS))
        grpc = await stack.enter_async_context(GrpcUpstream("triton", settings.triton, limit))
        log = None
        features = NO_FEATURE_RULES
        if settings.decision_log.enabled:
            if settings.decision_log.feature_redaction:  # else no profile need be read here
                features = build_feature_rules(
                    settings.decision_log, load_names(settings.parity.model_repository),
                    read_key(settings.decision_log.redaction_key_file))
            log = await stack.enter_async_context(DecisionLog(settings.decision_log, registry))
        parity = None
        if settings.parity.enabled:
            profiles = load_profiles(settings.parity.model_repository)
            if not profiles:
                raise NotReady(f"no training profiles under {settings.parity.model_repository}")
            parity = Parity(settings.parity, profiles, registry)
        batching = None
        if settings.batching.enabled:
            batching = TritonBatching(http, settings.batching.max_rows,
                                      settings.batching.max_in_flight, registry)
            stack.push_async_callback(batching.tasks.aclose)
        review = None
        if settings.review.enabled:
            store = await asyncio.to_thread(open_review_store, settings.review.store_url)
            stack.callback(store.close)
            announcer = await stack.enter_async_context(
                Announcer(settings.review.events, registry))
            review = ReviewDesk(settings.review, store,
                                load_names(settings.parity.model_repository),
                                settings.decision_log.log_name, log, announcer, registry)
            await review.refresh_gates()
            desk = asyncio.create_task(review.run())
            stack.callback(desk.cancel)
        plane = SidecarPlane(settings, http, grpc, log, parity, registry, tracing, batching,
                             features, review)
        if parity is not None:
            task = asyncio.create_task(plane.golden_loop())
            stack.callback(task.cancel)
        yield ServiceParts(plane, batch=plane.answer_batch)


async def run_sidecar(settings: SidecarSettings,
                      tracing: TracingSettings = TRACING_OFF) -> None:
    """Serve the sidecar until stopped by a signal."""
    await run_service("sidecar", functools.partial(open_sidecar, settings), settings.server,
                      tracing)
