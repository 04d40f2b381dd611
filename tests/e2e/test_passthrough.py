"""tritonclient pointed at the gateway gets what it gets from Triton directly."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
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
