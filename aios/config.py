"""The stack configuration: one YAML file, one section per service.

Immutable, validated objects with named defaults. A bad value fails at load time with the
dotted path of the field that is wrong. Environment variables are read only by the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CONFIG_PATH = Path("deploy/local/stack.yaml")

DEFAULT_HOST = "127.0.0.1"
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
SIDECAR_HTTP_PORT = 8090
SIDECAR_GRPC_PORT = 8091
GATEWAY_HTTP_PORT = 8080
GATEWAY_GRPC_PORT = 8081

DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MIN_HS256_SECRET_CHARS = 32
# Every Redis URL (quota, routing store, decision-log fan-out): `aios.redisconf`'s form.
REDIS_URL = r"^rediss?://"
POSTGRES_URL = r"^postgres(ql)?://"
# Where signed checkpoints may be published besides a directory (`aios.witness`).
WITNESS_URL = r"^(rediss?|postgres(ql)?)://"


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as host and port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TritonSettings(_Frozen):
    """The Triton server: started by `aios triton`, or an external one by URL."""

    model_repository: Path = Path("model_repo")
    host: str = DEFAULT_HOST
    http_port: int = Field(TRITON_HTTP_PORT, ge=1, le=65535)
    grpc_port: int = Field(TRITON_GRPC_PORT, ge=1, le=65535)
    metrics_port: int = Field(TRITON_METRICS_PORT, ge=1, le=65535)
    # Set to use a Triton that runs elsewhere; `aios up` then starts none.
    external_http: str | None = None
    external_grpc: str | None = None
    startup_timeout_s: float = Field(180.0, gt=0)
    log_verbose: int = Field(0, ge=0)

    @property
    def http_address(self) -> str:
        """host:port of Triton's HTTP endpoint."""
        return self.external_http or f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port of Triton's gRPC endpoint."""
        return self.external_grpc or f"{self.host}:{self.grpc_port}"


class UpstreamSettings(_Frozen):
    """How a service reaches its next hop over both protocols."""

    http: str
    grpc: str
    connect_timeout_s: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    # The REST hop's client: ours, or aiohttp (for `make bench --transports` only).
    client: Literal["http1", "aiohttp"] = "http1"
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0)


