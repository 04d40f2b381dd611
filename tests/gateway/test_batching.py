"""Envelopes of calls from the gateway to its sidecar (`gateway.batching`), on the
session's real stack: concurrent calls, each with its own identity, answer and record."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from aios.auditlog import records
from aios.config import UpstreamSettings
from aios.envelope import BATCH_PATH, Call, encode_calls
from aios.tracing import Tracing
from aios.upstream import HttpReply, HttpUpstream
from gateway.batching import BackendBatching, calls_histogram, infer_path
from gateway.routing import ShadowSpec
from gateway.shadow import ShadowJob, ShadowRunner
from tests.conftest import Stack
from tests.e2e.test_decisions import decisions
from tests.helpers import REPO, TEST_TENANT, bearer, schema_flags, token
from tests.sidecar.test_batching import rows_body

INFER = "/v2/models/claims_risk/infer"
V1, V2 = (f"/v2/models/claims_risk/versions/{v}/infer" for v in "12")
# Claims like those the model was trained on: inside every feature's training range.
GOLDEN = np.asarray(json.loads((REPO / "model_repo/claims_risk/2/golden.json").read_text())[
    "inputs"], "<f4")


def histogram(address: str, name: str) -> tuple[float, float]:
    """(requests, calls in them) of a calls-per-request histogram."""
    text = httpx.get(f"http://{address}/metrics").text
    found = {m.group(1): float(m.group(2)) for m in re.finditer(
        rf"^{name}_(count|sum) (\S+)$", text, re.M)}
    return found.get("count", 0.0), found.get("sum", 0.0)


async def post_all(url: str, calls: list[tuple[bytes, dict[str, str]]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=len(calls)),
                                 timeout=30) as client:
        return await asyncio.gather(*(client.post(url, content=b, headers=h)
                                      for b, h in calls))


def test_concurrent_calls_reach_the_sidecar_in_envelopes_each_with_its_identity(
        stack: Stack) -> None:
    url = f"http://{stack.gateway_http}{INFER}"
    assert httpx.post(url, content=rows_body(np.ones((1, 8), "<f4")),
                      headers=bearer()).status_code == 200
    time.sleep(0.5)  # the first call asks the backend whether it is a sidecar
    rng = np.random.default_rng(11)
    calls = [(f"env-{i}", "alice" if i % 2 else "bob",
              rng.uniform(0, 5000, (1 + i % 2, 8)).astype("<f4")) for i in range(40)]
    before = histogram(stack.gateway_http, "aios_gateway_calls_per_backend_request")
    replies = asyncio.run(post_all(url, [
        (rows_body(x, rid), {"authorization": f"Bearer {token(subject=who)}"})
        for rid, who, x in calls]))
    after = histogram(stack.gateway_http, "aios_gateway_calls_per_backend_request")
    requests, merged = after[0] - before[0], after[1] - before[1]
    assert merged == 40 and requests < 40, (requests, merged)

    direct = f"http://{stack.triton_http}/v2/models/claims_risk/versions/2/infer"
    for (rid, _, x), reply in zip(calls, replies, strict=True):
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-aios-target"] == "default"
        doc = reply.json()
        assert (doc["id"], doc["model_version"]) == (rid, "2")
        alone = httpx.post(direct, content=rows_body(x)).json()["outputs"][0]["data"]
        np.testing.assert_allclose(doc["outputs"][0]["data"], alone, rtol=1e-6)

    found = {r.request_id: r for r in records(decisions(stack))
             if r.request_id.startswith("env-")}
    assert sorted(found) == sorted(rid for rid, _, _ in calls)
    for rid, who, x in calls:
        record = found[rid]
        assert (record.tenant, record.subject, record.route_target, record.version) == (
            TEST_TENANT, who, "default", "2")
        np.testing.assert_array_equal(np.frombuffer(record.inputs[0].contents, "<f4"),
                                      x.ravel())


def test_the_gateway_takes_no_envelopes_from_clients(stack: Stack) -> None:
    envelope = encode_calls([("/v2/models/claims_risk/infer",
                              [("x-aios-tenant", "someone-else")],
                              rows_body(np.ones((1, 8), "<f4")))])
    resp = httpx.post(f"http://{stack.gateway_http}{BATCH_PATH}", content=envelope,
                      headers=bearer())
    assert resp.status_code == 404


def test_the_sidecar_answers_each_call_of_an_envelope_on_its_own(stack: Stack) -> None:
    good = rows_body(np.full((1, 8), 2.0, "<f4"), "one")
    bad = rows_body(np.ones((1, 8), "<f4"), "two", name="featurez")
    path = "/v2/models/claims_risk/versions/2/infer"
    envelope = encode_calls([(path, [("x-aios-subject", "s1")], good),
                             (path, [("x-aios-subject", "s2")], bad),
                             (path, [("x-aios-subject", "s3")], good)])
    resp = httpx.post(f"http://{stack.sidecar_http}{BATCH_PATH}", content=envelope)
    assert resp.status_code == 200
    answers = resp.json()["replies"]
    assert [a["status"] for a in answers] == [200, 400, 200]
    direct = httpx.post(f"http://{stack.triton_http}/v2/models/claims_risk/versions/2/infer",
                        content=bad)
    assert answers[1]["body"] == direct.json()
    assert answers[0]["body"]["id"] == "one" and answers[0]["body"] == answers[2]["body"]


@pytest.mark.parametrize("envelope, message", [
    (b"nope", "batch envelope is not valid JSON"),
    (json.dumps({"calls": []}).encode(), "batch envelope needs 1 to 1024 'calls'"),
    (encode_calls([("/v2/health/ready", [], b"{}")]),
     "batch envelope: not a model path: '/v2/health/ready'"),
    (encode_calls([("/v2/models/claims_risk/infer", [], b"{}"),
                   ("/v2/models/claims_risk/config", [], b"{}")]),
     "batch envelope: not an infer path: '/v2/models/claims_risk/config'"),
], ids=["not json", "no calls", "not a model", "not infer"])
def test_a_bad_envelope_gets_400_naming_what_is_wrong(stack: Stack, envelope: bytes,
                                                      message: str) -> None:
    resp = httpx.post(f"http://{stack.sidecar_http}{BATCH_PATH}", content=envelope)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(message)


def test_a_bad_call_in_an_envelope_gets_its_own_400(stack: Stack) -> None:
    envelope = encode_calls([("/v2/models/claims_risk/infer", [], b'{"inputs": []}')])
    resp = httpx.post(f"http://{stack.sidecar_http}{BATCH_PATH}", content=envelope)
    answer: Any = resp.json()["replies"][0]
    assert (resp.status_code, answer["status"]) == (200, 400)
    assert answer["body"] == {"error": "'inputs' must be a non-empty list"}


def test_copies_sent_with_only_their_body_meet_in_envelopes_too(stack: Stack) -> None:
    """What shadow copies use: `request` finds the layout in the body itself."""

    async def main() -> list[Any]:
        registry = CollectorRegistry()
        settings = UpstreamSettings(http=stack.sidecar_http, grpc=stack.sidecar_grpc)
        async with HttpUpstream("local", settings) as http:
            batching = BackendBatching("local", http, 64, 1, calls_histogram(registry))
            path = "/v2/models/claims_risk/versions/2/infer"
            body = rows_body(np.full((1, 8), 3.0, "<f4"))
            await batching.request("POST", path, body, [])  # asks whether it is a sidecar
            await asyncio.sleep(0.3)
            replies = await asyncio.gather(*(
                batching.request("POST", path, rows_body(np.full((1, 8), float(i), "<f4"),
                                                         f"copy-{i}"),
                                 [], {"x-aios-shadow": "1"}) for i in range(12)))
            # Anything else still goes alone, as it came.
            ready = await batching.request("GET", "/v2/models/claims_risk/ready", b"", [])
            assert ready.status == 200
            count = registry.get_sample_value("aios_gateway_calls_per_backend_request_count")
            total = registry.get_sample_value("aios_gateway_calls_per_backend_request_sum")
            assert total == 12 and count is not None and count < 12, (count, total)
            await batching.tasks.aclose()
            return [json.loads(r.body) for r in replies]

    docs = asyncio.run(main())
    assert [d["id"] for d in docs] == [f"copy-{i}" for i in range(12)]
    assert all(d["outputs"][0]["shape"] == [1, 1] for d in docs)
    found = {r.request_id for r in records(decisions(stack)) if r.shadow}
    assert {f"copy-{i}" for i in range(12)} <= found


def histogram_of(registry: CollectorRegistry) -> tuple[float, float]:
    """(requests, calls in them) the gateway sent to its backend."""
    name = "aios_gateway_calls_per_backend_request"
    return (registry.get_sample_value(f"{name}_count") or 0.0,
            registry.get_sample_value(f"{name}_sum") or 0.0)


def sidecar_envelope(stack: Stack, calls: list[Call]) -> list[dict[str, Any]]:
    """Send ``calls`` to the sidecar in one envelope (the way the gateway does); the
    answers."""
    resp = httpx.post(f"http://{stack.sidecar_http}{BATCH_PATH}", content=encode_calls(calls),
                      timeout=30)
    assert resp.status_code == 200, resp.text
    replies: list[dict[str, Any]] = resp.json()["replies"]
    return replies


def direct(stack: Stack, path: str, body: bytes) -> httpx.Response:
    """Triton's own answer, as it sent it (not compressed)."""
    return httpx.post(f"http://{stack.triton_http}{path}", content=body,
                      headers={"accept-encoding": "identity"})


