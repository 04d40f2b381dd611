"""`sidecar.batching`: which calls may share a Triton request, the merge and the split
(pure), and concurrent calls through the session's real sidecar and Triton."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from aios.auditlog import records
from aios.batching import content_headers
from aios.kserve import validate_infer_request
from sidecar.batching import batch_key, merge_body, runs, split_reply
from tests.conftest import Stack
from tests.e2e.test_decisions import decisions

FEATURES = {"name": "features", "datatype": "FP32", "shape": [2, 8], "data": [0.5] * 16}


def key_of(doc: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    body = json.dumps(doc).encode()
    return batch_key("m", "2", validate_infer_request(body, len(body)),
                     content_headers((headers or {}).items()))


def test_a_plain_json_call_has_a_key_of_its_model_version_and_input_layout() -> None:
    assert key_of({"id": "a", "inputs": [FEATURES]}) == (
        "m", "2", (("features", "FP32", (8,)),))
    # Rows are not part of the key: calls of 1 and of 2 rows go together.
    assert key_of({"inputs": [{**FEATURES, "shape": [1, 8], "data": [1.0] * 8}]}) == \
        key_of({"inputs": [FEATURES]})


@pytest.mark.parametrize("doc, headers", [
    ({"inputs": [FEATURES], "parameters": {"tag": "x"}}, None),
    ({"inputs": [FEATURES], "outputs": [{"name": "risk_score"}]}, None),
    ({"id": 7, "inputs": [FEATURES]}, None),
    ({"inputs": [{**FEATURES, "parameters": {"x": 1}}]}, None),
    ({"inputs": [{**FEATURES, "datatype": "FP16"}]}, None),
    ({"inputs": [{**FEATURES, "datatype": "BYTES", "data": ["a"] * 16}]}, None),
    ({"inputs": [{**FEATURES, "shape": [], "data": [1.0]}]}, None),
    ({"inputs": [{**FEATURES, "shape": [0, 8], "data": []}]}, None),
    ({"inputs": [FEATURES, {**FEATURES, "name": "more", "shape": [1, 16]}]}, None),
    ({"inputs": [FEATURES]}, {"content-encoding": "gzip"}),
    ({"inputs": [FEATURES]}, {"inference-header-content-length": "120"}),
], ids=["parameters", "outputs", "numeric id", "input parameters", "FP16", "BYTES",
        "scalar", "no rows", "uneven rows", "compressed", "binary tensors"])
def test_calls_that_must_go_alone_have_no_key(doc: dict[str, Any],
                                              headers: dict[str, str] | None) -> None:
    assert key_of(doc, headers) is None


def test_merge_concatenates_rows_in_order() -> None:
    key = ("m", "2", (("features", "FP32", (8,)), ("flag", "INT64", ())))
    a = {"features": np.full((1, 8), 0.1, "<f4"), "flag": np.asarray([3])}
    b = {"features": np.arange(16, dtype="<f4").reshape(2, 8), "flag": np.asarray([4, 5])}
    doc = orjson.loads(merge_body(key, [a, b]))
    assert [(t["name"], t["datatype"], t["shape"]) for t in doc["inputs"]] == [
        ("features", "FP32", [3, 8]), ("flag", "INT64", [3])]
    np.testing.assert_array_equal(np.asarray(doc["inputs"][0]["data"], "<f4"),
                                  np.concatenate([a["features"], b["features"]]).ravel())
    assert doc["inputs"][1]["data"] == [3, 4, 5]
    assert set(doc) == {"inputs"}


@pytest.mark.parametrize("rows, limit, expected", [
    ([1, 1, 1], 64, [(0, 3)]),
    ([1, 2, 1, 3], 3, [(0, 2), (2, 3), (3, 4)]),
    ([1, 70, 1], 64, [(0, 1), (1, 2), (2, 3)]),
    ([1, 1], 0, [(0, 1), (1, 2)]),
    ([], 64, []),
], ids=["all fit", "cut at the limit", "too big alone", "no batching", "nothing"])
def test_runs_cut_calls_into_requests_of_at_most_limit_rows(
        rows: list[int], limit: int, expected: list[tuple[int, int]]) -> None:
    assert [(r.start, r.stop) for r in runs(rows, limit)] == expected


def test_split_gives_each_call_its_rows_and_its_id() -> None:
    merged = orjson.dumps({"model_name": "m", "model_version": "2", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}]})
    one, two = split_reply(merged, [1, 2], ["a", ""]) or []
    assert orjson.loads(one) == {"id": "a", "model_name": "m", "model_version": "2",
                                 "outputs": [{"name": "y", "datatype": "FP32",
                                              "shape": [1, 2], "data": [1, 2]}]}
    assert orjson.loads(two) == {"model_name": "m", "model_version": "2", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [3, 4, 5, 6]}]}


@pytest.mark.parametrize("reply", [
    b"not json",
    b'{"error": "x"}',
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}]}',
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [3, 1], "data": [1, 2]}]}',
    b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [], "data": [1]}]}',
], ids=["not json", "no outputs", "other rows", "data short", "no batch dim"])
def test_a_reply_that_does_not_fit_the_merge_is_not_split(reply: bytes) -> None:
    assert split_reply(reply, [1, 2], ["a", "b"]) is None


# -- through the real sidecar ---------------------------------------------------------------


def merged_so_far(stack: Stack) -> tuple[float, float]:
    """(Triton requests, calls in them) from the sidecar's histogram."""
    text = httpx.get(f"http://{stack.sidecar_http}/metrics").text
    found = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^aios_sidecar_calls_per_triton_request_(count|sum) (\S+)$", text, re.M)}
    return found.get("count", 0.0), found.get("sum", 0.0)