class ServerSettings(_Frozen):
    """Where a service listens and what it accepts."""

    host: str = DEFAULT_HOST
    http_port: int = Field(ge=1, le=65535)
    grpc_port: int = Field(ge=1, le=65535)
    # The REST front door: ours, or uvicorn (for `make bench --transports` only: it has
    # none of the limits below but max_body_bytes and max_concurrent_requests).
    http_server: Literal["h1", "uvicorn"] = "h1"
    # The gRPC front door: unary KServe calls answered by `aios.h2server` in the event
    # loop, everything else relayed to grpcio on loopback; or grpcio for all of it.
    grpc_server: Literal["h2", "grpcio"] = "h2"
    # Request body (REST) and message size (gRPC, both directions, every hop).
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0)
    # Request line and headers together (REST 431 beyond; gRPC metadata likewise).
    max_header_bytes: int = Field(60 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    # Requests in flight in this process; beyond it a fast 503 with Retry-After.
    max_concurrent_requests: int = Field(1024, ge=1)
    keepalive_timeout_s: float = Field(5.0, gt=0)
    # A request's headers must arrive within this (slowloris), and a body must not stall
    # longer between bytes; else 408 and close.
    header_timeout_s: float = Field(10.0, gt=0)
    # A whole request body must arrive within this of its headers (else 408 and close),
    # so a body trickled in a byte at a time holds an in-flight slot this long at most.
    body_timeout_s: float = Field(60.0, gt=0)
    # Requests whose body is still arriving, per client address (beyond: 503 and close).
    max_uploads_per_client: int = Field(64, ge=1)
    # ModelStreamInfer: streams open at once in this process, request messages per stream,
    # requests of a stream whose responses are still coming (the next waits), and how long
    # a stream may pass with no message either way before it is ended (DEADLINE_EXCEEDED).
    max_streams: int = Field(256, ge=1)
    stream_max_messages: int = Field(1_000_000, ge=1)
    stream_max_in_flight: int = Field(128, ge=1)
    stream_idle_s: float = Field(300.0, gt=0)
    # Server metadata names the service (aios-gateway, aios-sidecar); for clients that
    # check for Triton's name, present it as "triton".
    present_as_triton: bool = False


Redaction = Literal["keep", "hash", "drop"]


def default_witness(directory: Path, named: Path | None) -> Path:
    """A log's checkpoint folder: the one named, else the sibling "<directory>-checkpoints"."""
    return named or directory.with_name(directory.name + "-checkpoints")


class LogLocation(_Frozen):
    """Where a signed log (`aios.checkpoint`) and what vouches for it are kept."""

    directory: Path = Path("var/decisions")
    # Where checkpoints are published, outside the log folder (default: a sibling folder
    # "<directory>-checkpoints"); or, with witness_url, in Redis or PostgreSQL, out of
    # reach of whoever can write this machine's disk.
    witness_directory: Path | None = None
    witness_url: str | None = Field(None, pattern=WITNESS_URL)
    # The log's name in its checkpoints, and its key in a shared witness: each log that
    # publishes to one Redis or PostgreSQL witness needs its own (default: the folder's).
    name: str = Field("", pattern=r"^[A-Za-z0-9._-]{0,100}$")
    # Where readers (`aios audit`, the gateway's audit API) keep the search index: a
    # SQLite file in the folder by default, or PostgreSQL shared by a fleet's logs.
    index_url: str | None = Field(None, pattern=POSTGRES_URL)

    @property
    def witness(self) -> Path:
        """The witness folder in force (when checkpoints go to a folder)."""
        return default_witness(self.directory, self.witness_directory)

    @property
    def log_name(self) -> str:
        return self.name or self.directory.name

    def _secret_paths(self) -> list[tuple[str, Path | None]]:
        return [("witness_directory", self.witness_directory)]

    @model_validator(mode="after")
    def _keys_and_checkpoints_live_outside_the_log(self) -> LogLocation:
        if self.witness_directory is not None and self.witness_url is not None:
            raise ValueError("witness_url: set either witness_directory or witness_url")
        log = self.directory.resolve()
        for name, path in self._secret_paths():
            if path is not None and path.resolve().is_relative_to(log):
                raise ValueError(f"{name} must be outside the log directory {self.directory} "
                                 "(whoever can rewrite the log must not reach it)")
        return self


class SignedLogSettings(LogLocation):
    """A hash-chained log with signed checkpoints that a service writes."""

    enabled: bool = True
    # An Ed25519 private key (PEM) kept outside the log folder; without one the log is
    # chained but unsigned (a warning at start).
    signing_key_file: Path | None = None

    def _secret_paths(self) -> list[tuple[str, Path | None]]:
        return [*super()._secret_paths(), ("signing_key_file", self.signing_key_file)]


class AuditSource(LogLocation):
    """A signed log the gateway's audit API reads (the local stack's sidecar log, or a
    fleet's logs mounted read-only)."""

    # The public key its checkpoints are checked with (a private key's file also serves:
    # its public half is used); without one, checkpoints are shown as unchecked.
    public_key_file: Path | None = None


class AuditApiSettings(_Frozen):
    """The gateway's read-only audit API (/admin/audit, scope audit:read)."""

    # By name: the logs it reads; none, and the API answers that none is configured.
    logs: dict[str, AuditSource] = Field(default_factory=dict)
    # Where profile.json names each version's features (decoded records).
    model_repository: Path = Path("model_repo")
    # Every read of the audit API (who, when, what was asked, which decisions were
    # shown), chained and signed before the answer goes out.
    access_log: SignedLogSettings = SignedLogSettings(directory=Path("var/audit-reads"))

    @model_validator(mode="after")
    def _log_names(self) -> AuditApiSettings:
        for name in self.logs:
            if not name or not all(c.isalnum() or c in "._-" for c in name):
                raise ValueError(f"logs.{name}: a log's name is letters, digits, '.', '_', '-'")
        return self


class DecisionLogSettings(SignedLogSettings):
    """The sidecar's tamper-evident decision log."""

    # sync: a response is released only once its record is on disk (regulated default).
    # async: records are queued; a full queue drops them, counted and alarmed.
    mode: Literal["sync", "async"] = "sync"
    max_segment_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    queue_size: int = Field(10_000, ge=1)
    max_batch: int = Field(512, ge=1)
    # Per model, per input name: keep the values, keep only their hash, or drop them.
    redaction: dict[str, dict[str, Redaction]] = Field(default_factory=dict)
    default_redaction: Redaction = "keep"
    # Per model, per feature column of the profile's input tensor (by the profile's
    # names): applied on top of the tensor's rule, before anything is written.
    feature_redaction: dict[str, dict[str, Literal["hash", "drop"]]] = Field(
        default_factory=dict)
    # The key of feature hashes (a file of at least 32 bytes): an unkeyed hash of a column
    # such as an age is undone by trying every value.
    redaction_key_file: Path | None = None
    # Optional fan-out of every record to a capped Redis stream.
    redis_stream_url: str | None = Field(None, pattern=REDIS_URL)
    redis_stream_key: str = "aios:decisions"
    redis_stream_maxlen: int = Field(100_000, ge=1)
    checkpoint_every_records: int = Field(1000, ge=1)
    checkpoint_every_s: float = Field(10.0, gt=0)

    def _secret_paths(self) -> list[tuple[str, Path | None]]:
        return [*super()._secret_paths(), ("redaction_key_file", self.redaction_key_file)]

    @model_validator(mode="after")
    def _hashes_are_keyed(self) -> DecisionLogSettings:
        if self.redaction_key_file is None and any(
                rule == "hash" for rules in self.feature_redaction.values()
                for rule in rules.values()):
            raise ValueError("feature_redaction 'hash' needs redaction_key_file (an unkeyed "
                             "hash of a low-entropy column can be reversed)")
        return self


class ParitySettings(_Frozen):
    """Checks against each version's training profile and golden set."""

    enabled: bool = True
    model_repository: Path = Path("model_repo")
    # observe: count and flag the record; enforce: reject with 422.
    mode: dict[str, Literal["observe", "enforce"]] = Field(default_factory=dict)
    # Each evaluation tests the last drift_window rows, every drift_every rows
    # (`sidecar.drift`); its tests together raise a false flag with probability
    # drift_alpha at most.
    drift_window: int = Field(1000, ge=50)
    drift_every: int = Field(250, ge=1)
    drift_alpha: float = Field(3e-4, gt=0, lt=1)
    # The per-row CUSUM of each column's normal score: allowance and alarm level, set by
    # `python -m loadtests.drift_bench --calibrate` so that stationary traffic raises
    # any flag in under 5% of 20,000-row runs (loadtests/README.md, "Drift").
    cusum_k: float = Field(0.06, gt=0)
    cusum_h: float = Field(98.0, gt=0)
    # A raised flag clears after this many clean evaluations in a row.
    drift_clear_after: int = Field(4, ge=1)
    golden_interval_s: float = Field(300.0, gt=0)


class BatchingSettings(_Frozen):
    """Concurrent JSON infer calls for one model version sent as one request to the next
    hop: the sidecar merges them into one Triton request (only for models whose config
    enables Triton's dynamic batcher), the gateway hands them to a sidecar in one
    envelope."""

    enabled: bool = True
    # Rows in one merged request, at most; a model's own max_batch_size caps it further.
    max_rows: int = Field(64, ge=2)
    # Requests out per model version at once; calls arriving meanwhile wait for one to
    # come back and go together (two: the next hop readies one while it runs the other).
    max_in_flight: int = Field(2, ge=1)


GATE_NAME = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


class BandConfig(_Frozen):
    """An output in [low, high]: where the model is unsure."""

    output: str = Field(min_length=1)
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> BandConfig:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be above high ({self.high})")
        return self


class ReviewGateConfig(_Frozen):
    """One review gate (`aios.reviewrules`): exactly one of band, rule, flags,
    shadow_disagree."""

    name: str = Field(pattern=GATE_NAME)
    band: BandConfig | None = None
    rule: str | None = Field(None, max_length=500)
    flags: tuple[str, ...] = Field((), max_length=32)
    shadow_disagree: bool = False
    priority: int = Field(0, ge=-1000, le=1000)
    sla_s: float = Field(86400.0, gt=0)

    @model_validator(mode="after")
    def _one_condition(self) -> ReviewGateConfig:
        from aios.reviewrules import Rule

        given = [n for n, v in (("band", self.band), ("rule", self.rule),
                                ("flags", self.flags), ("shadow_disagree", self.shadow_disagree))
                 if v]
        if len(given) != 1:
            raise ValueError("set exactly one of band, rule, flags, shadow_disagree"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.rule is not None:
            Rule.parse(self.rule)  # RuleError is a ValueError: named by the field
        return self

    def gate(self) -> Any:
        """The gate itself (`aios.reviewrules.Gate`)."""
        from aios.reviewrules import Gate, Rule

        band = (self.band.output, self.band.low, self.band.high) if self.band else None
        return Gate(self.name, band=band, rule=Rule.parse(self.rule) if self.rule else None,
                    flags=self.flags, shadow_disagree=self.shadow_disagree,
                    priority=self.priority, sla_s=self.sla_s)


class ReviewModelConfig(_Frozen):
    """One model's review gates, and what its callers get while a decision waits."""

    # flag: the model's answer, marked x-aios-review: pending; hold: 202 with the review
    # id and no score, for workflows that must not see an unreviewed answer.
    mode: Literal["flag", "hold"] = "flag"
    gates: tuple[ReviewGateConfig, ...] = Field((), max_length=32)

    @model_validator(mode="after")
    def _unique_names(self) -> ReviewModelConfig:
        names = [g.name for g in self.gates]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"gates: two gates are named {name!r}")
        return self


class ReviewEvents(_Frozen):
    """Where a decided review is announced, so the waiting workflow resumes."""

    redis_stream_url: str | None = Field(None, pattern=REDIS_URL)
    stream_key: str = "aios:reviews"
    stream_maxlen: int = Field(100_000, ge=1)
    # POSTed as JSON, signed: x-aios-signature: sha256=HMAC-SHA256(secret, body) in hex.
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    webhook_secret_file: Path | None = None
    webhook_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_s: float = Field(0.5, gt=0)
    webhook_timeout_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> ReviewEvents:
        if self.webhook_url is not None and self.webhook_secret_file is None:
            raise ValueError("webhook_secret_file: a webhook needs a secret to sign with")
        return self


class ReviewSettings(_Frozen):
    """The sidecar's review gates (`aios.reviewrules`) and queue (`aios.reviewstore`)."""

    enabled: bool = False
    # A SQLite file (shared with the gateway of the same machine) or postgresql://…
    store_url: str = "var/reviews.db"
    # Per model; a model without gates sends nothing to review. The admin API's changes
    # (kept in the store, by revision) replace a model's configured gates.
    models: dict[str, ReviewModelConfig] = Field(default_factory=dict)
    gates_poll_s: float = Field(2.0, gt=0)
    finish_every_s: float = Field(0.5, gt=0)
    events: ReviewEvents = ReviewEvents()


class ReviewApiSettings(_Frozen):
    """The gateway's review API (/admin/reviews; scopes review:read, review:decide,
    review:admin)."""

    # None: no review API (404 saying so).
    store_url: str | None = None
    lease_s: float = Field(900.0, gt=0, le=86400)
    stats_every_s: float = Field(5.0, gt=0)


class SidecarSettings(_Frozen):
    """The sidecar beside one Triton."""

    server: ServerSettings = ServerSettings(http_port=SIDECAR_HTTP_PORT,
                                            grpc_port=SIDECAR_GRPC_PORT)
    triton: UpstreamSettings = UpstreamSettings(
        http=f"{DEFAULT_HOST}:{TRITON_HTTP_PORT}", grpc=f"{DEFAULT_HOST}:{TRITON_GRPC_PORT}")
    decision_log: DecisionLogSettings = DecisionLogSettings()
    parity: ParitySettings = ParitySettings()
    batching: BatchingSettings = BatchingSettings()
    review: ReviewSettings = ReviewSettings()


STICKY_PATTERN = r"^(none|tenant|sub|header:[a-z0-9][a-z0-9_\-]*)$"


class TargetConfig(_Frozen):
    """One arm of a model's traffic split: a backend, a model version, a weight."""

    backend: str
    version: str = Field("", pattern=r"^[0-9]*$")
    weight: int = Field(1, ge=0, le=1_000_000)
    timeout_s: float | None = Field(None, gt=0)


class ShadowConfig(_Frozen):
    """A candidate that gets a copy of a fraction of the traffic, compared with the primary."""

    backend: str
    model: str = ""  # default: the routed model
    version: str = Field("", pattern=r"^[0-9]*$")
    fraction: float = Field(gt=0, le=1)
    output: str = ""  # the output to compare decisions on (default: every output)
    threshold: float | None = None  # decision = output >= threshold
    timeout_s: float = Field(5.0, gt=0)


class ModelRoute(_Frozen):
    """A model's routing table: named targets with weights, a sticky key, a shadow.

    ``{backend: b, version: v}`` is shorthand for one target named ``default``.
    """

    targets: dict[str, TargetConfig]
    sticky: str = Field("none", pattern=STICKY_PATTERN)
    shadow: ShadowConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backend" in data and "targets" not in data:
            target = {k: data[k] for k in ("backend", "version") if data.get(k) is not None}
            rest = {k: v for k, v in data.items() if k not in ("backend", "version")}
            return {"targets": {"default": target}, **rest}
        return data

    @model_validator(mode="after")
    def _weights(self) -> ModelRoute:
        if not self.targets:
            raise ValueError("targets: at least one target is required")
        if all(t.weight == 0 for t in self.targets.values()):
            raise ValueError("targets: all weights are zero")
        return self

    def check_backends(self, backends: Iterable[str], where: str) -> None:
        """ValueError naming the field if a target or the shadow names an unknown backend."""
        known = set(backends)
        named = [(f"{where}.targets.{n}.backend", t.backend) for n, t in self.targets.items()]
        if self.shadow is not None:
            named.append((f"{where}.shadow.backend", self.shadow.backend))
        for field, backend in named:
            if backend not in known:
                raise ValueError(f"{field}: unknown backend {backend!r} "
                                 f"(known: {', '.join(sorted(known)) or 'none'})")


class RoutingSettings(_Frozen):
    """Where the live routing tables are kept, and how replicas learn of changes."""

    store: Literal["file", "redis"] = "file"
    state_file: Path = Path("var/routes.json")
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=REDIS_URL)
    key_prefix: str = "aios:routes:"
    # Replicas also poll revisions at this interval, to catch a missed notification.
    poll_interval_s: float = Field(0.5, gt=0, le=1.0)
    history_limit: int = Field(10_000, ge=1)
    # Models whose routing changes need a second subject's approval (routes:approve, a
    # different sub than the proposer's) before they apply; "*": every model. A
    # rollback of the last change never waits.
    four_eyes: list[str] = Field(default_factory=list)
    # Rollouts (`gateway.rollouts`): their gates are evaluated this often, and with Redis
    # one replica drives each, holding a lease it renews each interval; if it stops,
    # another takes over once the lease lapses.
    rollout_interval_s: float = Field(2.0, gt=0, le=60)
    rollout_lease_s: float = Field(6.0, gt=0, le=300)

    @model_validator(mode="after")
    def _lease_outlives_interval(self) -> RoutingSettings:
        if self.rollout_lease_s <= self.rollout_interval_s:
            raise ValueError("rollout_lease_s: must exceed rollout_interval_s "
                             f"({self.rollout_interval_s:g}), or the lease lapses between "
                             "renewals")
        return self


