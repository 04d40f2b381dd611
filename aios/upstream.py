"""Clients for the next hop (a sidecar for the gateway, Triton for the sidecar).

Both forward bytes as they came: REST bodies with their content headers (so the binary
tensor extension passes untouched) and gRPC messages as serialized bytes (no protobuf
decoding). Errors of the HTTP client and grpc are translated here into `aios.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from aios.config import UpstreamSettings
from aios.errors import (
    AiosError,
    InvalidInput,
    UpstreamConnectFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from aios.http1 import Http1Pool
from aios.http1errors import ConnectFailed
from aios.transports import AiohttpPool, HttpPool

logger = logging.getLogger(__name__)

# What crosses a hop from the client. Credentials stop at the gateway, and so do the
# client's own x-aios-* headers: only the gateway sets those (the identity it verified).
FORWARDED_REQUEST_HEADERS = frozenset({
    "content-type", "content-encoding", "accept-encoding", "inference-header-content-length",
    "traceparent", "tracestate", "x-request-id",
})
FORWARDED_RESPONSE_HEADERS = frozenset({
    "content-type", "content-encoding", "inference-header-content-length",
    "x-aios-review", "x-aios-review-id",  # aios.plane's REVIEW_HEADER, REVIEW_ID_HEADER
})

Metadata = Sequence[tuple[str, str | bytes]]


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options: one message-size limit on both sides of a hop."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def kept_response_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The next hop's response headers that we pass back."""
    return {k: v for k, v in items if k in FORWARDED_RESPONSE_HEADERS}


def outgoing(items: Iterable[tuple[str, Any]], extra: Mapping[str, str] | None,
             ) -> list[tuple[str, Any]]:
    """The client's forwardable headers (or metadata) and ours; ours win, so a client's
    ``traceparent`` gives way to the span of this hop."""
    extra = extra or {}
    out = [(k, v) for k, v in items if k in FORWARDED_REQUEST_HEADERS and k not in extra]
    out.extend(extra.items())
    return out


@dataclass(frozen=True, slots=True)
class HttpReply:
    """What the next hop answered, reduced to what we pass back."""

    status: int
    headers: Mapping[str, str]
    body: bytes


# Triton (2.51) answers these client mistakes with 500 (a `data` it cannot parse as the
# input's datatype, a shape its `data` does not have, JSON it cannot read): they are the
# client's, so they are 400 with Triton's own message.
TRITON_CLIENT_ERRORS = (b'{"error":"Unable to parse ',
                        b'{"error":"failed to parse the request JSON')


def client_error_status(status: int, body: bytes, client_errors: tuple[bytes, ...]) -> int:
    """``status``, or 400 for a 500 whose body is one of the next hop's client errors."""
    if status == 500 and body.startswith(client_errors):
        return 400
    return status


