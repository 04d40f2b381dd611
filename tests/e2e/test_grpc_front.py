"""The two gRPC front doors (`server.grpc_server`: the lean h2 server, and grpcio for every
call) give tritonclient the same answers, through real gateways in front of the stack's
sidecar and Triton: model calls, errors, the methods grpcio answers behind the lean one
(streams, admin), and compressed calls."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from proto import routing_admin_pb2 as pb
from proto import routing_admin_pb2_grpc as pb_grpc
from tests.conftest import Stack
from tests.helpers import bearer, gateway_config, running, token

FRONTS = ("h2", "grpcio")
MODELS = {"claims_risk": {"targets": {"stable": {"backend": "local", "version": "2",
                                                 "weight": 100}}}}
CLAIM = [[5255.708, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]]


@pytest.fixture(scope="module")
def gateways(stack: Stack, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, str]]:
    """A gateway per front door, in front of the stack's sidecar: front → gRPC address."""
    tmp: Path = tmp_path_factory.mktemp("grpc-front")
    with contextlib.ExitStack() as services:
        addresses = {}
        for front in FRONTS:
            config, http_port, grpc_port = gateway_config(
                stack.sidecar_http, stack.sidecar_grpc, MODELS, server={"grpc_server": front})
            services.enter_context(running("gateway", config, http_port, tmp))
            addresses[front] = f"127.0.0.1:{grpc_port}"
        yield addresses


def infer(client: grpcclient.InferenceServerClient, model: str = "claims_risk",
          headers: dict[str, str] | None = None, **kwargs: Any) -> grpcclient.InferResult:
    features = grpcclient.InferInput("features", [1, 8], "FP32")
    features.set_data_from_numpy(np.array(CLAIM, dtype=np.float32))
    return client.infer(model, [features], headers=bearer() if headers is None else headers,
                        **kwargs)


def both(gateways: dict[str, str], call: Any) -> dict[str, Any]:
    """What ``call(client)`` gives on each front: its result, or its error's status and
    message."""
    out = {}
    for front, address in gateways.items():
        client = grpcclient.InferenceServerClient(address)
        try:
            out[front] = call(client)
        except InferenceServerException as exc:
            out[front] = (exc.status(), exc.message())
        finally:
            client.close()
    return out


def same_scores(a: Any, b: Any) -> bool:
    # Rows Triton batched with other traffic may differ in a float's last bits.
    return bool(np.allclose(a, b, rtol=1e-6, atol=0))


def test_a_model_call_scores_the_same_on_both_fronts(gateways: dict[str, str]) -> None:
    got = both(gateways, lambda c: infer(c))
    assert same_scores(got["h2"].as_numpy("risk_score"), got["grpcio"].as_numpy("risk_score"))
    responses = {front: r.get_response() for front, r in got.items()}
    assert {r.model_version for r in responses.values()} == {"2"}
    # The same response, but for the id each call was given and those last bits.
    for r in responses.values():
        r.id = ""
        del r.raw_output_contents[:]
    assert responses["h2"] == responses["grpcio"]


def test_compressed_calls_are_answered_too(gateways: dict[str, str]) -> None:
    got = both(gateways, lambda c: infer(c, compression_algorithm="gzip"))
    assert same_scores(got["h2"].as_numpy("risk_score"), got["grpcio"].as_numpy("risk_score"))


@pytest.mark.parametrize(("call", "status"), [
    (lambda c: infer(c, model="nope"), "StatusCode.NOT_FOUND"),
    (lambda c: infer(c, headers={}), "StatusCode.UNAUTHENTICATED"),
    (lambda c: infer(c, headers={"authorization": f"Bearer {token('routes:read')}"}),
     "StatusCode.PERMISSION_DENIED"),
    (lambda c: c.load_model("claims_risk", headers=bearer()), "StatusCode.UNIMPLEMENTED"),
], ids=["unknown-model", "no-token", "wrong-scope", "unsupported"])
def test_errors_are_the_same_on_both_fronts(gateways: dict[str, str], call: Any,
                                            status: str) -> None:
    got = both(gateways, call)
    assert got["h2"] == got["grpcio"]
    assert got["h2"][0] == status


@pytest.mark.parametrize("call", [
    lambda c: c.is_server_live(), lambda c: c.is_server_ready(),
    lambda c: c.get_server_metadata(as_json=True),
    lambda c: c.get_model_metadata("claims_risk", headers=bearer(), as_json=True),
    lambda c: c.is_model_ready("claims_risk", headers=bearer()),
], ids=["live", "ready", "server-metadata", "model-metadata", "model-ready"])
def test_server_and_model_calls_are_the_same_on_both_fronts(gateways: dict[str, str],
                                                             call: Any) -> None:
    got = both(gateways, call)
    assert got["h2"] == got["grpcio"]
    assert got["h2"] not in (False, None)


def test_a_stream_is_relayed_to_grpcio_behind_the_lean_front(gateways: dict[str, str],
                                                               ) -> None:
    def stream(client: grpcclient.InferenceServerClient) -> list[Any]:
        results: queue.Queue[Any] = queue.Queue()
        client.start_stream(lambda result, error: results.put(error or result),
                            headers=bearer())
        features = grpcclient.InferInput("features", [1, 8], "FP32")
        features.set_data_from_numpy(np.array(CLAIM, dtype=np.float32))
        for i in range(3):
            client.async_stream_infer("claims_risk", [features], request_id=str(i))
        got = [results.get(timeout=30) for _ in range(3)]
        client.stop_stream()
        return [(r.get_response().id, r.as_numpy("risk_score")) for r in got]

    got = both(gateways, stream)
    assert [i for i, _ in got["h2"]] == [i for i, _ in got["grpcio"]] == ["0", "1", "2"]
    assert all(same_scores(a, b) for (_, a), (_, b) in zip(got["h2"], got["grpcio"],
                                                           strict=True))


def test_the_admin_service_is_answered_behind_the_lean_front(gateways: dict[str, str],
                                                              ) -> None:
    answers = {}
    for front, address in gateways.items():
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.RoutingAdminStub(channel)
            routes = stub.ListRoutes(pb.ListRoutesRequest(), metadata=(
                ("authorization", f"Bearer {token('routes:read')}"),))
            answers[front] = [r.model for r in routes.routes]
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListRoutes(pb.ListRoutesRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert answers == {"h2": ["claims_risk"], "grpcio": ["claims_risk"]}