class ResilienceSettings(_Frozen):
    """Circuit breaking per target and the shadow queue."""

    eject_after_failures: int = Field(5, ge=1)
    ejection_s: float = Field(10.0, gt=0)
    shadow_queue: int = Field(1000, ge=1)
    # Batches of shadow copies in flight at once.
    shadow_concurrency: int = Field(4, ge=1)
    # Copies wait this long for others, so that they reach the shadow's model version
    # together (one envelope, one Triton request) rather than one execution each. Nobody
    # waits for a shadow: its answer is only compared.
    shadow_linger_s: float = Field(0.05, ge=0, le=1.0)


class AuthSettings(_Frozen):
    """Token verification (gateway) and issuing (`aios token`).

    Keys: an HS256 shared secret (from a file, e.g. a mounted Secret; inline only for
    tests) and/or RS256/ES256 public keys from a JWKS file or URL. There is no default
    key: `load_auth` refuses to start with auth on and none. Deny unless a scope allows.
    """

    enabled: bool = True
    issuer: str = "aios-dev"
    audience: str = "aios-gateway"
    hs256_secret: str | None = Field(None, min_length=MIN_HS256_SECRET_CHARS)
    hs256_secret_file: Path | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # An unknown `kid` refreshes the key set at most once per this interval.
    jwks_refresh_interval_s: float = Field(30.0, gt=0)
    jwks_cache_ttl_s: float = Field(300.0, gt=0)
    jwks_fetch_timeout_s: float = Field(2.0, gt=0)
    leeway_s: float = Field(30.0, ge=0, le=300)
    require_exp: bool = True
    tenant_claim: str = "tenant"
    token_cache_size: int = Field(10_000, ge=0)
    # Model calls a load balancer may probe without a token: any of
    # "metadata", "ready", "config", "stats" ("infer" always needs a scope).
    open_model_calls: frozenset[Literal["metadata", "ready", "config", "stats"]] = frozenset(
        {"metadata", "ready"})

    @model_validator(mode="after")
    def _one_secret_source(self) -> AuthSettings:
        if self.hs256_secret is not None and self.hs256_secret_file is not None:
            raise ValueError("hs256_secret and hs256_secret_file: set one of them, not both")
        return self


