"""ModelStreamInfer through the real stack (gateway → sidecar → Triton), driven by
tritonclient's own stream API (`start_stream` / `async_stream_infer`, and the aio
`stream_infer`): the decoupled `repeat` test model answers each request with a response
per element of its input, then Triton's final flag; the `accumulator` sequence model keeps
a running sum per sequence, so a request that strays from its sequence's target fails.
Two gateway replicas share routing and sequences in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from aios.auditlog import records
from tests.conftest import Stack
from tests.e2e.test_decisions import sidecar_config
from tests.e2e.test_sequences import set_weights  # the accumulator's targets "one", "two"
from tests.helpers import REPO, TEST_TENANT, free_ports, gateway_config, running, token, wait_until
from tests.redis_server import RedisServer

AUTH = {"authorization": f"Bearer {token('infer:repeat infer:accumulator')}"}
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
LIMITS = {"stream_max_messages": 5, "stream_idle_s": 1.5, "max_streams": 2,
          "stream_max_in_flight": 2, "max_body_bytes": 65536}


@dataclass(frozen=True)
class Gateway:
    rest: str
    grpc: str


def accumulator_route(one: int, two: int) -> dict[str, Any]:
    return {"targets": {"one": {"backend": "local", "version": "1", "weight": one},
                        "two": {"backend": "local", "version": "2", "weight": two}}}


@dataclass(frozen=True)
class Streaming:
    gateways: list[Gateway]
    own_sidecar: subprocess.Popen[bytes]


@pytest.fixture
def gateways(streaming: Streaming) -> list[Gateway]:
    return streaming.gateways


@pytest.fixture(scope="module")
def streaming(stack: Stack, redis_server: RedisServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Streaming]:
    """Two replicas on Redis, and a third with small stream limits (LIMITS) whose `repeat`
    goes to a sidecar of its own (on the same Triton), which a test takes down."""
    tmp = tmp_path_factory.mktemp("streaming")
    f_http, f_grpc = free_ports(2)
    routing = {"store": "redis", "redis_url": redis_server.url,
               "key_prefix": f"aios:test-stream-{time.time_ns()}:"}
    models = {"repeat": {"backend": "local"}, "accumulator": accumulator_route(50, 50)}
    quota = {"tenants": {TEST_TENANT: {"rate_per_s": 1e6, "burst": 100000, "top_priority": 2},
                         "stream-tight": {"rate_per_s": 0.001, "burst": 3}}}
    with contextlib.ExitStack() as services:
        own_sidecar = services.enter_context(running("sidecar", sidecar_config(
            stack, f_http, f_grpc, tmp / "own"), f_http, tmp))
        own = {"own": {"http": f"127.0.0.1:{f_http}", "grpc": f"127.0.0.1:{f_grpc}"}}
        out = []
        for limits in ({}, {}, LIMITS):
            config, http_port, grpc_port = gateway_config(
                stack.sidecar_http, stack.sidecar_grpc,
                {**models, "repeat": {"backend": "own"}} if limits else models,
                server=limits, routing=routing if not limits else {}, quota=quota,
                backends=own)
            services.enter_context(running("gateway", config, http_port, tmp))
            out.append(Gateway(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"))
        yield Streaming(out, own_sidecar)


def repeat_input(values: list[int]) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("IN", [len(values)], "INT32")
    inp.set_data_from_numpy(np.asarray(values, dtype=np.int32))
    return [inp]


def stream(address: str, send: Any, headers: dict[str, str] | None = None,
           ) -> list[tuple[Any, Any]]:
    """Open a tritonclient stream, let ``send(client)`` send on it, close it; every
    (result, error) its callback got, in order."""
    client = grpcclient.InferenceServerClient(address)
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)),
                        headers=dict(AUTH if headers is None else headers))
    send(client)
    client.stop_stream()
    out = []
    while not got.empty():
        out.append(got.get())
    client.close()
    return out


def metric(address: str, name: str) -> float:
    text = httpx.get(f"http://{address}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_a_decoupled_model_streams_every_response_in_order_and_each_is_recorded(
        gateways: list[Gateway], stack: Stack) -> None:
    n = 1000

    def send(client: grpcclient.InferenceServerClient) -> None:
        for i in range(n):
            client.async_stream_infer("repeat", repeat_input([i, i + 1, i + 2]),
                                      request_id=f"req-{i}")

    got = stream(gateways[0].grpc, send)
    assert [str(e) for _, e in got if e is not None][:3] == []
    assert len(got) == 3 * n  # no empty final response: it was not asked for
    by_request: dict[str, list[tuple[int, int]]] = {}
    decisions: dict[str, set[str]] = {}
    for result, _ in got:
        response = result.get_response()
        by_request.setdefault(response.id, []).append(
            (int(result.as_numpy("IDX")[0]), int(result.as_numpy("OUT")[0])))
        decisions.setdefault(response.id, set()).add(
            response.parameters["aios_decision_id"].string_param)
    assert list(by_request) == [f"req-{i}" for i in range(n)], "requests answered in order"
    for i in range(n):
        assert by_request[f"req-{i}"] == [(0, i), (1, i + 1), (2, i + 2)]
    assert all(len(ids) == 1 for ids in decisions.values()), "one decision id per request"
    ids = {next(iter(d)): rid for rid, d in decisions.items()}

    def logged() -> list[Any]:
        return [r for r in records(stack.config_path.parent / "decisions")
                if r.decision_id in ids]

    wait_until(lambda: len(logged()) == 3 * n, 20, "every response recorded")
    for record in logged():
        assert (record.model, record.protocol, record.outcome, record.tenant) == (
            "repeat", "grpc_stream", "ok", TEST_TENANT)
        assert record.request_id == ids[record.decision_id]
    indexes: dict[str, list[int]] = {}
    for record in logged():
        indexes.setdefault(record.decision_id, []).append(record.response_index)
    assert all(sorted(v) == [0, 1, 2] for v in indexes.values())


def test_the_aio_client_streams(
        gateways: list[Gateway]) -> None:
    import tritonclient.grpc.aio as grpc_aio

    async def run() -> list[tuple[Any, Any]]:
        client = grpc_aio.InferenceServerClient(gateways[1].grpc)

        async def requests() -> Any:
            for i in range(3):
                yield {"model_name": "repeat", "inputs": repeat_input([10 * i, 10 * i + 1]),
                       "request_id": f"a{i}"}

        out = []
        try:
            async for result, error in client.stream_infer(requests(), headers=dict(AUTH)):
                out.append((result, error))
        finally:
            await client.close()
        return out

    got = asyncio.run(run())
    assert [e for _, e in got if e is not None] == []
    seen = []
    for result, _ in got:
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        out = result.as_numpy("OUT")
        seen.append((response.id, None if out is None else int(out[0]), final))
    assert seen == [("a0", 0, False), ("a0", 1, False), ("a1", 10, False), ("a1", 11, False),
                    ("a2", 20, False), ("a2", 21, False)]


def test_a_failing_element_is_answered_in_its_place_and_the_stream_goes_on(
        gateways: list[Gateway]) -> None:
    got = stream(gateways[0].grpc, lambda c: [
        c.async_stream_infer("repeat", repeat_input([1, -1, 2]), request_id="x"),
        c.async_stream_infer("repeat", repeat_input([3]), request_id="y")])
    assert [(r.as_numpy("OUT")[0] if r is not None else None, str(e) if e else None)
            for r, e in got] == [(1, None), (None, "element 1 is negative"), (2, None),
                                 (3, None)]


def raw_stream(address: str, messages: list[bytes], metadata: tuple[tuple[str, str], ...]
               ) -> list[service_pb2.ModelStreamInferResponse]:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(STREAM)(iter(messages), metadata=metadata)
        return [service_pb2.ModelStreamInferResponse.FromString(m) for m in call]


def repeat_request(request_id: str, model: str = "repeat", **parameters: Any) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "IN", "INT32"
    tensor.shape.append(1)
    request.raw_input_contents.append(np.asarray([5], dtype=np.int32).tobytes())
    for name, value in parameters.items():
        if isinstance(value, str):
            request.parameters[name].string_param = value
        else:
            request.parameters[name].int64_param = value
    return bytes(request.SerializeToString())


@pytest.mark.parametrize(("message", "scope", "error"), [
    (repeat_request("m1", model="nope"), "infer:*",
     "Request for unknown model: 'nope' is not found"),
    (repeat_request("m2"), "infer:accumulator",
     "token lacks the scope 'infer:repeat'"),
    (repeat_request("m3", **{"aios.hop.x-aios-tenant": "someone-else"}), "infer:*",
     "parameter 'aios.hop.x-aios-tenant' is reserved and cannot be set by clients"),
    (repeat_request("m4", triton_x=1), "infer:*",
     "parameter 'triton_x' is reserved and cannot be set by clients"),
    (repeat_request("m5", priority=-1), "infer:*",
     "parameter 'priority' must be a non-negative integer, a priority level (1 is the most "
     "urgent, 0 the model's default); got -1"),
    (b"\xff\xff not protobuf", "infer:*", "malformed protobuf: not a ModelInferRequest"),
], ids=["unknown-model", "scope", "spoofed-hop-value", "reserved", "bad-priority",
        "malformed"])
def test_a_refused_request_gets_its_error_and_the_stream_goes_on(
        gateways: list[Gateway], message: bytes, scope: str, error: str) -> None:
    metadata = (("authorization", f"Bearer {token(scope)}"),)
    with contextlib.suppress(Exception):
        sent_id = service_pb2.ModelInferRequest.FromString(message).id
    got = raw_stream(gateways[0].grpc, [message, repeat_request("ok", model="accumulator")
                                        if scope == "infer:accumulator" else
                                        repeat_request("ok")], metadata)
    assert (got[0].error_message, got[0].infer_response.id) == (
        error, sent_id if not message.startswith(b"\xff") else "")
    assert got[1].infer_response.id == "ok", "the stream went on"


def test_a_bad_token_refuses_each_request(gateways: list[Gateway]) -> None:
    got = raw_stream(gateways[0].grpc, [repeat_request("t1")],
                     (("authorization", "Bearer not-a-token"),))
    assert [(r.error_message, r.infer_response.id) for r in got] == [
        ("token is malformed", "t1")]


def test_quota_is_charged_per_request_message(gateways: list[Gateway]) -> None:
    metadata = (("authorization", f"Bearer {token('infer:repeat', tenant='stream-tight')}"),)
    got = raw_stream(gateways[0].grpc, [repeat_request(f"q{i}") for i in range(5)], metadata)
    # A refusal is answered at once, before what the backend answers: order by id.
    got.sort(key=lambda r: r.infer_response.id)
    assert [r.infer_response.id for r in got] == [f"q{i}" for i in range(5)]
    assert [r.error_message for r in got[:3]] == ["", "", ""]  # the burst
    assert [r.error_message for r in got[3:]] == [
        "tenant 'stream-tight' is over its request rate quota for model 'repeat'"] * 2


def test_priority_and_timeout_beyond_the_policy_are_clamped_and_said(
        gateways: list[Gateway]) -> None:
    got = raw_stream(gateways[0].grpc, [repeat_request("p1", priority=1, timeout=10**12),
                                        repeat_request("p2", priority=2)],
                     (("authorization", AUTH["authorization"]),))
    assert [r.error_message for r in got] == ["", ""]
    clamped = got[0].infer_response.parameters["aios_clamped"].string_param
    assert clamped.startswith("priority 1 -> 2 (the most urgent this tenant may ask for); "
                              "timeout 1000000000000 us -> "), clamped
    assert "aios_clamped" not in got[1].infer_response.parameters


def sequence_step(client: grpcclient.InferenceServerClient, sequence: int, value: int,
                  start: bool, end: bool) -> None:
    inp = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    inp.set_data_from_numpy(np.asarray([[value]], dtype=np.int32))
    client.async_stream_infer("accumulator", [inp], request_id=f"{sequence}-{value}",
                              sequence_id=sequence, sequence_start=start, sequence_end=end)


def test_streamed_sequences_stay_on_their_target_across_a_weight_change_and_replicas(
        gateways: list[Gateway], stack: Stack) -> None:
    set_weights(gateways[0], 50, 50)
    base = time.time_ns() % 10**9 * 100
    sequences = [base + n for n in range(12)]
    # The first two steps of each sequence on replica 0's stream ...
    first = stream(gateways[0].grpc, lambda c: [
        sequence_step(c, s, v, v == 1, False) for v in (1, 2) for s in sequences])
    set_weights(gateways[0], 100, 0)  # held sequences stay; only new ones move
    time.sleep(1.5)  # the other replica has the change (Redis store, <= 1 s)
    # ... the last two on replica 1's.
    second = stream(gateways[1].grpc, lambda c: [
        sequence_step(c, s, v, False, v == 4) for v in (3, 4) for s in sequences])
    for got, totals in ((first, (1, 3)), (second, (6, 10))):
        assert [e for _, e in got if e is not None] == []
        sums = {r.get_response().id: int(r.as_numpy("OUTPUT").ravel()[0]) for r, _ in got}
        for s in sequences:
            assert [sums[f"{s}-{v}"] for v in ((1, 2) if totals[0] == 1 else (3, 4))] == \
                list(totals)
    logged = [r for r in records(stack.config_path.parent / "decisions")
              if r.model == "accumulator" and r.sequence_id in {str(s) for s in sequences}]
    by_sequence: dict[str, set[str]] = {}
    for record in logged:
        by_sequence.setdefault(record.sequence_id, set()).add(record.route_target)
    assert len(by_sequence) == len(sequences)
    assert all(len(t) == 1 for t in by_sequence.values()), by_sequence
    assert sorted(r.sequence_position for r in logged if r.sequence_id == str(base)) == \
        [1, 2, 3, 4]


def test_a_stream_past_its_message_limit_is_ended(gateways: list[Gateway]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        raw_stream(gateways[2].grpc, [repeat_request(f"l{i}") for i in range(7)],
                   (("authorization", AUTH["authorization"]),))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == ("a stream carries at most 5 request messages: open "
                                      "another stream")


def test_an_idle_stream_is_ended(gateways: list[Gateway]) -> None:
    def slowly() -> Iterator[bytes]:
        yield repeat_request("i1")
        time.sleep(4)
        yield repeat_request("i2")

    with grpc.insecure_channel(gateways[2].grpc) as channel:
        call = channel.stream_stream(STREAM)(slowly(), metadata=(
            ("authorization", AUTH["authorization"]),))
        started = time.monotonic()
        got = []
        with pytest.raises(grpc.RpcError) as caught:
            for message in call:
                got.append(service_pb2.ModelStreamInferResponse.FromString(message))
    assert [r.infer_response.id for r in got] == ["i1"]
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.details() == ("the stream was idle for 1.5 s (no message either "
                                      "way): it is closed")
    assert time.monotonic() - started < 3.5


def test_streams_beyond_the_servers_limit_are_refused(gateways: list[Gateway]) -> None:
    metadata = (("authorization", AUTH["authorization"]),)
    with grpc.insecure_channel(gateways[2].grpc) as channel:
        held: queue.Queue[bytes] = queue.Queue()

        def waiting() -> Iterator[bytes]:
            yield repeat_request("first")
            yield held.get()

        opened = [channel.stream_stream(STREAM)(waiting(), metadata=metadata)
                  for _ in range(2)]
        for call in opened:  # each is open on the server: it answered
            assert service_pb2.ModelStreamInferResponse.FromString(next(call)).error_message \
                == ""
        with pytest.raises(grpc.RpcError) as caught:
            list(channel.stream_stream(STREAM)(iter([repeat_request("s3")]),
                                                metadata=metadata))
        for _ in opened:
            held.put(repeat_request("second"))
        for call in opened:
            assert [service_pb2.ModelStreamInferResponse.FromString(m).infer_response.id
                    for m in call] == ["second"]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == ("this server has 2 streams open, its limit: try again "
                                      "later")


def settled(gateway: Gateway, stack: Stack, tasks: float) -> bool:
    return metric(gateway.rest, "aios_gateway_in_flight_requests") == 0 and \
        metric(stack.sidecar_http, "aios_sidecar_in_flight_requests") == 0 and \
        metric(gateway.rest, "aios_gateway_asyncio_tasks") <= tasks


def test_a_cancelled_stream_frees_everything_on_both_hops(gateways: list[Gateway],
                                                          stack: Stack) -> None:
    gateway = gateways[1]
    tasks = metric(gateway.rest, "aios_gateway_asyncio_tasks")
    with grpc.insecure_channel(gateway.grpc) as channel:
        big = [repeat_request(f"c{i}") for i in range(400)]
        call = channel.stream_stream(STREAM)(iter(big), metadata=(
            ("authorization", AUTH["authorization"]),))
        next(call)  # answers are coming, most requests still in flight
        call.cancel()
    wait_until(lambda: settled(gateway, stack, tasks), 10, "both hops freed the stream")


CLIENT = """
import os, sys, numpy as np, tritonclient.grpc as g
client = g.InferenceServerClient(sys.argv[1])
client.start_stream(callback=lambda result, error: (print("answer", flush=True)),
                    headers={"authorization": sys.argv[2]})
