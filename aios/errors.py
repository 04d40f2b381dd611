"""The one exception tree of both services.

Each class knows its HTTP status and gRPC code, and that is the only table: the
translation between HTTP statuses and gRPC codes (a gRPC hop's error answered over REST,
a REST hop's over gRPC) is read off the classes (`grpc_code_for`, `http_status_for`).
An error becomes a response in one function per protocol: `error_parts` (REST: status,
headers, KServe JSON body) and `aios.grpc_service.abort` (gRPC). Third-party errors are
translated into these at the boundary that meets them.
"""

from __future__ import annotations

import json
import math

import grpc

JSON_ERROR = "application/json"


class AiosError(Exception):
    """Base: an error whose message is safe to show the client."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra response headers this error asks for (REST)."""
        return {}


class InvalidInput(AiosError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(AiosError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Forbidden(AiosError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Unprocessable(AiosError):
    """Well-formed, but refused: an input outside what the model was trained on."""

    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AiosError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class PayloadTooLarge(AiosError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def headers(self) -> dict[str, str]:
        # Hang up rather than read (and discard) the rest of an oversized upload.
        return {"Connection": "close"}


class RequestTimeout(AiosError):
    """A request's headers, or its body, did not arrive in time (REST only: gRPC has
    deadlines)."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class HeadersTooLarge(AiosError):
    http_status = 431
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(AiosError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Overloaded(NotReady):
    """More requests in flight than this process admits: come back in a moment."""

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class UpstreamUnavailable(AiosError):
    """The next hop could not be reached or broke the connection."""

    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamConnectFailed(UpstreamUnavailable):
    """The next hop refused or could not be reached: nothing was sent, a retry is safe."""


class UpstreamTimeout(AiosError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UpstreamRejected(AiosError):
    """The next hop answered a gRPC call with an error status: passed on as it is."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_code = code
        self.http_status = http_status_for(code)


class QuotaExceeded(AiosError):
    """Over the tenant's rate or concurrency limit; says when to come back."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, limit: int, remaining: int, retry_after_s: float,
                 reset_s: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.remaining = remaining
        self.retry_after_s = retry_after_s
        self.reset_s = reset_s

    def headers(self) -> dict[str, str]:
        return {
            "Retry-After": str(max(1, math.ceil(self.retry_after_s))),
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_s))),
        }


class QuotaUnavailable(NotReady):
    """The shared quota store is unreachable and the tenant's policy is fail_closed."""


class Conflict(AiosError):
    """A change based on a stale revision (optimistic concurrency)."""

    http_status = 409
    grpc_code = grpc.StatusCode.ABORTED


class LogUnavailable(NotReady):
    """The decision could not be recorded, so it is not released (sync mode)."""


class StoreUnavailable(NotReady):
    """A database the answer depends on (the review queue) cannot be reached."""


class StreamExhausted(AiosError):
    """A stream past its limit on messages, or a service at its limit on streams."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(AiosError):
    """An API the gateway does not serve."""

    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


# The classes whose (HTTP status, gRPC code) pairs translate one protocol's error into
# the other's; where several share a gRPC code, the first listed stands for it.
_TRANSLATING: tuple[type[AiosError], ...] = (
    InvalidInput, Unauthenticated, Forbidden, NotFound, UpstreamTimeout, Conflict,
    QuotaExceeded, Unimplemented, NotReady, UpstreamUnavailable, RequestTimeout,
    PayloadTooLarge, Unprocessable, HeadersTooLarge,
)
_GRPC_BY_HTTP = {c.http_status: c.grpc_code for c in _TRANSLATING}
_HTTP_BY_GRPC: dict[grpc.StatusCode, int] = {}
for _error in _TRANSLATING:
    _HTTP_BY_GRPC.setdefault(_error.grpc_code, _error.http_status)


def grpc_code_for(http_status: int) -> grpc.StatusCode:
    """The gRPC status that stands for an HTTP error status (INTERNAL if none does)."""
    return _GRPC_BY_HTTP.get(http_status, grpc.StatusCode.INTERNAL)


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status that stands for a gRPC error code (502 if none does: the next hop
    failed in a way we cannot name)."""
    return _HTTP_BY_GRPC.get(code, 502)


def error_body(message: str) -> bytes:
    """KServe's error shape: ``{"error": "..."}``."""
    return json.dumps({"error": message}).encode()


def error_parts(exc: AiosError) -> tuple[int, dict[str, str], bytes]:
    """The REST rendering of an AiosError: status, headers, KServe JSON body."""
    return exc.http_status, {**exc.headers(), "content-type": JSON_ERROR}, \
        error_body(exc.message)
