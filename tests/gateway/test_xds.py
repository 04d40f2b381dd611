"""`gateway.xds`: ADS version/nonce handling (pure), and `aios envoy serve` over real gRPC."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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
from tests.helpers import REPO, TEST_HS256_SECRET, aios, free_ports, wait_until, write_config

BACKENDS = {"a": {"http": "127.0.0.1:8090", "grpc": "127.0.0.1:8091"},
            "b": {"http": "127.0.0.1:9090", "grpc": "127.0.0.1:9091"}}


def route(stable: int, canary: int) -> dict[str, Any]:
    return {"targets": {"stable": {"backend": "a", "version": "1", "weight": stable},
                        "canary": {"backend": "b", "version": "2", "weight": canary}}}


AUTH = {"jwks_file": "/keys/jwks.json"}
SETTINGS = GatewaySettings.model_validate({"backends": BACKENDS, "auth": AUTH,
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
        "backends": BACKENDS, "models": {"claims_risk": route(90, 10)}, "auth": AUTH,
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


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any],
                 ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer[0] or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(path: Path, thing: Any) -> Path:
    if isinstance(thing, x509.Certificate):
        path.write_bytes(thing.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(thing.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return path


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client (Envoy) certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("aios test CA", ca_key, (x509.Name([]), ca_key), ca=True)
    files = {"ca": _pem(tmp_path / "ca.pem", ca)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[who] = _pem(tmp_path / f"{who}.pem", _certificate(who, key, (ca.subject, ca_key)))
        files[f"{who}_key"] = _pem(tmp_path / f"{who}.key", key)
    return files


def _serve_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "stack.yaml", {"gateway": {
        "backends": BACKENDS, "models": {"claims_risk": route(90, 10)},
        # Both keys: the HMAC secret must stay in the gateway.
        "auth": {**AUTH, "hs256_secret": TEST_HS256_SECRET},
        "routing": {"state_file": str(tmp_path / "routes.json")}}})


REFUSED_SERVES = {
    "any address without TLS": ([], "xds: 0.0.0.0:{port} is not a loopback address: serve "
                                    "it with --tls-cert and --tls-key"),
    "a certificate without its key": (["--tls-cert", "{server}"],
                                      "xds: TLS needs both --tls-cert and --tls-key"),
    "an unreadable key": (["--tls-cert", "{server}", "--tls-key", "{tmp}/none.key"],
                          "xds: cannot read {tmp}/none.key: No such file or directory"),
}


@pytest.mark.parametrize(("flags", "error"), REFUSED_SERVES.values(),
                         ids=REFUSED_SERVES.keys())
def test_envoy_serve_refuses_plain_text_beyond_loopback(tmp_path: Path, pki: dict[str, Path],
                                                        flags: list[str], error: str) -> None:
    port, metrics = free_ports(2)
    values = {"port": port, "server": pki["server"], "tmp": tmp_path}
    out = subprocess.run(
        [sys.executable, "-m", "aios_cli", "envoy", "serve", "--config",
         str(_serve_config(tmp_path)), "--xds", f"0.0.0.0:{port}",
         "--metrics", f"127.0.0.1:{metrics}", *(f.format(**values) for f in flags)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert error.format(**values) in out.stderr and "Traceback" not in out.stderr


async def test_envoy_serve_over_tls_checks_client_certificates(tmp_path: Path,
                                                               pki: dict[str, Path]) -> None:
    port, metrics = free_ports(2)
    log = tmp_path / "xds.log"
    process = aios("envoy", "serve", "--config", str(_serve_config(tmp_path)),
                   "--xds", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}",
                   "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]),
                   "--tls-client-ca", str(pki["ca"]), log=log)
    try:
        wait_until(lambda: "xds: ADS on" in log.read_text(), 30, "envoy serve up", process, log)
        ca = pki["ca"].read_bytes()
        envoy = grpc.ssl_channel_credentials(ca, pki["client_key"].read_bytes(),
                                             pki["client"].read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", envoy) as channel:
            client = AdsClient(channel)
            try:
                client.send(request(LISTENER_TYPE))
                listeners = await client.receive()
            finally:
                client.cancel()
        assert listeners.type_url == LISTENER_TYPE
        served = b"".join(bytes(r.value) for r in listeners.resources)
        assert b"/keys/jwks.json" in served and TEST_HS256_SECRET.encode() not in served
        stranger = grpc.ssl_channel_credentials(ca)  # trusts the server, has no certificate
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", stranger) as channel:
            client = AdsClient(channel)
            try:
                client.send(request(LISTENER_TYPE))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.receive()
            finally:
                client.cancel()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        process.terminate()
        assert process.wait(30) == 0, log.read_text()[-2000:]
