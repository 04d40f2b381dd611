"""Two gateway replicas sharing one Redis: one quota between them, leases that outlive
a killed replica only until they lapse."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.helpers import gateway_config, infer_json, running, token
from tests.redis_server import RedisServer

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
RATE, BURST, CAP = 20.0, 10, 3
LEASE_TTL_S = 2.0


@dataclass(frozen=True)
class Replica:
    url: str
    process: Any


@pytest.fixture(scope="module")
def replicas(stack: Stack, redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """Two gateways, the same config but for their ports, in front of the session's sidecar."""
    tmp = tmp_path_factory.mktemp("replicas")
    quota = {
        "backend": "redis", "redis_url": redis_server.url, "replicas": 2,
        "lease_ttl_s": LEASE_TTL_S, "redis_timeout_ms": 200,
        "tenants": {
            "hammer": {"rate_per_s": RATE, "burst": BURST},
            "calm": {"rate_per_s": 1e6, "burst": 100000},
            "capped": {"rate_per_s": 1e6, "burst": 100000, "max_concurrent": CAP},
        },
    }
    models = {"claims_risk": {"backend": "local"}, "slow": {"backend": "local"}}
    with contextlib.ExitStack() as services:
        out = []
        for _ in range(2):
            config, http_port, _ = gateway_config(stack.sidecar_http, stack.sidecar_grpc,
                                                  models, quota=quota)
            process = services.enter_context(running("gateway", config, http_port, tmp))
            out.append(Replica(f"http://127.0.0.1:{http_port}", process))
        yield out


def post(client: httpx.Client, url: str, tenant: str, model: str = "claims_risk",
         params: dict[str, Any] | None = None) -> int:
    resp = client.post(f"{url}/v2/models/{model}/infer", content=infer_json([CLAIM], params),
                       headers={"authorization": f"Bearer {token(tenant=tenant)}"}, timeout=30)
    return resp.status_code


def test_one_quota_across_replicas(replicas: list[Replica]) -> None:
    results: dict[str, list[int]] = {"hammer": [], "calm": []}
    lock = threading.Lock()

    def hammer(i: int) -> None:
        with httpx.Client() as client:
            for j in range(40):
                tenant = "calm" if (i + j) % 5 == 0 else "hammer"
                code = post(client, replicas[(i + j) % 2].url, tenant)
                with lock:
                    results[tenant].append(code)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hammer, range(8)))
    elapsed = time.monotonic() - started
    accepted = results["hammer"].count(200)
    assert set(results["hammer"]) <= {200, 429}
    # Not per replica: one allowance, shared.
    assert accepted <= BURST + RATE * elapsed + 1, (accepted, elapsed)
    assert results["hammer"].count(429) > 0
    assert results["calm"] and set(results["calm"]) == {200}, "the other tenant is unaffected"


def _wave(replicas: list[Replica], n: int, delay_ms: int) -> list[int]:
    barrier = threading.Barrier(n)

    def one(i: int) -> int:
        with httpx.Client() as client:
            barrier.wait()
            return post(client, replicas[i % 2].url, "capped", "slow", {"delay_ms": delay_ms})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrency_cap_holds_across_replicas(replicas: list[Replica]) -> None:
    for _ in range(3):
        codes = _wave(replicas, 12, 600)
        assert set(codes) <= {200, 429}
        assert 1 <= codes.count(200) <= CAP, codes


def test_killed_replica_leases_lapse(replicas: list[Replica]) -> None:
    victim, survivor = replicas
    with ThreadPoolExecutor(CAP) as pool:
        def slow(_: int) -> int:
            with httpx.Client() as client:
                try:
                    return post(client, victim.url, "capped", "slow", {"delay_ms": 4000})
                except httpx.TransportError:
                    return -1  # the gateway died under it, as expected

        pending = [pool.submit(slow, i) for i in range(CAP)]
        time.sleep(0.8)  # all CAP leases are held in Redis by the victim
        quick = {"delay_ms": 1}
        with httpx.Client() as client:
            assert post(client, survivor.url, "capped", "slow", quick) == 429
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        killed_at = time.monotonic()
        with httpx.Client() as client:
            while post(client, survivor.url, "capped", "slow", quick) == 429:
                assert time.monotonic() - killed_at < LEASE_TTL_S + 2, "leases never lapsed"
                time.sleep(0.1)
        assert time.monotonic() - killed_at <= LEASE_TTL_S + 2
        assert all(f.result() == -1 for f in pending)
