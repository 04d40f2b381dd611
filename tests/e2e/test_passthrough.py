"""tritonclient pointed at the gateway gets what it gets from Triton directly."""

from __future__ import annotations

import json
import zlib
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import Stack
from tests.helpers import MODEL_REPO, bearer

VERSIONS = ["", "1", "2"]  # "" = unpinned: Triton's latest, version 2


def golden(version: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((MODEL_REPO / "claims_risk" / version / "golden.json")
                                     .read_text())
    return doc


def infer(protocol: str, address: str, x: np.ndarray, version: str,
          binary: bool) -> tuple[np.ndarray, str]:
    """Score ``x`` through ``address``; return the scores and the version that answered."""
    if protocol == "http":
        client = httpclient.InferenceServerClient(address)
        inp = httpclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("risk_score", binary_data=binary)
        result = client.infer("claims_risk", [inp], model_version=version, outputs=[out],
                              headers=bearer())
        return result.as_numpy("risk_score"), result.get_response()["model_version"]
    gclient = grpcclient.InferenceServerClient(address)
    ginp = grpcclient.InferInput("features", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    gresult = gclient.infer("claims_risk", [ginp], model_version=version, headers=bearer())
    return gresult.as_numpy("risk_score"), gresult.get_response().model_version


PATHS = [
    pytest.param("http", True, id="http-binary"),
    pytest.param("http", False, id="http-json"),
    pytest.param("grpc", True, id="grpc"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("protocol", "binary"), PATHS)
def test_gateway_matches_triton(stack: Stack, protocol: str, binary: bool, version: str) -> None:
    x = np.asarray(golden("1")["inputs"][:16], dtype=np.float32)
    gw = stack.gateway_http if protocol == "http" else stack.gateway_grpc
    direct = stack.triton_http if protocol == "http" else stack.triton_grpc
    via_gateway, served_by = infer(protocol, gw, x, version, binary)
    from_triton, triton_version = infer(protocol, direct, x, version, binary)
    assert served_by == triton_version == (version or "2")
    np.testing.assert_array_equal(via_gateway, from_triton)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(("protocol", "binary"), PATHS)
def test_served_outputs_match_golden_set(stack: Stack, protocol: str, binary: bool,
                                         version: str) -> None:
    gold = golden(version)
    x = np.asarray(gold["inputs"], dtype=np.float32)
    gw = stack.gateway_http if protocol == "http" else stack.gateway_grpc
    scores, served_by = infer(protocol, gw, x, version, binary)
    assert served_by == version
    np.testing.assert_allclose(scores, np.asarray(gold["outputs"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sidecar_passes_through(stack: Stack, protocol: str) -> None:
    x = np.asarray(golden("2")["inputs"][:4], dtype=np.float32)
    side = stack.sidecar_http if protocol == "http" else stack.sidecar_grpc
    direct = stack.triton_http if protocol == "http" else stack.triton_grpc
    np.testing.assert_array_equal(infer(protocol, side, x, "1", True)[0],
                                  infer(protocol, direct, x, "1", True)[0])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(stack: Stack, algorithm: str, binary: bool) -> None:
    """tritonclient's request compression (Content-Encoding): decoded before any check,
    forwarded decoded, answered as Triton answers the plain request."""
    x = np.asarray(golden("2")["inputs"][:8], dtype=np.float32)
    scores = {}
    for address, headers in ((stack.gateway_http, bearer()), (stack.triton_http, {})):
        client = httpclient.InferenceServerClient(address)
        inp = httpclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        scores[address] = client.infer(
            "claims_risk", [inp], headers=headers, request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm).as_numpy("risk_score")
    np.testing.assert_array_equal(scores[stack.gateway_http], scores[stack.triton_http])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_grpc_messages(stack: Stack, algorithm: str) -> None:
    """gRPC message compression (tritonclient's compression_algorithm) through both hops
    answers as Triton answers the plain call."""
    x = np.asarray(golden("2")["inputs"][:8], dtype=np.float32)
    scores = {}
    for address, headers in ((stack.gateway_grpc, bearer()), (stack.triton_grpc, {})):
        client = grpcclient.InferenceServerClient(address)
        inp = grpcclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        scores[address] = client.infer("claims_risk", [inp], headers=headers,
                                       compression_algorithm=algorithm).as_numpy("risk_score")
    np.testing.assert_array_equal(scores[stack.gateway_grpc], scores[stack.triton_grpc])


def _gateway_pid(stack: Stack) -> int:
    for conn in psutil.net_connections("tcp"):
        if conn.status == "LISTEN" and conn.laddr.port == stack.ports.gateway_http:
            assert conn.pid is not None
            return conn.pid
    raise AssertionError("no gateway process listening")


def _gzip_of_zeros(size: int) -> bytes:
    encoder = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join(encoder.compress(chunk) for _ in range(size >> 20)) + encoder.flush()


def test_a_zip_bomb_is_413_in_bounded_memory(stack: Stack) -> None:
    bomb = _gzip_of_zeros(1 << 30)  # 1 GiB decoded, ~1 MB sent
    process = psutil.Process(_gateway_pid(stack))
    before = process.memory_info().rss
    resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer", content=bomb,
                      headers={**bearer(), "content-encoding": "gzip",
                               "content-type": "application/json"}, timeout=60)
    assert (resp.status_code, resp.json()) == (413, {
        "error": f"request body decodes to more than {64 * 1024 * 1024} bytes"})
    grown = process.memory_info().rss - before
    assert grown < 256 * 1024 * 1024, f"the gateway grew by {grown >> 20} MiB"


@pytest.mark.parametrize(("encoding", "body", "error"), [
    ("br", b"abc", "Content-Encoding 'br' is not supported (use gzip or deflate)"),
    ("gzip", b"not gzip at all", "request body is not valid gzip data"),
    ("deflate", b"not deflate", "request body is not valid deflate data"),
    ("gzip", _gzip_of_zeros(1 << 20)[:100], "request body is truncated gzip data"),
])
def test_bad_encodings_are_400(stack: Stack, encoding: str, body: bytes, error: str) -> None:
    resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer", content=body,
                      headers={**bearer(), "content-encoding": encoding,
                               "content-type": "application/json"}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(error)
