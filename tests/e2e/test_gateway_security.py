"""Auth and quota at the front door, the same over REST and gRPC."""

from __future__ import annotations

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import infer_json, token

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
METADATA = "/inference.GRPCInferenceService/ModelMetadata"

DENIALS = {
    "no token": (None, 401, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"),
    "not bearer": ("Basic abc", 401, grpc.StatusCode.UNAUTHENTICATED,
                   "authorization must be 'Bearer <token>'"),
    "expired": (f"Bearer {token(ttl_s=-3600)}", 401, grpc.StatusCode.UNAUTHENTICATED,
                "token expired"),
    "wrong audience": (f"Bearer {token(audience='elsewhere')}", 401,
                       grpc.StatusCode.UNAUTHENTICATED, "token audience is not accepted"),
    "other model's scope": (f"Bearer {token('infer:fraud_v3')}", 403,
                            grpc.StatusCode.PERMISSION_DENIED,
                            "token lacks the scope 'infer:claims_risk'"),
    "admin scope only": (f"Bearer {token('routes:write')}", 403,
                         grpc.StatusCode.PERMISSION_DENIED,
                         "token lacks the scope 'infer:claims_risk'"),
}


@pytest.mark.parametrize(("authorization", "status", "_code", "error"), DENIALS.values(),
                         ids=DENIALS.keys())
def test_rest_denials(stack: Stack, authorization: str | None, status: int,
                      _code: grpc.StatusCode, error: str) -> None:
    headers = {"authorization": authorization} if authorization else {}
    resp = httpx.post(f"http://{stack.gateway_http}/v2/models/claims_risk/infer",
                      content=infer_json([CLAIM]), headers=headers)
    assert resp.status_code == status
    assert resp.json() == {"error": error}
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("authorization", "_status", "code", "error"), DENIALS.values(),
                         ids=DENIALS.keys())
def test_grpc_denials(stack: Stack, authorization: str | None, _status: int,
                      code: grpc.StatusCode, error: str) -> None:
    metadata = (("authorization", authorization),) if authorization else ()
    with grpc.insecure_channel(stack.gateway_grpc) as channel, \
            pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(grpc_request(), metadata=metadata, timeout=10)
    assert info.value.code() == code
    assert info.value.details() == error


def test_probes_stay_open(stack: Stack) -> None:
    base = f"http://{stack.gateway_http}"
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/claims_risk",
                 "/v2/models/claims_risk/ready", "/v2/models/claims_risk/versions/1/ready"):
        assert httpx.get(base + path).status_code == 200, path
    assert httpx.get(base + "/v2/models/claims_risk/config").status_code == 401
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        raw = channel.unary_unary(METADATA)(
            service_pb2.ModelMetadataRequest(name="claims_risk").SerializeToString(), timeout=10)
    assert service_pb2.ModelMetadataResponse.FromString(raw).versions == ["1", "2"]


def test_rest_over_quota_says_when_to_return(stack: Stack) -> None:
    # TIGHT_QUOTA: a burst of 5 at 1 request/s.
    auth = {"authorization": f"Bearer {token(tenant='tight-rest')}"}
    url = f"http://{stack.gateway_http}/v2/models/claims_risk/infer"
    with httpx.Client() as client:
        statuses = [client.post(url, content=infer_json([CLAIM]), headers=auth)
                    for _ in range(8)]
    codes = [r.status_code for r in statuses]
    assert codes[:5] == [200] * 5 and 429 in codes
    refused = statuses[codes.index(429)]
    assert refused.json()["error"] == (
        "tenant 'tight-rest' is over its request rate quota for model 'claims_risk'")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    # Another tenant is unaffected.
    other = {"authorization": f"Bearer {token(tenant='bystander')}"}
    assert httpx.post(url, content=infer_json([CLAIM]), headers=other).status_code == 200


def test_grpc_over_quota_is_resource_exhausted(stack: Stack) -> None:
    metadata = (("authorization", f"Bearer {token(tenant='tight-grpc')}"),)
    codes = []
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        call = channel.unary_unary(INFER)
        for _ in range(8):
            try:
                call(grpc_request(), metadata=metadata, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                details = exc.details()
    assert codes[:5] == [grpc.StatusCode.OK] * 5
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert details == "tenant 'tight-grpc' is over its request rate quota for model 'claims_risk'"