def load_auth(auth: AuthSettings, where: str = "gateway.auth") -> AuthSettings:
    """``auth`` with its HS256 secret read from ``hs256_secret_file``; ConfigError naming
    the field when the file is unusable, or when auth is on and has no key at all (there
    is no built-in secret to fall back on). Called once, where a service or `aios token`
    starts."""
    path = auth.hs256_secret_file
    if path is not None:
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}.hs256_secret_file: cannot read {path}: {exc.strerror} "
                              "(`make run` writes a development one; in production mount "
                              "your secret there)") from exc
        if len(secret) < MIN_HS256_SECRET_CHARS:
            raise ConfigError(f"{where}.hs256_secret_file: the secret in {path} has "
                              f"{len(secret)} characters, at least {MIN_HS256_SECRET_CHARS} "
                              "are needed")
        auth = auth.model_copy(update={"hs256_secret": secret, "hs256_secret_file": None})
    if auth.enabled and not (auth.hs256_secret or auth.jwks_file or auth.jwks_url):
        raise ConfigError(f"{where}: auth is enabled but has no key: set hs256_secret_file, "
                          "jwks_file or jwks_url (or enabled: false)")
    return auth


class TenantQuota(_Frozen):
    """One tenant's limits, applied per model it calls."""

    rate_per_s: float = Field(100.0, gt=0)
    burst: int = Field(50, ge=1)
    # 0: no cap on concurrent in-flight requests.
    max_concurrent: int = Field(0, ge=0)
    # "batch": a request costs its batch size (a batch of 64 claims costs 64).
    cost: Literal["request", "batch"] = "request"
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"
    # The most urgent Triton priority level the tenant may ask for (1 is Triton's most
    # urgent; a larger number, less urgent): a request asking for a more urgent one is
    # given this one. 0: the tenant may not ask, every request gets the model's default.
    top_priority: int = Field(0, ge=0)


