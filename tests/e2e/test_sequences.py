"""Sequences (stateful models) through the real stack: the `accumulator` test model keeps
a running sum per sequence in its Triton model instance, and versions 1 and 2 are two
targets, so a request that strays from its sequence's target gets Triton's 400 ("must
specify the START flag") instead of the right sum. Two gateway replicas share the
sequence map in Redis; the weights change mid-sequence; a held target that is ejected or
removed fails the sequence with a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from aios.auditlog import records
from tests.conftest import Stack
from tests.e2e.test_decisions import sidecar_config
from tests.helpers import free_ports, gateway_config, running, token
from tests.redis_server import RedisServer

MODEL = "accumulator"
OPS = {"authorization": f"Bearer {token('routes:read routes:write', subject='ops')}"}
AUTH = {"authorization": f"Bearer {token(f'infer:{MODEL}')}"}


@dataclass(frozen=True)
class Replica:
    rest: str
    grpc: str


def accumulator_route(one: int, two: int, one_backend: str = "local") -> dict[str, Any]:
    return {"targets": {"one": {"backend": one_backend, "version": "1", "weight": one},
                        "two": {"backend": "local", "version": "2", "weight": two}}}


@dataclass(frozen=True)
class Flaky:
    """A second sidecar in front of the same Triton: a backend the test can take down."""

    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def flaky_and_replicas(stack: Stack, redis_server: RedisServer,
                       tmp_path_factory: pytest.TempPathFactory,
                       ) -> Iterator[tuple[Flaky, list[Replica]]]:
    tmp = tmp_path_factory.mktemp("sequences")
    f_http, f_grpc = free_ports(2)
    routing = {"store": "redis", "redis_url": redis_server.url,
               "key_prefix": f"aios:test-seq-{time.time_ns()}:"}
    with contextlib.ExitStack() as services:
        flaky = services.enter_context(running("sidecar", sidecar_config(
            stack, f_http, f_grpc, tmp / "flaky"), f_http, tmp))
        out = []
        for _ in range(2):
            config, http_port, grpc_port = gateway_config(
                stack.sidecar_http, stack.sidecar_grpc, {MODEL: accumulator_route(50, 50)},
                routing=routing, resilience={"eject_after_failures": 2, "ejection_s": 30},
                backends={"flaky": {"http": f"127.0.0.1:{f_http}",
                                    "grpc": f"127.0.0.1:{f_grpc}"}})
            services.enter_context(running("gateway", config, http_port, tmp))
            out.append(Replica(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"))
        yield Flaky(flaky), out


@pytest.fixture
def replicas(flaky_and_replicas: tuple[Flaky, list[Replica]]) -> list[Replica]:
    return flaky_and_replicas[1]


def step(replica: Replica, sequence: int | str, value: int, start: bool = False,
         end: bool = False) -> httpx.Response:
    body = {"parameters": {"sequence_id": sequence, "sequence_start": start,
                           "sequence_end": end},
            "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1],
                        "data": [value]}]}
    return httpx.post(f"http://{replica.rest}/v2/models/{MODEL}/infer", json=body,
                      headers=AUTH, timeout=30)


def set_weights(replica: Replica, one: int, two: int) -> None:
    current = httpx.get(f"http://{replica.rest}/admin/routes/{MODEL}", headers=OPS).json()
    resp = httpx.put(f"http://{replica.rest}/admin/routes/{MODEL}/weights", headers=OPS,
                     json={"base_revision": current["revision"],
                           "weights": {"one": one, "two": two}})
    assert resp.status_code == 200, resp.text


def replace(replica: Replica, route: dict[str, Any]) -> None:
    current = httpx.get(f"http://{replica.rest}/admin/routes/{MODEL}", headers=OPS).json()
    resp = httpx.put(f"http://{replica.rest}/admin/routes/{MODEL}", headers=OPS,
                     json={"base_revision": current["revision"], **route})
    assert resp.status_code == 200, resp.text


def test_every_sequence_stays_on_its_target_across_weight_changes_and_replicas(
        replicas: list[Replica], stack: Stack, redis_server: RedisServer) -> None:
    set_weights(replicas[0], 50, 50)
    base = time.time_ns() % 10**9 * 100
    sequences = {base + n: [n + 1, 2, 3, 4, 5] for n in range(16)}
    targets: dict[int, set[str]] = {s: set() for s in sequences}
    for i in range(5):
        if i == 2:
            set_weights(replicas[0], 100, 0)  # new sequences only: held ones stay
        if i == 3:
            set_weights(replicas[1], 0, 100)
            time.sleep(1.5)  # both replicas have the change (Redis store, <= 1 s)
        for s, values in sequences.items():
            resp = step(replicas[(s + i) % 2], s, values[i], start=i == 0, end=i == 4)
            assert resp.status_code == 200, (i, s, targets[s], dict(resp.headers), resp.text)
            assert resp.json()["outputs"][0]["data"] == [sum(values[:i + 1])]
            assert (resp.headers["x-aios-sequence"], resp.headers["x-aios-sequence-position"]
                    ) == (str(s), str(i + 1))
            targets[s].add(resp.headers["x-aios-target"])
    assert all(len(t) == 1 for t in targets.values()), targets
    assert {t for ts in targets.values() for t in ts} == {"one", "two"}, "both were used"
    ended = redis.Redis.from_url(redis_server.url).keys("aios:test-seq-*seq:*")
    assert not [k for k in ended if any(str(s).encode() in k for s in sequences)], \
        "sequence_end released every sequence"
    logged = [r for r in records(stack.config_path.parent / "decisions")
              if r.model == MODEL and r.sequence_id == str(base)]
    assert [r.sequence_position for r in logged] == [1, 2, 3, 4, 5]


def test_tritonclient_sequences_over_both_protocols(replicas: list[Replica]) -> None:
    set_weights(replicas[0], 50, 50)
    rest = httpclient.InferenceServerClient(replicas[0].rest)
    grpc_client = grpcclient.InferenceServerClient(replicas[1].grpc)
    for n, client, module in ((1, rest, httpclient), (2, grpc_client, grpcclient)):
        sequence = time.time_ns() % 10**9 + n
        total = 0
        for i, value in enumerate([4, 5, 6]):
            inputs = [module.InferInput("INPUT", [1, 1], "INT32")]
            inputs[0].set_data_from_numpy(np.asarray([[value]], dtype=np.int32))
            result = client.infer(MODEL, inputs, sequence_id=sequence,
                                  sequence_start=i == 0, sequence_end=i == 2,
                                  headers=dict(AUTH))  # tritonclient adds to what it is given
            total += value
            assert result.as_numpy("OUTPUT").ravel().tolist() == [total]


def test_tritonclients_aio_sequences_over_both_protocols(replicas: list[Replica]) -> None:
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    async def run() -> None:
        rest = http_aio.InferenceServerClient(replicas[1].rest)
        grpc_client = grpc_aio.InferenceServerClient(replicas[0].grpc)
        try:
            for n, client, module in ((3, rest, httpclient), (4, grpc_client, grpcclient)):
                sequence = time.time_ns() % 10**9 + n
                total = 0
                for i, value in enumerate([7, 8, 9]):
                    inputs = [module.InferInput("INPUT", [1, 1], "INT32")]
                    inputs[0].set_data_from_numpy(np.asarray([[value]], dtype=np.int32))
                    result = await client.infer(MODEL, inputs, sequence_id=sequence,
                                                sequence_start=i == 0, sequence_end=i == 2,
                                                headers=dict(AUTH))
                    total += value
                    assert result.as_numpy("OUTPUT").ravel().tolist() == [total]
        finally:
            await rest.close()
            await grpc_client.close()

    asyncio.run(run())


def test_a_held_target_that_fails_or_leaves_the_table_fails_the_sequence(
        flaky_and_replicas: tuple[Flaky, list[Replica]]) -> None:
    flaky, replicas = flaky_and_replicas
    replace(replicas[0], accumulator_route(100, 0, one_backend="flaky"))
    time.sleep(1.5)
    sequence = time.time_ns() % 10**9 + 7
    assert step(replicas[0], sequence, 1, start=True).headers["x-aios-target"] == "one"
    flaky.process.terminate()  # the backend that holds the sequence's state goes away
    flaky.process.wait(30)
    try:
        statuses = [step(replicas[0], sequence, 1).status_code for _ in range(2)]
        assert statuses == [502, 502], "not retried on another target: its state is there"
        resp = step(replicas[0], sequence, 1)
        assert (resp.status_code, resp.json()["error"]) == (
            503, f"sequence {sequence} of model '{MODEL}' is held on target 'one', which "
                 "is ejected as failing; its state lives there, so it is not moved: start "
                 "the sequence again")
        other = time.time_ns() % 10**9 + 8
        assert step(replicas[0], other, 1, start=True).status_code in (502, 503)
    finally:
        replace(replicas[0], {"targets": {"two": {"backend": "local", "version": "2",
                                                  "weight": 100}}})
        time.sleep(1.5)
    resp = step(replicas[1], sequence, 1)
    assert (resp.status_code, resp.json()["error"]) == (
        409, f"sequence {sequence} of model '{MODEL}' is held on target 'one', which its "
             "routing table no longer has: start the sequence again")
    restarted = step(replicas[1], sequence, 10, start=True)
    assert restarted.status_code == 200 and restarted.json()["outputs"][0]["data"] == [10]
    assert restarted.headers["x-aios-target"] == "two"


@pytest.mark.parametrize(("parameters", "message"), [
    ({"sequence_id": -1}, "parameter 'sequence_id' must be a non-negative integer or a "
                          "string of at most 128 characters; got -1"),
    ({"sequence_id": 5, "sequence_start": "yes"},
     "parameter 'sequence_start' must be true or false; got 'yes'"),
    ({"sequence_end": True}, "parameter 'sequence_end' needs a 'sequence_id'"),
])
def test_malformed_sequence_parameters_are_400(replicas: list[Replica],
                                               parameters: dict[str, Any],
                                               message: str) -> None:
    body = {"parameters": parameters,
            "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]}]}
    resp = httpx.post(f"http://{replicas[0].rest}/v2/models/{MODEL}/infer", json=body,
                      headers=AUTH, timeout=30)
    assert (resp.status_code, resp.json()) == (400, {"error": message})
