"""The one error table: each class's own HTTP status and gRPC code, and the translation
between the protocols read off them."""

from __future__ import annotations

import json

import grpc
import pytest

from aios import errors
from aios.errors import (
    AiosError,
    Overloaded,
    QuotaExceeded,
    UpstreamRejected,
    error_parts,
    grpc_code_for,
    http_status_for,
)

C = grpc.StatusCode


@pytest.mark.parametrize(("code", "status"), [
    (C.INVALID_ARGUMENT, 400), (C.UNAUTHENTICATED, 401), (C.PERMISSION_DENIED, 403),
    (C.NOT_FOUND, 404), (C.ABORTED, 409), (C.RESOURCE_EXHAUSTED, 429),
    (C.UNIMPLEMENTED, 501), (C.UNAVAILABLE, 503), (C.DEADLINE_EXCEEDED, 504),
    (C.UNKNOWN, 502), (C.INTERNAL, 502), (C.DATA_LOSS, 502),
])
def test_a_grpc_hops_error_answered_over_rest(code: grpc.StatusCode, status: int) -> None:
    assert http_status_for(code) == status
    assert UpstreamRejected(code, "m").http_status == status


@pytest.mark.parametrize("status, code", [
    (400, C.INVALID_ARGUMENT), (404, C.NOT_FOUND),
    (422, C.INVALID_ARGUMENT), (429, C.RESOURCE_EXHAUSTED),
    (503, C.UNAVAILABLE), (504, C.DEADLINE_EXCEEDED),
    (500, C.INTERNAL), (418, C.INTERNAL),
])
def test_an_http_error_status_maps_to_the_grpc_code_a_grpc_hop_gives(
        status: int, code: C) -> None:
    assert grpc_code_for(status) == code


def test_every_class_translates_to_its_own_code() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, AiosError) and c is not AiosError
               and c is not UpstreamRejected]
    assert len(classes) >= 15
    for cls in classes:
        assert grpc_code_for(cls.http_status) == cls.grpc_code, cls.__name__


@pytest.mark.parametrize(("exc", "status", "headers"), [
    (AiosError("boom"), 500, {}),
    (Overloaded("busy"), 503, {"Retry-After": "1"}),
    (QuotaExceeded("over", 10, 0, 1.5, 2.0), 429, {"Retry-After": "2", "RateLimit-Limit": "10",
                                                   "RateLimit-Remaining": "0",
                                                   "RateLimit-Reset": "2"}),
])
def test_the_rest_rendering(exc: AiosError, status: int, headers: dict[str, str]) -> None:
    got_status, got_headers, body = error_parts(exc)
    assert (got_status, got_headers) == (status, {**headers, "content-type": "application/json"})
    assert json.loads(body) == {"error": exc.message}