class QuotaSettings(_Frozen):
    """Per tenant x model quotas: in-process, or shared by every replica through Redis."""

    enabled: bool = True
    backend: Literal["local", "redis"] = "local"
    # The quota's own pipelined client: redis:// or rediss:// (TLS), user/password, db.
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=REDIS_URL)
    key_prefix: str = "aios:quota:"
    redis_timeout_ms: int = Field(50, ge=1, le=10_000)
    # The client: ours (pipelined, one connection), or redis-py's pooled one (for
    # `make bench --transports` only: a timed-out lease's undo is not ordered after it).
    redis_client: Literal["resp", "redis-py"] = "resp"
    # Opening the connection (once, and again after a fault): longer than a call, since a
    # connect that times out sends every request of the retry interval to the fallback.
    redis_connect_timeout_ms: int = Field(500, ge=1, le=60_000)
    # After a Redis failure, decide locally for this long before trying Redis again.
    redis_retry_interval_s: float = Field(1.0, gt=0)
    # fail_open falls back to 1/replicas of each limit.
    replicas: int = Field(1, ge=1)
    # Leases expire after this, so a gateway that dies mid-request frees its slots.
    lease_ttl_s: float = Field(60.0, gt=0)
    # With Redis, a replica takes up to this many seconds of a tenant's rate (at most
    # 5% of its burst) in one call and spends it locally; what it does not spend in this
    # time lapses (units already taken are still spent if Redis goes down meanwhile).
    # Tenants whose share would be under 2 units ask Redis on every request, as do
    # tenants with max_concurrent. 0 turns prefetching off.
    prefetch_s: float = Field(0.05, ge=0, le=1.0)
    default: TenantQuota = TenantQuota()
    tenants: dict[str, TenantQuota] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantQuota:
        """The limits that apply to ``tenant``."""
        return self.tenants.get(tenant, self.default)