class HttpUpstream:
    """A pooled keep-alive HTTP/1.1 client to one next hop. Bodies pass through as they
    are: compressed stays compressed. ``client_errors``: body prefixes of 500 replies that
    are really the client's mistakes (Triton's, `TRITON_CLIENT_ERRORS`), answered as 400."""

    def __init__(self, name: str, settings: UpstreamSettings,
                 client_errors: tuple[bytes, ...] = ()) -> None:
        self.name = name
        self._client_errors = client_errors
        self._timeout = settings.request_timeout_s
        self._pool: HttpPool = Http1Pool(settings.http, settings.connect_timeout_s) \
            if settings.client == "http1" else AiohttpPool(settings.http,
                                                           settings.connect_timeout_s)

    async def __aenter__(self) -> HttpUpstream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._pool.aclose()

    async def request(self, method: str, path: str, body: bytes,
                      headers: Iterable[tuple[str, str]],
                      extra: Mapping[str, str] | None = None,
                      timeout_s: float | None = None) -> HttpReply:
        """Send one request with the client's forwardable ``headers`` and our ``extra``;
        return the reply, or raise an AiosError naming this hop."""
        try:
            resp = await self._pool.request(method, path, body, outgoing(headers, extra),
                                            timeout_s or self._timeout)
        except ConnectFailed as exc:
            raise UpstreamConnectFailed(f"backend {self.name!r} unreachable: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"backend {self.name!r} did not answer in time") from exc
        except OSError as exc:
            raise UpstreamUnavailable(f"backend {self.name!r} unreachable: "
                                      f"{type(exc).__name__}") from exc
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        return HttpReply(client_error_status(resp.status, resp.body, self._client_errors),
                         kept_response_headers(resp.headers), resp.body)

    async def ready(self) -> bool:
        """Whether the next hop reports itself ready."""
        try:
            reply = await self.request("GET", "/v2/health/ready", b"", ())
        except (UpstreamUnavailable, UpstreamTimeout):
            return False
        return reply.status == 200


def grpc_error(backend: str, code: grpc.StatusCode, details: str,
               connected: bool = True) -> AiosError:
    """What a gRPC call's error status from ``backend`` becomes here; ``connected``: whether
    the channel had a connection for the call (else nothing reached the backend)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"backend {backend!r} did not answer in time")
    if code == grpc.StatusCode.UNAVAILABLE:
        if not connected:
            return UpstreamConnectFailed(f"backend {backend!r} unreachable: {details}")
        return UpstreamUnavailable(f"backend {backend!r} unavailable: {details}")
    return UpstreamRejected(code, details)


@dataclass(frozen=True, slots=True)
class GrpcReply:
    """A serialized gRPC response and the trailing metadata to pass back."""

    payload: bytes
    trailing: Metadata


class GrpcUpstream:
    """One gRPC channel to the next hop; calls carry serialized messages as bytes."""

    def __init__(self, name: str, settings: UpstreamSettings, max_message_bytes: int) -> None:
        self.name = name
        self._address = settings.grpc
        self._timeout = settings.request_timeout_s
        self._options = grpc_options(max_message_bytes)
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def __aenter__(self) -> GrpcUpstream:
        self._channel = grpc.aio.insecure_channel(self._address, options=self._options)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def call(self, method: str, payload: bytes, metadata: Metadata,
                   extra: Mapping[str, str] | None = None,
                   timeout_s: float | None = None) -> GrpcReply:
        """Invoke ``method`` (full path) with a serialized request, the client's
        forwardable ``metadata`` and our ``extra``."""
        assert self._channel is not None, "use GrpcUpstream as an async context manager"
        stub = self._calls.get(method)
        if stub is None:
            stub = self._calls[method] = self._channel.unary_unary(method)
        call = stub(payload, metadata=tuple(outgoing(metadata, extra)),
                    timeout=timeout_s or self._timeout)
        try:
            response: bytes = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            # A channel that could not connect is left in TRANSIENT_FAILURE; one whose
            # connection broke under a call goes IDLE until the next call.
            state = self._channel.get_state()
            connected = state is not grpc.ChannelConnectivity.TRANSIENT_FAILURE
            raise grpc_error(self.name, exc.code(), exc.details() or "", connected) from exc
        except asyncio.CancelledError:
            call.cancel()
            raise
        return GrpcReply(response, tuple(trailing or ()))

    def stream(self, method: str, metadata: Metadata,
               extra: Mapping[str, str] | None = None) -> GrpcStream:
        """Open a bidirectional stream of serialized messages to ``method`` (no deadline:
        a stream lasts as long as its client keeps it)."""
        assert self._channel is not None, "use GrpcUpstream as an async context manager"
        call = self._channel.stream_stream(method)(metadata=tuple(outgoing(metadata, extra)))
        return GrpcStream(self.name, self._channel, call)


class GrpcStream:
    """One bidirectional stream to the next hop; its errors translated as a call's are."""

    def __init__(self, name: str, channel: grpc.aio.Channel,
                 call: grpc.aio.StreamStreamCall) -> None:
        self._name = name
        self._channel = channel
        self._call = call

    def _error(self, exc: grpc.aio.AioRpcError) -> AiosError:
        connected = self._channel.get_state() is not grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return grpc_error(self._name, exc.code(), exc.details() or "", connected)

    async def write(self, message: bytes) -> None:
        try:
            await self._call.write(message)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        except asyncio.InvalidStateError as exc:  # the stream ended under the write
            raise UpstreamUnavailable(f"backend {self._name!r}: the stream was closed") from exc

    async def done_writing(self) -> None:
        """No more messages: the next hop ends the stream once it has answered them."""
        with contextlib.suppress(asyncio.InvalidStateError):  # it has ended already
            await self._call.done_writing()

    async def read(self) -> bytes | None:
        """The next hop's next response; None once it has ended the stream; its error
        status raised. (A method, not an async generator: mypyc compiles this module.)"""
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        if message is grpc.aio.EOF:
            return None
        assert isinstance(message, bytes)
        return message

    def cancel(self) -> None:
        self._call.cancel()