def test_calls_for_two_versions_in_one_envelope_go_as_one_request_per_version(
        stack: Stack) -> None:
    sidecar_envelope(stack, [(V1, [], rows_body(GOLDEN[:1])), (V2, [], rows_body(GOLDEN[:1]))])
    time.sleep(0.5)  # the sidecar asks Triton whether each version batches
    paths = [V1, V2, V2, V1, V2, V1]
    calls = [(path, [("x-aios-subject", f"s{i}")], rows_body(GOLDEN[i:i + 1 + i % 2],
                                                              f"mix-{i}"))
             for i, path in enumerate(paths)]
    before = histogram(stack.sidecar_http, "aios_sidecar_calls_per_triton_request")
    answers = sidecar_envelope(stack, calls)
    after = histogram(stack.sidecar_http, "aios_sidecar_calls_per_triton_request")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 6)

    found = {r.request_id: r for r in records(decisions(stack)) if r.request_id.startswith("mix-")}
    for i, ((path, _, body), answer) in enumerate(zip(calls, answers, strict=True)):
        version = path.split("/")[-2]
        assert answer["status"] == 200
        assert (answer["body"]["id"], answer["body"]["model_version"]) == (f"mix-{i}", version)
        alone = direct(stack, path, body).json()["outputs"][0]
        assert answer["body"]["outputs"][0]["shape"] == alone["shape"]
        np.testing.assert_allclose(answer["body"]["outputs"][0]["data"], alone["data"],
                                   rtol=1e-6)
        record = found[f"mix-{i}"]
        assert (record.version, record.subject, record.outcome, schema_flags(record)) == (
            version, f"s{i}", "ok", [])
        assert list(record.outputs[0].shape) == [1 + i % 2, 1]


