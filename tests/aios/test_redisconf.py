"""One Redis URL form for every client: the quota's pipelined client, the routing store
and the decision-log fan-out reach the same password-protected Redis and database."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from aios.config import DecisionLogSettings, GatewaySettings
from aios.redisconf import RedisEndpoint
from gateway.resp import PipelinedRedis
from gateway.routestore import load_tables, open_route_store
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import DecisionLog
from tests.redis_server import RedisServer


@pytest.mark.parametrize(("url", "endpoint"), [
    ("redis://127.0.0.1:6380/2", RedisEndpoint("127.0.0.1", 6380, 2, None, None, False, None)),
    ("redis://:p%40ss@cache", RedisEndpoint("cache", 6379, 0, None, "p@ss", False, None)),
    ("rediss://alice:pw@cache:6390/1?ssl_ca_certs=/etc/ca.pem",
     RedisEndpoint("cache", 6390, 1, "alice", "pw", True, "/etc/ca.pem")),
])
def test_the_url_form(url: str, endpoint: RedisEndpoint) -> None:
    assert RedisEndpoint.from_url(url) == endpoint


@pytest.mark.parametrize(("url", "error"), [
    ("unix:///run/redis.sock", "unsupported Redis URL scheme 'unix'"),
    ("redis://cache/zero", "Redis URL database must be a number, got 'zero'"),
])
def test_bad_urls(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RedisEndpoint.from_url(url)


async def test_every_client_takes_the_same_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    check = redis.Redis(port=server.port, password="s3cret", db=3)
    try:
        assert await PipelinedRedis(url, 1.0).execute("PING") == b"PONG"
        settings = GatewaySettings.model_validate({"routing": {
            "store": "redis", "redis_url": url, "key_prefix": f"t{time.time_ns()}:"}})
        async with AsyncExitStack() as stack:
            store = await open_route_store(settings, stack)
            assert set(await load_tables(store, settings)) == {"claims_risk"}
        assert check.exists(f"{settings.routing.key_prefix}table:claims_risk")
        log = DecisionLogSettings(directory=tmp_path / "log", redis_stream_url=url,
                                  redis_stream_key="t:decisions")
        async with DecisionLog(log, CollectorRegistry()) as decisions:
            await decisions.append(DecisionRecord(request_id="r1"))
        assert check.xlen("t:decisions") == 1
    finally:
        check.close()
        server.stop()