for i in range(2000):
    inp = g.InferInput("IN", [50], "INT32")
    inp.set_data_from_numpy(np.arange(50, dtype=np.int32))
    client.async_stream_infer("repeat", [inp])
input()
"""


def test_a_client_that_vanishes_mid_stream_frees_everything(gateways: list[Gateway],
                                                            stack: Stack) -> None:
    gateway = gateways[1]
    tasks = metric(gateway.rest, "aios_gateway_asyncio_tasks")
    client = subprocess.Popen([sys.executable, "-c", CLIENT, gateway.grpc, AUTH["authorization"]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == b"answer"
        assert metric(gateway.rest, "aios_gateway_in_flight_requests") > 0
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    wait_until(lambda: settled(gateway, stack, tasks), 15, "both hops freed the stream")


def test_a_stream_to_the_sidecar_directly_is_recorded_too(stack: Stack) -> None:
    got = stream(stack.sidecar_grpc, lambda c: c.async_stream_infer(
        "repeat", repeat_input([4, 5]), request_id="direct"), headers={})
    ids = {r.get_response().parameters["aios_decision_id"].string_param for r, _ in got}
    assert [int(r.as_numpy("OUT")[0]) for r, _ in got] == [4, 5]
    assert len(ids) == 1
    wait_until(lambda: len([r for r in records(stack.config_path.parent / "decisions")
                            if r.decision_id in ids]) == 2, 10, "both responses recorded")


def test_tritonclient_raises_triton_text_for_a_refused_stream_request(
        gateways: list[Gateway]) -> None:
    got = stream(gateways[0].grpc, lambda c: c.async_stream_infer(
        "nope", repeat_input([1]), request_id="n"))
    assert len(got) == 1 and isinstance(got[0][1], InferenceServerException)
    assert got[0][1].message() == "Request for unknown model: 'nope' is not found"


def test_a_message_over_the_size_limit_ends_the_stream(gateways: list[Gateway]) -> None:
    request = service_pb2.ModelInferRequest.FromString(repeat_request("big"))
    request.raw_input_contents[0] = b"\0" * 100_000
    with pytest.raises(grpc.RpcError) as caught:
        raw_stream(gateways[2].grpc, [bytes(request.SerializeToString())],
                   (("authorization", AUTH["authorization"]),))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max (100" in (caught.value.details() or "")


def test_a_backend_that_dies_mid_stream_ends_the_clients_stream(
        streaming: Streaming) -> None:
    """Last in this module: it takes the third gateway's `repeat` sidecar down."""
    gateway = streaming.gateways[2]
    own = streaming.own_sidecar
    metadata = (("authorization", AUTH["authorization"]),)
    with grpc.insecure_channel(gateway.grpc) as channel:
        held: queue.Queue[bytes] = queue.Queue()

        def requests() -> Iterator[bytes]:
            yield repeat_request("before")
            yield held.get()

        call = channel.stream_stream(STREAM)(requests(), metadata=metadata)
        first = service_pb2.ModelStreamInferResponse.FromString(next(call))
        assert (first.error_message, first.infer_response.id) == ("", "before")
        own.kill()
        own.wait(10)
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        held.put(repeat_request("after"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (caught.value.details() or "").startswith("backend 'own' unavailable: ")
    assert metric(gateway.rest, "aios_gateway_in_flight_requests") == 0
