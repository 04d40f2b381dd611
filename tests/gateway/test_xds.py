"""`gateway.xds`: ADS version/nonce handling (pure), and `aios envoy serve` over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.rpc import Status

from aios.config import EnvoyOptions, GatewaySettings, ModelRoute
from gateway.routestore import Change, FileRouteStore, table_from_route
from gateway.routing import ModelTable
from gateway.xds import (
    ADS_METHOD,
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    AdsStream,
    build_snapshot,
)
from tests.helpers import aios, free_ports, wait_until, write_config

BACKENDS = {"a": {"http": "127.0.0.1:8090", "grpc": "127.0.0.1:8091"},
            "b": {"http": "127.0.0.1:9090", "grpc": "127.0.0.1:9091"}}


def route(stable: int, canary: int) -> dict[str, Any]:
    return {"targets": {"stable": {"backend": "a", "version": "1", "weight": stable},
                        "canary": {"backend": "b", "version": "2", "weight": canary}}}


SETTINGS = GatewaySettings.model_validate({"backends": BACKENDS,
                                           "models": {"claims_risk": route(90, 10)}})


def table(stable: int, canary: int, revision: int) -> ModelTable:
    return table_from_route("claims_risk", ModelRoute.model_validate(route(stable, canary)),
                            revision, None)


def snapshot(stable: int, canary: int, revision: int) -> Any:
    return build_snapshot(SETTINGS, {"claims_risk": table(stable, canary, revision)},
                          EnvoyOptions())


def request(type_url: str, version: str = "", nonce: str = "", names: tuple[str, ...] = (),
            error: str | None = None) -> DiscoveryRequest:
    return DiscoveryRequest(
        node=Node(id="envoy-1"), type_url=type_url, version_info=version,
        response_nonce=nonce, resource_names=list(names),
        error_detail=Status(code=3, message=error) if error else None)


def weights(response: DiscoveryResponse) -> tuple[int, int]:
    """(stable, canary) weights of the split in a route response."""
    (packed,) = response.resources
    config = packed.unpack()
    assert isinstance(config, RouteConfiguration)
    split = next(r for r in config.virtual_hosts[0].routes if r.name == "claims_risk")
    by_target = {c.request_headers_to_add[0].header.value: c.weight
                 for c in split.route.weighted_clusters.clusters}
    return by_target["stable"], by_target["canary"]


def test_a_snapshots_version_follows_its_content() -> None:
    assert snapshot(90, 10, 1).version == snapshot(90, 10, 1).version
    assert snapshot(80, 20, 2).version != snapshot(90, 10, 1).version


def test_first_request_ack_nack_and_stale_nonces() -> None:
    stream, first = AdsStream(), snapshot(90, 10, 1)
    response = stream.on_request(request(ROUTE_TYPE, names=("aios_routes",)), first)
    assert response is not None and response.version_info == first.version
    assert weights(response) == (90, 10) and stream.node == "envoy-1"
    # ACK: nothing more to send.
    assert stream.on_request(request(ROUTE_TYPE, first.version, response.nonce,
                                     ("aios_routes",)), first) is None
    assert stream.acked[ROUTE_TYPE] == first.version
    # A new snapshot: a new version under a new nonce.
    second = snapshot(80, 20, 2)
    (update,) = stream.on_snapshot(second)
    assert (update.version_info, weights(update)) == (second.version, (80, 20))
    assert update.nonce != response.nonce
    # A request answering the superseded response is stale: ignored.
    assert stream.on_request(request(ROUTE_TYPE, first.version, response.nonce,
                                     ("aios_routes",)), second) is None
    # NACK: recorded, not answered with the same version again.
    assert stream.on_request(request(ROUTE_TYPE, first.version, update.nonce,
                                     ("aios_routes",), error="bad route"), second) is None
    assert stream.nacks == [(second.version, "bad route")]
    assert stream.acked[ROUTE_TYPE] == first.version
    assert stream.on_snapshot(second) == []


def test_wildcard_and_named_subscriptions() -> None:
    stream, snap = AdsStream(), snapshot(90, 10, 1)
    clusters = stream.on_request(request(CLUSTER_TYPE), snap)
    assert clusters is not None
    names = [c.unpack().name for c in clusters.resources]
    assert names == ["aios_backend_a", "aios_backend_b", "aios_ratelimit"]
    assert all(isinstance(c.unpack(), Cluster) for c in clusters.resources)
    missing = stream.on_request(request(ROUTE_TYPE, names=("other_routes",)), snap)
    assert missing is not None and missing.resources == []
    assert stream.on_request(request("type.googleapis.com/unknown.Type"), snap) is None


class AdsClient:
    """An Envoy's side of one ADS stream, over real gRPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._requests: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()
        call = channel.stream_stream(
            ADS_METHOD, request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=DiscoveryResponse.FromString)
        self._call = call(self._send())

    async def _send(self) -> AsyncIterator[DiscoveryRequest]:
        while True:
            yield await self._requests.get()

    def send(self, message: DiscoveryRequest) -> None:
        self._requests.put_nowait(message)

    async def receive(self, timeout_s: float = 10.0) -> DiscoveryResponse:
        response = await asyncio.wait_for(self._call.read(), timeout_s)
        assert isinstance(response, DiscoveryResponse)
        return response

    def cancel(self) -> None:
        self._call.cancel()