class OidcSettings(_Frozen):
    """Sign-in to the console at an OpenID provider (authorization code with PKCE): the
    page sends the person there, and the gateway exchanges the code for a token, which
    it checks as it checks any other (`gateway.auth`: the provider's issuer and keys)."""

    # The provider's issuer URL; its endpoints come from
    # {issuer}/.well-known/openid-configuration.
    issuer: str = Field(min_length=1, max_length=2000, pattern=r"^https?://[^\s]+$")
    client_id: str = Field(min_length=1, max_length=500)
    # A confidential client's secret (client_secret_basic); none: a public client.
    client_secret_file: Path | None = None
    scope: str = Field("openid profile email", max_length=1000)
    # The token the console sends as its bearer: the access token where the provider
    # issues JWTs for an API audience, else the ID token (its audience: client_id).
    token: Literal["access_token", "id_token"] = "access_token"
    timeout_s: float = Field(5.0, gt=0, le=60)


class ConsoleSettings(_Frozen):
    """The web console under /console (`gateway.console`): static files over the admin API,
    which checks every call's token."""

    enabled: bool = True
    oidc: OidcSettings | None = None


class GatewaySettings(_Frozen):
    """The gateway: front door, backends (sidecars) and the model → backend routes."""

    server: ServerSettings = ServerSettings(http_port=GATEWAY_HTTP_PORT,
                                            grpc_port=GATEWAY_GRPC_PORT)
    backends: dict[str, UpstreamSettings] = Field(default_factory=lambda: {
        "local": UpstreamSettings(http=f"{DEFAULT_HOST}:{SIDECAR_HTTP_PORT}",
                                  grpc=f"{DEFAULT_HOST}:{SIDECAR_GRPC_PORT}")})
    # The initial routing tables; live changes go through the admin API.
    models: dict[str, ModelRoute] = Field(default_factory=lambda: {
        "claims_risk": ModelRoute(targets={"default": TargetConfig(backend="local")})})
    auth: AuthSettings = AuthSettings()
    quota: QuotaSettings = QuotaSettings()
    routing: RoutingSettings = RoutingSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    batching: BatchingSettings = BatchingSettings()
    # Every routing change, chained and signed as the decision log is (`aios audit verify
    # --dir var/route-changes`): who, when, why, before, after, revision.
    change_log: SignedLogSettings = SignedLogSettings(directory=Path("var/route-changes"))
    audit: AuditApiSettings = AuditApiSettings()
    review: ReviewApiSettings = ReviewApiSettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="after")
    def _routes_name_known_backends(self) -> GatewaySettings:
        for name, route in self.models.items():
            route.check_backends(self.backends, f"models.{name}")
        return self

    @model_validator(mode="after")
    def _console_tokens_can_be_checked(self) -> GatewaySettings:
        oidc = self.console.oidc
        if oidc is None:
            return self
        # The provider's tokens are checked like any other: by this issuer and these keys.
        if oidc.issuer.rstrip("/") != self.auth.issuer.rstrip("/"):
            raise ValueError(f"console.oidc.issuer: tokens from {oidc.issuer!r} are checked "
                             f"against auth.issuer ({self.auth.issuer!r}): set both to the "
                             "provider's issuer")
        if not self.auth.enabled:
            raise ValueError("console.oidc: signing in needs auth (auth.enabled: true)")
        if not (self.auth.jwks_url or self.auth.jwks_file):
            raise ValueError("console.oidc: the provider signs its tokens with its own keys: "
                             "set auth.jwks_url (its jwks_uri)")
        return self


