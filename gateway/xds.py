"""An xDS management server (ADS, state of the world) that serves `gateway.envoy`'s config.

Envoys connect to `StreamAggregatedResources` and subscribe to listeners, routes and
clusters; when a routing table changes, each stream gets the new version of every type
it subscribed to. The protocol state of one stream (`AdsStream`) is pure logic: what to
send for a request, whether a request is an ACK, a NACK or stale, what a new snapshot
means for it. `XdsServer` is the I/O around it.

Version and nonce rules (Envoy's xDS protocol): a response carries the snapshot's
version and a fresh nonce; a request whose ``response_nonce`` is not the latest sent
for its type is stale and ignored; an ACK repeats that nonce with the new version; a
NACK repeats it with the previous version and an ``error_detail``, and is not answered
with the same version again (the next change gets a new one).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType

import grpc
import grpc.aio
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.protobuf import Any as AnyMessage
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from aios.config import ConfigError, EnvoyOptions, GatewaySettings, split_address
from gateway.envoy import (
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    clusters,
    listener,
    route_configuration,
)
from gateway.routestore import load_tables, open_route_store
from gateway.routing import ModelTable

logger = logging.getLogger(__name__)

TYPE_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ADS_METHOD = ("/envoy.service.discovery.v3.AggregatedDiscoveryService/"
              "StreamAggregatedResources")


@dataclass(frozen=True)
class Snapshot:
    """One version of every resource, by type URL and name."""

    version: str
    resources: Mapping[str, Mapping[str, AnyMessage]]


def build_snapshot(settings: GatewaySettings, tables: Mapping[str, ModelTable],
                   options: EnvoyOptions) -> Snapshot:
    """The resources for ``tables``; the version is a digest of them, so an unchanged
    config keeps its version."""
    resources: dict[str, dict[str, AnyMessage]] = {
        LISTENER_TYPE: {LISTENER_NAME: AnyMessage.pack(
            listener(settings, tables, options, rds=True))},
        ROUTE_TYPE: {ROUTE_CONFIG_NAME: AnyMessage.pack(route_configuration(settings, tables))},
        CLUSTER_TYPE: {c.name: AnyMessage.pack(c) for c in clusters(settings, options)},
    }
    digest = hashlib.sha256()
    for type_url in sorted(resources):
        for name, packed in sorted(resources[type_url].items()):
            digest.update(f"{type_url}\0{name}\0".encode())
            digest.update(packed.value)
    return Snapshot(digest.hexdigest()[:16], resources)


_Event = DiscoveryRequest | Snapshot | None


@dataclass
class _Sent:
    version: str
    nonce: str


@dataclass
class AdsStream:
    """The protocol state of one ADS stream (one Envoy)."""

    node: str = ""
    subscribed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sent: dict[str, _Sent] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)
    nacks: list[tuple[str, str]] = field(default_factory=list)  # (version, message)
    _nonces: Iterator[int] = field(default_factory=itertools.count)
    _prefix: str = field(default_factory=lambda: secrets.token_hex(4))

    def on_request(self, request: DiscoveryRequest, snapshot: Snapshot,
                   ) -> DiscoveryResponse | None:
        """The response a request calls for, or None (an ACK, a NACK, a stale request)."""
        if request.node is not None and request.node.id:
            self.node = request.node.id
        type_url = request.type_url
        if type_url not in snapshot.resources:
            logger.warning("xds: %s asked for unknown type %s", self.node, type_url)
            return None
        names = tuple(request.resource_names)
        if request.response_nonce:
            last = self.sent.get(type_url)
            if last is None or request.response_nonce != last.nonce:
                return None  # answers a response that a newer one superseded
            if request.error_detail is not None and request.error_detail.code != 0:
                message = request.error_detail.message
                self.nacks.append((last.version, message))
                logger.error("xds: %s rejected %s version %s: %s", self.node, type_url,
                             last.version, message)
                return None
            self.acked[type_url] = request.version_info
            if names == self.subscribed.get(type_url) and last.version == snapshot.version:
                return None
        self.subscribed[type_url] = names
        return self._respond(type_url, snapshot)

    def on_snapshot(self, snapshot: Snapshot) -> list[DiscoveryResponse]:
        """Responses for every subscribed type not yet sent this snapshot."""
        return [self._respond(t, snapshot) for t in self.subscribed
                if self.sent.get(t, _Sent("", "")).version != snapshot.version]

    def _respond(self, type_url: str, snapshot: Snapshot) -> DiscoveryResponse:
        available = snapshot.resources[type_url]
        names = self.subscribed.get(type_url, ())
        chosen = [available[n] for n in names if n in available] if names else [
            available[n] for n in sorted(available)]
        nonce = f"{self._prefix}-{next(self._nonces)}"
        self.sent[type_url] = _Sent(snapshot.version, nonce)
        return DiscoveryResponse(version_info=snapshot.version, resources=chosen,
                                 type_url=type_url, nonce=nonce)


class XdsServer:
    """Serves the current snapshot over ADS; `apply` pushes a new one to every stream."""

    def __init__(self, settings: GatewaySettings, options: EnvoyOptions,
                 tables: Mapping[str, ModelTable], registry: CollectorRegistry) -> None:
        self._settings = settings
        self._options = options
        self._tables = dict(tables)
        self.snapshot = build_snapshot(settings, self._tables, options)
        self._queues: set[asyncio.Queue[_Event]] = set()
        self._pushes = Counter("aios_xds_responses", "DiscoveryResponses sent", ("type",),
                               registry=registry)
        self._nacks = Counter("aios_xds_nacks", "Configs an Envoy rejected", ("type",),
                              registry=registry)
        self._streams = Gauge("aios_xds_streams", "Connected ADS streams", registry=registry)
        self._server: grpc.aio.Server | None = None

    def apply(self, table: ModelTable) -> None:
        """Take a newer routing table (a `RouteStore.watch` callback)."""
        current = self._tables.get(table.model)
        if current is not None and current.revision >= table.revision:
            return
        self._tables[table.model] = table
        snapshot = build_snapshot(self._settings, self._tables, self._options)
        if snapshot.version == self.snapshot.version:
            return
        logger.info("xds: version %s (%s at revision %d)", snapshot.version, table.model,
                    table.revision)
        self.snapshot = snapshot
        for queue in self._queues:
            queue.put_nowait(snapshot)

    async def stream(self, requests: AsyncIterator[DiscoveryRequest],
                     context: grpc.aio.ServicerContext[DiscoveryRequest, DiscoveryResponse],
                     ) -> AsyncIterator[DiscoveryResponse]:
        """One Envoy's ADS stream: answer its requests and push new snapshots."""
        state = AdsStream()
        # The Envoy's requests, new snapshots (from `apply`) and the end, in one queue.
        events: asyncio.Queue[_Event] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                events.put_nowait(request)
            events.put_nowait(None)

        self._queues.add(events)
        self._streams.inc()
        reader = asyncio.create_task(read())
        try:
            while (event := await events.get()) is not None:
                if isinstance(event, Snapshot):
                    responses = state.on_snapshot(self.snapshot)
                else:
                    before = len(state.nacks)
                    response = state.on_request(event, self.snapshot)
                    if len(state.nacks) > before:
                        self._nacks.labels(_short(event.type_url)).inc()
                    responses = [] if response is None else [response]
                for response in responses:
                    self._pushes.labels(_short(response.type_url)).inc()
                    yield response
        finally:
            reader.cancel()
            self._queues.discard(events)
            self._streams.dec()

    async def __aenter__(self) -> XdsServer:
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream, request_deserializer=DiscoveryRequest.FromString,
                response_serializer=DiscoveryResponse.SerializeToString)})
        address = self._options.xds_address or "127.0.0.1:18000"
        credentials = server_credentials(self._options, address)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        bound = (self._server.add_insecure_port(address) if credentials is None
                 else self._server.add_secure_port(address, credentials))
        if bound == 0:
            raise OSError(f"xds: cannot bind {address}")
        await self._server.start()
        logger.info("xds: ADS on %s, version %s", address, self.snapshot.version)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._server is not None:
            await self._server.stop(1.0)