@pytest.fixture()
def served(tmp_path: Path) -> Any:
    state = tmp_path / "routes.json"
    port, metrics = free_ports(2)
    config = write_config(tmp_path / "stack.yaml", {"gateway": {
        "backends": BACKENDS, "models": {"claims_risk": route(90, 10)},
        "routing": {"state_file": str(state), "poll_interval_s": 0.1}}})
    log = tmp_path / "xds.log"
    process = aios("envoy", "serve", "--config", str(config), "--xds", f"127.0.0.1:{port}",
                   "--metrics", f"127.0.0.1:{metrics}", log=log)
    wait_until(state.exists, 30, "envoy serve loaded the routing store", process, log)
    yield state, f"127.0.0.1:{port}", log, f"http://127.0.0.1:{metrics}/metrics"
    process.terminate()
    assert process.wait(30) == 0, log.read_text()[-2000:]


async def test_envoy_serve_pushes_a_weight_change(served: Any) -> None:
    state, address, log, metrics = served
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        envoy = AdsClient(channel)
        try:
            envoy.send(request(CLUSTER_TYPE))
            clusters = await envoy.receive()
            assert clusters.type_url == CLUSTER_TYPE
            envoy.send(request(CLUSTER_TYPE, clusters.version_info, clusters.nonce))
            envoy.send(request(LISTENER_TYPE))
            listeners = await envoy.receive()
            assert listeners.type_url == LISTENER_TYPE
            envoy.send(request(LISTENER_TYPE, listeners.version_info, listeners.nonce))
            envoy.send(request(ROUTE_TYPE, names=("aios_routes",)))
            routes = await envoy.receive()
            assert routes.type_url == ROUTE_TYPE and weights(routes) == (90, 10)
            envoy.send(request(ROUTE_TYPE, routes.version_info, routes.nonce, ("aios_routes",)))

            # Ops move the canary to 20% (what the admin API commits to the store).
            store = FileRouteStore(state)
            current = (await store.load({}))["claims_risk"]
            after = table_from_route("claims_risk", ModelRoute.model_validate(route(80, 20)),
                                     current.revision + 1, current)
            await store.commit(after, current.revision, Change(
                "claims_risk", after.revision, "ops", 0.0, "weights", "canary step", None, {}))
            pushed = {}
            for _ in range(3):  # every subscribed type gets the new version
                response = await envoy.receive()
                pushed[response.type_url] = response
            assert set(pushed) == {CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE}
            update = pushed[ROUTE_TYPE]
            assert weights(update) == (80, 20)
            assert update.version_info != routes.version_info and update.nonce != routes.nonce
            assert len({r.version_info for r in pushed.values()}) == 1
            async with httpx.AsyncClient() as http:
                assert "aios_xds_streams 1.0" in (await http.get(metrics)).text

            # The Envoy rejects it: nothing is resent until the table changes again.
            envoy.send(request(ROUTE_TYPE, routes.version_info, update.nonce, ("aios_routes",),
                               error="route rejected by test"))
            with pytest.raises(TimeoutError):  # (giving up the read ends the stream)
                await envoy.receive(timeout_s=1.0)
            assert "route rejected by test" in log.read_text()
            async with httpx.AsyncClient() as http:
                scraped = (await http.get(metrics)).text
            assert 'aios_xds_nacks_total{type="RouteConfiguration"} 1.0' in scraped
        finally:
            envoy.cancel()


def test_the_served_listener_takes_its_routes_by_rds_over_ads() -> None:
    snap = snapshot(90, 10, 1)
    listener = snap.resources[LISTENER_TYPE]["aios_rest"].unpack()
    hcm = listener.filter_chains[0].filters[0].typed_config.unpack()
    assert hcm.route_config is None and hcm.rds.route_config_name == "aios_routes"
    assert hcm.rds.config_source.ads is not None
    assert set(snap.resources[ROUTE_TYPE]) == {"aios_routes"}