def test_a_call_out_of_range_in_an_envelope_is_flagged_alone(stack: Stack) -> None:
    x = GOLDEN[:4].copy()
    x[2, 0] = 1e9  # claim_amount far above anything seen in training
    violations = "aios_sidecar_schema_violations_total"
    labels = 'check="out_of_range",feature="claim_amount",model="claims_risk",version="2"'

    def flagged() -> float:
        text = httpx.get(f"http://{stack.sidecar_http}/metrics").text
        found = re.search(rf"^{violations}{{{labels}}} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    before = flagged()
    answers = sidecar_envelope(stack, [(V2, [], rows_body(x[i:i + 1], f"range-{i}"))
                                       for i in range(4)])
    assert [a["status"] for a in answers] == [200] * 4
    assert flagged() - before == 1
    found = {r.request_id: schema_flags(r) for r in records(decisions(stack))
             if r.request_id.startswith("range-")}
    assert found == {"range-0": [], "range-1": [], "range-2": ["out_of_range:claim_amount"],
                     "range-3": []}


def test_calls_whose_merged_request_triton_refuses_get_triton_answer_each(
        stack: Stack) -> None:
    """Inputs the schema check does not look at (an extra input) pass it; Triton refuses
    the merged request, and each call is then sent, recorded and answered on its own."""

    def body(i: int) -> bytes:
        return json.dumps({"id": f"extra-{i}", "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, 8],
             "data": GOLDEN[i].tolist()},
            {"name": "extra", "datatype": "FP32", "shape": [1, 1], "data": [float(i)]}],
        }).encode()

    answers = sidecar_envelope(stack, [(V2, [], body(i)) for i in range(3)])
    for i, answer in enumerate(answers):
        alone = direct(stack, V2, body(i))
        assert alone.status_code == 400
        assert (answer["status"], answer["body"]) == (400, alone.json())
    outcomes = {r.request_id: r.outcome for r in records(decisions(stack))
                if r.request_id.startswith("extra-")}
    assert outcomes == {f"extra-{i}": "400" for i in range(3)}


