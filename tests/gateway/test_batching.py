"""Envelopes of calls from the gateway to its sidecar (`gateway.batching`), on the
session's real stack: concurrent calls, each with its own identity, answer and record."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aios.config import UpstreamSettings
from aios.envelope import BATCH_PATH, encode_calls
from aios.upstream import HttpUpstream
from gateway.batching import BackendBatching, calls_histogram
from sidecar.audit import records
from tests.conftest import Stack
from tests.e2e.test_decisions import decisions
from tests.helpers import TEST_TENANT, bearer, token
from tests.sidecar.test_batching import rows_body

INFER = "/v2/models/claims_risk/infer"


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
            await batching.coalescer.aclose()
            return [json.loads(r.body) for r in replies]

    docs = asyncio.run(main())
    assert [d["id"] for d in docs] == [f"copy-{i}" for i in range(12)]
    assert all(d["outputs"][0]["shape"] == [1, 1] for d in docs)
    found = {r.request_id for r in records(decisions(stack)) if r.shadow}
    assert {f"copy-{i}" for i in range(12)} <= found