def server_credentials(options: EnvoyOptions, address: str) -> grpc.ServerCredentials | None:
    """TLS for the ADS server (None: plain, allowed on a loopback address only, since
    whoever connects learns every backend and route); ConfigError when the options do not
    allow ``address``."""
    if options.xds_tls_cert is None or options.xds_tls_key is None:
        if options.xds_tls_cert or options.xds_tls_key or options.xds_tls_client_ca:
            raise ConfigError("xds: TLS needs both --tls-cert and --tls-key")
        host = split_address(address)[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConfigError(f"xds: {address} is not a loopback address: serve it with "
                              "--tls-cert and --tls-key (and --tls-client-ca to check Envoys)")
        return None
    try:
        pair = (options.xds_tls_key.read_bytes(), options.xds_tls_cert.read_bytes())
        client_ca = (options.xds_tls_client_ca.read_bytes()
                     if options.xds_tls_client_ca else None)
    except OSError as exc:
        raise ConfigError(f"xds: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]



async def run_xds(settings: GatewaySettings, options: EnvoyOptions, metrics: str) -> None:
    """Serve ADS from the routing store until SIGINT/SIGTERM, following its changes;
    Prometheus metrics on ``metrics`` (host:port)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    async with AsyncExitStack() as stack:
        host, port = split_address(metrics)
        scrape, _ = start_http_server(port, host, registry)
        stack.callback(scrape.shutdown)
        store = await open_route_store(settings, stack)
        tables = await load_tables(store, settings)
        server = await stack.enter_async_context(
            XdsServer(settings, options, tables, registry))
        watcher = asyncio.create_task(store.watch(server.apply))
        stack.callback(watcher.cancel)
        await stop.wait()