def test_shadow_copies_that_come_close_together_reach_the_sidecar_in_one_envelope(
        stack: Stack) -> None:
    bodies = [rows_body(GOLDEN[i:i + 1], f"shadow-batch-{i}") for i in range(10)]
    primaries = [direct(stack, V2, b) for b in bodies]
    spec = ShadowSpec("local", "claims_risk", "1", 1.0, "risk_score", 0.5)

    async def main() -> tuple[float, float]:
        registry = CollectorRegistry()
        settings = UpstreamSettings(http=stack.sidecar_http, grpc=stack.sidecar_grpc)
        async with HttpUpstream("local", settings) as http:
            batching = BackendBatching("local", http, 64, 2, calls_histogram(registry))
            await batching.request("POST", V1, bodies[0], [])  # asks whether it is a sidecar
            await asyncio.sleep(0.3)
            before = histogram_of(registry)
            async with ShadowRunner({"local": batching}, {}, 100, 4, registry, Tracing(),
                                    linger_s=0.2) as shadows:
                for body, primary in zip(bodies, primaries, strict=True):
                    shadows.offer(ShadowJob("claims_risk", spec, body, (), {}, HttpReply(
                        200, dict(primary.headers), primary.content)))
                    await asyncio.sleep(0.01)  # copies trickle in, as they would
                deadline = time.monotonic() + 10
                while (registry.get_sample_value("aios_gateway_shadow_requests_total", {
                        "model": "claims_risk", "shadow": "local/claims_risk/1",
                        "outcome": "ok"}) or 0) < 10:
                    assert time.monotonic() < deadline, "the shadow copies never came back"
                    await asyncio.sleep(0.05)
            await batching.tasks.aclose()
            after = histogram_of(registry)
            return after[0] - before[0], after[1] - before[1]

    envelopes, calls = asyncio.run(main())
    assert (envelopes, calls) == (1, 10)
    found = {r.request_id: (r.shadow, r.version) for r in records(decisions(stack))
             if r.request_id.startswith("shadow-batch-")}
    assert found == {f"shadow-batch-{i}": (True, "1") for i in range(10)}


GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_infer(rows: np.ndarray, request_id: str, raw: bool = True,
               output: str = "") -> bytes:
    request = service_pb2.ModelInferRequest(model_name="claims_risk", id=request_id)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=rows.shape)
    if raw:
        request.raw_input_contents.append(rows.tobytes())
    else:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    if output:
        request.outputs.add(name=output)
    return bytes(request.SerializeToString())


async def grpc_all(address: str, payloads: list[bytes],
                   metadata: tuple[tuple[str, str], ...] = ()) -> list[bytes]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(GRPC_INFER)
        return list(await asyncio.gather(*(call(p, metadata=metadata, timeout=30)
                                           for p in payloads)))