async def call_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=len(bodies)),
                                 timeout=30) as client:
        return await asyncio.gather(*(client.post(url, content=b) for b in bodies))


def rows_body(rows: np.ndarray, request_id: str = "", name: str = "features") -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": name, "datatype": "FP32",
                                       "shape": list(rows.shape), "data": rows.tolist()}]}
    if request_id:
        doc["id"] = request_id
    return json.dumps(doc).encode()


def test_concurrent_calls_share_triton_requests_and_each_gets_its_own_answer(
        stack: Stack) -> None:
    url = f"http://{stack.sidecar_http}/v2/models/claims_risk/versions/2/infer"
    rng = np.random.default_rng(7)
    assert httpx.post(url, content=rows_body(np.ones((1, 8), "<f4"))).status_code == 200
    time.sleep(0.5)  # the first call of a model reads its config; until then calls go alone
    before = merged_so_far(stack)
    calls = [(f"merge-{i}", rng.uniform(0, 5000, (1 + i % 3, 8)).astype("<f4"))
             for i in range(32)]
    replies = asyncio.run(call_all(url, [rows_body(x, rid) for rid, x in calls]))
    after = merged_so_far(stack)
    requests, merged_calls = after[0] - before[0], after[1] - before[1]
    assert merged_calls == 32 and requests < 32, (requests, merged_calls)

    direct = f"http://{stack.triton_http}/v2/models/claims_risk/versions/2/infer"
    for (rid, x), reply in zip(calls, replies, strict=True):
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert (doc["id"], doc["model_name"], doc["model_version"]) == (
            rid, "claims_risk", "2")
        [out] = doc["outputs"]
        assert (out["name"], out["shape"]) == ("risk_score", [len(x), 1])
        alone = httpx.post(direct, content=rows_body(x)).json()["outputs"][0]["data"]
        np.testing.assert_allclose(out["data"], alone, rtol=1e-6)

    found = {r.request_id: r for r in records(decisions(stack))
             if r.request_id.startswith("merge-")}
    assert sorted(found) == sorted(rid for rid, _ in calls)
    for (rid, x), reply in zip(calls, replies, strict=True):
        record = found[rid]
        assert list(record.inputs[0].shape) == [len(x), 8]
        np.testing.assert_array_equal(np.frombuffer(record.inputs[0].contents, "<f4"),
                                      x.ravel())
        np.testing.assert_allclose(np.frombuffer(record.outputs[0].contents, "<f4"),
                                   reply.json()["outputs"][0]["data"], rtol=1e-6)


def test_a_merged_request_triton_refuses_is_answered_call_by_call(stack: Stack) -> None:
    url = f"http://{stack.sidecar_http}/v2/models/claims_risk/versions/2/infer"
    x = np.ones((1, 8), "<f4")
    assert httpx.post(url, content=rows_body(x)).status_code == 200
    time.sleep(0.5)
    bad = [rows_body(x, f"bad-{i}", name="featurez") for i in range(8)]
    expected = httpx.post(f"http://{stack.triton_http}/v2/models/claims_risk/versions/2/infer",
                          content=bad[0])
    assert expected.status_code == 400
    replies = asyncio.run(call_all(url, bad))
    assert [r.status_code for r in replies] == [400] * 8
    assert {r.json()["error"] for r in replies} == {expected.json()["error"]}
