"""Announcing a decided review, so the workflow parked on it resumes without polling: an
entry on a Redis stream, and optionally a webhook POST signed with HMAC-SHA256.

A Redis stream that cannot be reached raises StoreUnavailable: the item stays
unannounced and is tried again. A webhook is tried ``webhook_attempts`` times with
backoff on 5xx and connection errors (a 4xx is the receiver refusing: not repeated), then
given up, counted, and logged; the stream entry and ``GET /admin/reviews/<id>`` still
carry the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from aios.config import ConfigError, ReviewEvents
from aios.errors import StoreUnavailable
from aios.redisconf import RedisEndpoint
from aios.reviewqueue import Item

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-aios-signature"
EVENT_ID_HEADER = "x-aios-event-id"
REDIS_TIMEOUT_S = 2.0
MIN_SECRET_BYTES = 16


def event(item: Item) -> dict[str, Any]:
    """What a decided review announces."""
    return {"event": "review.decided", "review_id": item.id,
            "decision_id": item.decision_id, "model": item.model, "version": item.version,
            "tenant": item.tenant, "business_key": item.business_key, "gate": item.gate,
            "action": item.action, "final": dict(item.final() or {}),
            "model_outputs": dict(item.outputs), "reviewer": item.decided_by,
            "reason": item.reason, "queued_ns": item.queued_ns,
            "decided_ns": item.decided_ns}


def signature(secret: bytes, body: bytes) -> str:
    """The webhook's signature header value (receivers compare it in constant time)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"sidecar.review.events.webhook_secret_file: cannot read {path}: "
                          f"{exc.strerror}") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"sidecar.review.events.webhook_secret_file: the secret in {path} "
                          f"has {len(secret)} bytes, at least {MIN_SECRET_BYTES} are needed")
    return secret


class Announcer:
    """Publishes decided reviews (an async context manager: it holds the connections)."""

    def __init__(self, settings: ReviewEvents, registry: CollectorRegistry) -> None:
        self._settings = settings
        self._secret = read_secret(settings.webhook_secret_file) \
            if settings.webhook_url and settings.webhook_secret_file else b""
        self._redis = RedisEndpoint.from_url(settings.redis_stream_url).client(
            REDIS_TIMEOUT_S, REDIS_TIMEOUT_S) if settings.redis_stream_url else None
        self._http: httpx.AsyncClient | None = None
        self.webhook_failures = Counter(
            "aios_review_webhook_failures", "Decided reviews whose webhook never took them",
            registry=registry)
        self.webhook_retries = Counter(
            "aios_review_webhook_retries", "Webhook deliveries tried again", registry=registry)

    async def __aenter__(self) -> Announcer:
        if self._settings.webhook_url:
            self._http = httpx.AsyncClient(timeout=self._settings.webhook_timeout_s)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    async def announce(self, item: Item) -> None:
        doc = event(item)
        body = json.dumps(doc, sort_keys=True).encode()
        if self._redis is not None:
            try:
                await self._redis.xadd(self._settings.stream_key, {
                    "review_id": item.id, "decision_id": item.decision_id,
                    "action": item.action, "event": body},
                    maxlen=self._settings.stream_maxlen, approximate=True)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"review events: Redis stream unreachable ({exc})") \
                    from exc
        if self._http is not None:
            await self._webhook(item.id, body)

    async def _webhook(self, event_id: str, body: bytes) -> None:
        assert self._http is not None and self._settings.webhook_url is not None
        headers = {"content-type": "application/json", EVENT_ID_HEADER: event_id,
                   SIGNATURE_HEADER: signature(self._secret, body)}
        problem = ""
        for attempt in range(self._settings.webhook_attempts):
            if attempt:
                self.webhook_retries.inc()
                await asyncio.sleep(self._settings.webhook_backoff_s * 2 ** (attempt - 1))
            try:
                reply = await self._http.post(self._settings.webhook_url, content=body,
                                              headers=headers)
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
                continue
            if reply.status_code < 500:
                if reply.status_code >= 400:
                    logger.error("review webhook refused event %s: %d", event_id,
                                 reply.status_code)
                    self.webhook_failures.inc()
                return
            problem = f"status {reply.status_code}"
        self.webhook_failures.inc()
        logger.error("review webhook: event %s not delivered after %d attempts (%s)",
                     event_id, self._settings.webhook_attempts, problem)
