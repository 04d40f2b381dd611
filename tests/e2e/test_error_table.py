"""One error table, both protocols: each class of failure, caused for real, over REST and
gRPC, with its status, its gRPC code and a KServe-style message."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.e2e.test_errors import INFER, grpc_request
from tests.helpers import gateway_config, infer_json, refused_ports, running, token

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
LIMIT = 64 * 1024


@dataclass(frozen=True)
class Gateway:
    http: str
    grpc: str


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # Held (bound, never listening) for the module: nothing else can open them meanwhile.
    with refused_ports(3) as (dead_http, dead_grpc, dead_redis):
        config, http_port, grpc_port = gateway_config(
            stack.sidecar_http, stack.sidecar_grpc,
            {"claims_risk": {"backend": "local"},
             "slow": {"targets": {"t": {"backend": "local", "timeout_s": 0.5}}},
             "gone": {"backend": "dead"}},
            server={"max_body_bytes": LIMIT},
            backends={"dead": {"http": f"127.0.0.1:{dead_http}",
                               "grpc": f"127.0.0.1:{dead_grpc}"}},
            # Redis is down for good here: fail_open tenants pass, fail_closed ones get 503.
            quota={"backend": "redis", "redis_url": f"redis://127.0.0.1:{dead_redis}/0",
                   "default": {"rate_per_s": 1e6, "burst": 100000},
                   "tenants": {"tight": {"rate_per_s": 0.001, "burst": 1},
                               "closed": {"on_redis_error": "fail_closed"}}})
        with running("gateway", config, http_port, tmp_path_factory.mktemp("table")):
            yield Gateway(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")


def grpc_slow() -> bytes:
    req = service_pb2.ModelInferRequest.FromString(grpc_request("slow"))
    req.parameters["delay_ms"].int64_param = 3000
    return bytes(req.SerializeToString())


def big_grpc() -> bytes:
    req = service_pb2.ModelInferRequest.FromString(grpc_request())
    req.raw_input_contents[0] = bytes(LIMIT)
    return bytes(req.SerializeToString())


@dataclass(frozen=True)
class Row:
    model: str
    rest_body: bytes
    grpc_body: bytes
    token: str | None
    status: int
    code: grpc.StatusCode
    message: str  # a prefix of the error


ROWS = {
    "invalid input": Row("claims_risk", b"{nope", grpc_request()[:-3], token(), 400,
                         grpc.StatusCode.INVALID_ARGUMENT, ""),
    "unauthenticated": Row("claims_risk", infer_json([CLAIM]), grpc_request(), None, 401,
                           grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"),
    "forbidden": Row("claims_risk", infer_json([CLAIM]), grpc_request(), token("infer:x"),
                     403, grpc.StatusCode.PERMISSION_DENIED,
                     "token lacks the scope 'infer:claims_risk'"),
    "not found": Row("nope", infer_json([CLAIM]), grpc_request("nope"), token(), 404,
                     grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found"),
    "too large": Row("claims_risk", b"x" * (LIMIT + 1), big_grpc(), token(), 413,
                     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    "over quota": Row("claims_risk", infer_json([CLAIM]), grpc_request(),
                      token(tenant="tight"), 429, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "tenant 'tight' is over its request rate quota"),
    "not ready": Row("claims_risk", infer_json([CLAIM]), grpc_request(),
                     token(tenant="closed"), 503, grpc.StatusCode.UNAVAILABLE,
                     "quota store unavailable and tenant 'closed' is fail_closed"),
    "upstream failure": Row("gone", infer_json([CLAIM]), grpc_request("gone"), token(), 502,
                            grpc.StatusCode.UNAVAILABLE, "backend 'dead' unreachable"),
    "timeout": Row("slow", infer_json([CLAIM], {"delay_ms": 3000}), grpc_slow(), token(), 504,
                   grpc.StatusCode.DEADLINE_EXCEEDED, "backend 'local' did not answer in time"),
}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_error_table(gateway: Gateway, row: Row, protocol: str) -> None:
    auth = {"authorization": f"Bearer {row.token}"} if row.token else {}
    if protocol == "rest":
        for _ in range(2):  # twice: the first call of `tight` still fits its burst
            resp = httpx.post(f"{gateway.http}/v2/models/{row.model}/infer",
                              content=row.rest_body, headers=auth, timeout=30)
        assert resp.status_code == row.status, resp.text
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["error"].startswith(row.message)
        return
    with grpc.insecure_channel(gateway.grpc, options=[
            ("grpc.max_send_message_length", 4 * LIMIT)]) as channel:
        call = channel.unary_unary(INFER)
        for _ in range(2):
            try:
                call(row.grpc_body, metadata=tuple(auth.items()), timeout=30)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
    assert code == row.code, details
    assert details.startswith(row.message) or (row.code == grpc.StatusCode.RESOURCE_EXHAUSTED \
        and row.status == 413)