@dataclass(frozen=True)
class EnvoyOptions:
    """Where an exported Envoy listens and which services it calls (`aios envoy`)."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 10000
    admin_port: int = 9901
    # envoyproxy/ratelimit's gRPC address (the quota's shared counters live there).
    ratelimit_service: str = "127.0.0.1:8089"
    ratelimit_domain: str = "aios"
    # Where `aios envoy serve` listens (and the ADS bootstrap points): loopback only,
    # unless it serves TLS (and, with a client CA, checks the Envoys' certificates).
    xds_address: str | None = None
    xds_tls_cert: Path | None = None
    xds_tls_key: Path | None = None
    xds_tls_client_ca: Path | None = None


class StackConfig(_Frozen):
    """The whole local stack; each service reads its own section."""

    triton: TritonSettings = TritonSettings()
    sidecar: SidecarSettings = SidecarSettings()
    gateway: GatewaySettings = GatewaySettings()


def describe_validation(exc: ValidationError) -> str:
    """One line naming each bad field by its dotted path."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_config(data: Any, source: str = "<config>") -> StackConfig:
    """Validate a mapping (as loaded from YAML) into a StackConfig."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation(exc)}") from exc


def load_config(path: Path) -> StackConfig:
    """Read and validate the stack file at ``path``; relative paths in it are kept as is."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, str(path))