def test_grpc_calls_reach_the_sidecar_as_json_in_envelopes_and_answer_as_triton_does(
        stack: Stack) -> None:
    metadata = tuple(bearer().items())
    asyncio.run(grpc_all(stack.gateway_grpc, [grpc_infer(GOLDEN[:1], "warm")], metadata))
    time.sleep(0.5)  # the first call asks the backend whether it is a sidecar
    payloads = [grpc_infer(GOLDEN[i:i + 1 + i % 2], f"grpc-env-{i}", raw=i % 3 != 0)
                for i in range(20)]
    before = histogram(stack.gateway_http, "aios_gateway_calls_per_backend_request")
    replies = asyncio.run(grpc_all(stack.gateway_grpc, payloads, metadata))
    after = histogram(stack.gateway_http, "aios_gateway_calls_per_backend_request")
    requests, merged = after[0] - before[0], after[1] - before[1]
    assert merged == 20 and requests < 20, (requests, merged)
    # What Triton's own gRPC front end answers: id, version, outputs as raw contents (the
    # scores to float rounding: rows merged with others go through other batch kernels).
    for ours, tritons in zip(replies, asyncio.run(grpc_all(stack.triton_grpc, payloads)),
                             strict=True):
        a, b = (service_pb2.ModelInferResponse.FromString(r) for r in (ours, tritons))
        assert (a.id, a.model_name, a.model_version, a.outputs) == (
            b.id, b.model_name, b.model_version, b.outputs)
        np.testing.assert_allclose(np.frombuffer(a.raw_output_contents[0], "<f4"),
                                   np.frombuffer(b.raw_output_contents[0], "<f4"), rtol=1e-5)
    found = {r.request_id: (r.protocol, r.outcome) for r in records(decisions(stack))
             if r.request_id.startswith("grpc-env-")}
    assert found == {f"grpc-env-{i}": ("grpc", "ok") for i in range(20)}


def test_a_grpc_call_json_would_not_carry_exactly_still_goes_over_grpc(stack: Stack) -> None:
    payload = grpc_infer(GOLDEN[:2], "grpc-outputs-1", output="risk_score")
    before = histogram(stack.gateway_http, "aios_gateway_calls_per_backend_request")
    (reply,) = asyncio.run(grpc_all(stack.gateway_grpc, [payload], tuple(bearer().items())))
    assert histogram(stack.gateway_http, "aios_gateway_calls_per_backend_request") == before
    assert reply == asyncio.run(grpc_all(stack.triton_grpc, [payload]))[0]


def test_a_grpc_call_triton_refuses_gets_tritons_grpc_error_by_way_of_json(
        stack: Stack) -> None:
    request = service_pb2.ModelInferRequest(model_name="claims_risk", id="grpc-bad-1")
    request.inputs.add(name="nope", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(GOLDEN[:1].tobytes())
    payload = request.SerializeToString()
    errors = []
    for address, metadata in ((stack.gateway_grpc, tuple(bearer().items())),
                              (stack.triton_grpc, ())):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            asyncio.run(grpc_all(address, [payload], metadata))
        errors.append((caught.value.code(), caught.value.details()))
    assert errors[0] == errors[1]
    assert errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert records_of(stack, "grpc-bad-1") == [("grpc", "INVALID_ARGUMENT")]


def records_of(stack: Stack, request_id: str) -> list[tuple[str, str]]:
    return [(r.protocol, r.outcome) for r in records(decisions(stack))
            if r.request_id == request_id]


@pytest.mark.parametrize("version", ["", "2"])
def test_grpc_calls_convert_only_for_paths_rest_can_carry(version: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="claims_risk", model_version=version)
    assert infer_path(request.SerializeToString()) == (
        f"/v2/models/claims_risk{f'/versions/{version}' if version else ''}/infer")


@pytest.mark.parametrize("model, version", [("claims risk", ""), ("claims_risk", "two"),
                                            ("claims_risk", "²")])
def test_a_grpc_call_no_rest_path_names_stays_grpc(model: str, version: str) -> None:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    assert infer_path(request.SerializeToString()) is None
