"""The one exception tree of both services.

Each class knows its HTTP status and gRPC code; they are mapped to responses in exactly
two places: `aios.rest.error_response` (REST) and `aios.grpc_service.ErrorInterceptor`
(gRPC). Third-party errors are translated into these at the boundary that meets them.
"""

from __future__ import annotations

import math
from typing import ClassVar

import grpc


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

    _HTTP_BY_CODE: ClassVar[dict[grpc.StatusCode, int]] = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.UNIMPLEMENTED: 501,
    }

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_code = code
        self.http_status = self._HTTP_BY_CODE.get(code, 502)


# The gRPC status of a call answered over REST with an HTTP status: the one a gRPC
# server answers for the same error (Triton's two front ends, and ours, agree on these).
_GRPC_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED, 409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED, 502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for(http_status: int) -> grpc.StatusCode:
    """The gRPC status that stands for an HTTP error status (INTERNAL if none does)."""
    return _GRPC_BY_HTTP.get(http_status, grpc.StatusCode.INTERNAL)


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
