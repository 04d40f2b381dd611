"""The gRPC front door for unary KServe calls: a lean HTTP/2 server on asyncio.

grpcio's server hands each call between its own threads and the event loop; on these
machines that costs ~250 µs of CPU per unary call, several times what the call's own
work costs (loadtests/README.md, round 8). This server answers the unary methods it is
given in the event loop itself, and hands every other stream (ModelStreamInfer, the
admin, audit and review services, compressed messages, unknown methods) to grpcio
listening on loopback, relayed frame by frame, so those keep grpcio's behaviour exactly.

What it holds to, per connection:

- flow control both ways (RFC 9113, 5.2): a request body is credited back to the
  connection only once it has been handed on, so what one connection buffers is bounded
  by its window (``max_body_bytes`` plus a frame at least); replies wait for the peer's
  windows;
- at most ``max_concurrent_requests`` streams (MAX_CONCURRENT_STREAMS; beyond: REFUSED),
  metadata of at most ``max_header_bytes`` and messages of at most ``max_body_bytes``
  (RESOURCE_EXHAUSTED; a header block over ``BLOCK_HARD_FACTOR`` times the metadata limit
  ends the connection), ``grpc-timeout`` (DEADLINE_EXCEEDED);
- the preface and each header block within ``header_timeout_s``, each request body
  within ``body_timeout_s`` of its headers (the stream is cancelled), and connections
  with nothing open for ``IDLE_S`` are sent GOAWAY and closed;
- more than ``MAX_RESETS_PER_S`` streams reset by the client, or ``MAX_PINGS_PER_S``
  PINGs or SETTINGS, in a second is ENHANCE_YOUR_CALM (the rapid-reset and ping floods);
- on shutdown: GOAWAY, calls in flight finish within ``SHUTDOWN_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import cast

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

from aios import h2frames as f
from aios.config import ServerSettings
from aios.errors import AiosError, HeadersTooLarge, PayloadTooLarge
from aios.grpc_service import Unary
from aios.limits import InFlight
from aios.tasks import Tasks, sweep_forever

logger = logging.getLogger(__name__)

SWEEP_S = 0.25
IDLE_S = 300.0
SHUTDOWN_GRACE_S = 30.0
MAX_RESETS_PER_S = 200
MAX_PINGS_PER_S = 200
# The connection's receive window beyond the largest message, so that a message of the
# largest size and the frames around it fit at once.
WINDOW_SLACK = 1 << 20
BLOCK_HARD_FACTOR = 4
DECODED_BLOCKS = 64

Metadata = tuple[tuple[str, str | bytes], ...]


class _Context:
    __slots__ = ("_metadata", "trailing")

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self.trailing: Sequence[tuple[str, str | bytes]] = ()

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]],
                              ) -> None:
        self.trailing = tuple(trailing_metadata)


def _header(headers: Sequence[f.Header], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class _Stream:
    __slots__ = (
        "answered",
        "backend",
        "body",
        "expired",
        "handler",
        "headers",
        "held",
        "id",
        "out",
        "out_acks",
        "relayed",
        "started",
        "task",
        "timeout",
        "trailer",
        "window",
    )

    def __init__(self, stream_id: int, window: int, now: float) -> None:
        self.id = stream_id
        self.headers: list[f.Header] = []
        self.body = bytearray()
        self.held = 0  # received bytes not yet credited back to the connection
        self.handler: Unary | None = None
        self.started = now
        self.timeout: float | None = None
        self.window = window  # what the peer lets us send on this stream
        self.out = bytearray()  # DATA waiting for the peer's windows
        self.out_acks = 0  # of ``out``, bytes the relay is owed an acknowledgement for
        self.trailer: bytes | None = None  # the closing header block, sent after ``out``
        self.relayed = False
        self.backend = 0  # its stream id at the relay's backend
        self.answered = False  # response headers sent: an end now is trailers alone
        self.task: asyncio.Task[None] | None = None
        self.expired = False  # its grpc-timeout passed: its task was cancelled for it


def _expire(stream: _Stream) -> None:
    stream.expired = True
    if stream.task is not None:
        stream.task.cancel()


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcFront) -> None:
        self.server = server
        settings = server.settings
        self.max_message = settings.max_body_bytes
        self.max_block = settings.max_header_bytes
        # A block beyond max_block is still decoded (the HPACK table must stay in step) and
        # its call refused; one beyond this ends the connection.
        self.hard_block = BLOCK_HARD_FACTOR * self.max_block
        self.max_streams = settings.max_concurrent_requests
        self.stream_window = min(self.max_message + 5 + f.DEFAULT_MAX_FRAME, f.MAX_WINDOW)
        self.conn_window = min(self.max_message + WINDOW_SLACK, f.MAX_WINDOW)
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=self.hard_block)
        self.decoded: dict[bytes, list[f.Header]] = {}  # blocks that leave the table
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.block: tuple[_Stream, int, bytearray] | None = None  # header block in parts
        self.recv_window = self.conn_window
        self.uncredited = 0
        self.send_window = f.DEFAULT_WINDOW
        self.peer_window = f.DEFAULT_WINDOW
        self.peer_frame = f.DEFAULT_MAX_FRAME
        self.blocked: dict[int, _Stream] = {}  # streams waiting for the send window
        self.out: list[bytes] = []
        self.relay: _Relay | None = None
        self.closing = False
        now = server.loop.time()
        self.opened = now
        self.active = now
        self.block_started = now
        self.second = now
        self.resets = 0
        self.pings = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.transport.write(
            f.frame(f.SETTINGS, 0, 0, f.settings_payload({
                f.MAX_CONCURRENT_STREAMS: self.max_streams,
                f.INITIAL_WINDOW_SIZE: self.stream_window,
                f.MAX_HEADER_LIST_SIZE: self.max_block,
                f.ENABLE_PUSH: 0}))
            + f.window_update(0, self.conn_window - f.DEFAULT_WINDOW))

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.buf
        buf += data
        try:
            if not self.preface:
                if len(buf) < len(f.PREFACE):
                    if not f.PREFACE.startswith(bytes(buf)):
                        raise f.FrameError(f.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    return
                if buf[:len(f.PREFACE)] != f.PREFACE:
                    raise f.FrameError(f.PROTOCOL_ERROR, "not an HTTP/2 preface")
                del buf[:len(f.PREFACE)]
                self.preface = True
            frames, used = f.cut_frames(buf, f.DEFAULT_MAX_FRAME)
            del buf[:used]
            for fr in frames:
                self.on_frame(fr)
        except f.FrameError as exc:
            self.fail(exc.code, exc.reason)
            return
        except Exception:  # a bug here must end this connection, not the process's loop
            logger.exception("HTTP/2 connection failed")
            self.fail(f.INTERNAL_ERROR, "internal error")
            return
        self.active = self.server.loop.time()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self.drop(stream)
        if self.relay is not None:
            self.relay.close()

    # -- output

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.closing:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def fail(self, code: int, reason: str) -> None:
        """A connection error: GOAWAY naming it, then close."""
        if self.closing or self.transport is None:
            return
        logger.info("HTTP/2 connection error %d: %s", code, reason)
        self.out.append(f.goaway(self.last_stream, code, reason))
        self.flush()
        self.closing = True
        self.transport.close()

    def goaway(self) -> None:
        """Ask the peer to open no more streams (shutdown, idle)."""
        self.out.append(f.goaway(self.last_stream, f.NO_ERROR))
        self.flush()

    # -- frames in

    def on_frame(self, fr: f.Frame) -> None:
        if self.block is not None and fr.type != f.CONTINUATION:
            raise f.FrameError(f.PROTOCOL_ERROR, "a header block was interrupted")
        kind = fr.type
        if kind == f.DATA:
            self.on_data(fr)
        elif kind == f.HEADERS:
            self.on_headers(fr)
        elif kind == f.CONTINUATION:
            self.on_continuation(fr)
        elif kind == f.WINDOW_UPDATE:
            self.on_window_update(fr)
        elif kind == f.SETTINGS:
            self.on_settings(fr)
        elif kind == f.PING:
            if fr.stream or len(fr.payload) != 8:
                raise f.FrameError(f.PROTOCOL_ERROR, "a malformed PING")
            if not fr.flags & f.ACK:
                self.count_ping()
                self.out.append(f.frame(f.PING, f.ACK, 0, fr.payload))
        elif kind == f.RST_STREAM:
            f.error_code(fr.payload)
            self.on_reset(fr.stream)
        elif kind == f.GOAWAY:
            pass  # the peer opens no more streams; those open finish as they would
        elif kind == f.PUSH_PROMISE:
            raise f.FrameError(f.PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored (RFC 9113, 5.5).

    def count_ping(self) -> None:
        self.pings += 1
        if self.pings > MAX_PINGS_PER_S:
            raise f.FrameError(f.ENHANCE_YOUR_CALM, "too many PING or SETTINGS frames")

    def on_settings(self, fr: f.Frame) -> None:
        if fr.stream:
            raise f.FrameError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if fr.flags & f.ACK:
            return
        self.count_ping()
        values = f.parse_settings(fr.payload)
        if f.INITIAL_WINDOW_SIZE in values:
            delta = values[f.INITIAL_WINDOW_SIZE] - self.peer_window
            self.peer_window = values[f.INITIAL_WINDOW_SIZE]
            for stream in self.streams.values():
                stream.window += delta
        if f.MAX_FRAME_SIZE in values:
            self.peer_frame = values[f.MAX_FRAME_SIZE]
        self.out.append(f.frame(f.SETTINGS, f.ACK, 0))
        self.send_all()

    def on_window_update(self, fr: f.Frame) -> None:
        increment = f.window_increment(fr.payload)
        if fr.stream == 0:
            if increment == 0:
                raise f.FrameError(f.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self.send_all()
            return
        stream = self.streams.get(fr.stream)
        if stream is not None:
            stream.window += increment
            self.send(stream)

    def decode(self, block: bytes) -> list[f.Header]:
        """A header block's fields. A client sends the same block call after call once
        its fields are in the table (HPACK decoding was ~40% of this server's CPU), and
        such a block means the same while the table stays as it is."""
        if not f.leaves_table(block):
            self.decoded.clear()  # the table may change: what was decoded may not hold
            return cast(list[f.Header], self.decoder.decode(block, raw=True))
        headers = self.decoded.get(block)
        if headers is None:
            headers = cast(list[f.Header], self.decoder.decode(block, raw=True))
            if len(self.decoded) >= DECODED_BLOCKS:
                self.decoded.clear()
            self.decoded[block] = headers
        return headers

    def open_stream(self, stream_id: int) -> _Stream:
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise f.FrameError(f.PROTOCOL_ERROR, f"stream {stream_id} may not be opened")
        self.last_stream = stream_id
        return _Stream(stream_id, self.peer_window, self.server.loop.time())

    def on_headers(self, fr: f.Frame) -> None:
        fragment = f.header_fragment(fr.payload, fr.flags)
        stream = self.streams.get(fr.stream)
        if stream is None:
            stream = self.open_stream(fr.stream)
        elif stream.relayed:
            pass  # trailers from the client, relayed as they are
        else:
            raise f.FrameError(f.PROTOCOL_ERROR, "a second header block on a unary call")
        self.block = (stream, fr.flags, bytearray(fragment))
        self.block_started = self.server.loop.time()
        self.on_block_part(b"", fr.flags)

    def on_continuation(self, fr: f.Frame) -> None:
        if self.block is None or self.block[0].id != fr.stream:
            raise f.FrameError(f.PROTOCOL_ERROR, "CONTINUATION outside a header block")
        self.on_block_part(fr.payload, fr.flags)

    def on_block_part(self, part: bytes, flags: int) -> None:
        assert self.block is not None
        stream, first_flags, block = self.block
        block += part
        if len(block) > self.hard_block:
            raise f.FrameError(f.ENHANCE_YOUR_CALM,
                               f"a header block exceeds {self.hard_block} bytes")
        if not flags & f.END_HEADERS:
            return
        self.block = None
        try:
            headers = self.decode(bytes(block))
        except hpack.HPACKError as exc:
            raise f.FrameError(f.COMPRESSION_ERROR, f"header block: {exc}") from None
        end = bool(first_flags & f.END_STREAM)
        if stream.id in self.streams:  # the client's trailers on a relayed stream
            assert self.relay is not None
            self.relay.send_headers(stream, headers, end)
            return
        self.on_request(stream, headers, end)

    def on_request(self, stream: _Stream, headers: list[f.Header], end: bool) -> None:
        if len(self.streams) >= self.max_streams or self.server.stopping:
            self.out.append(f.rst_stream(stream.id, f.REFUSED_STREAM))
            return
        stream.headers = headers
        self.streams[stream.id] = stream
        # RFC 9113's header list size: each field's name and value, and 32 octets.
        size = sum(len(k) + len(v) + 32 for k, v in headers)
        if size > self.max_block:
            self.refuse(stream, HeadersTooLarge(
                f"the request metadata ({size} bytes) exceeds {self.max_block} bytes"))
            return
        path = _header(headers, b":path")
        if _header(headers, b":method") != b"POST" or path is None or not (
                _header(headers, b"content-type") or b"").startswith(b"application/grpc"):
            self.finish(stream, f.header_block([(b":status", b"415")]))
            return
        handler = self.server.unary.get(path)
        encoding = _header(headers, b"grpc-encoding")
        if handler is not None and encoding in (None, b"identity"):
            stream.handler = handler
            timeout = _header(headers, b"grpc-timeout")
            stream.timeout = None if timeout is None else f.parse_timeout(timeout)
            if end:
                self.start_call(stream)
            return
        stream.relayed = True
        if self.relay is None:
            self.relay = _Relay(self, self.server.relay_to)
        self.relay.open(stream, headers, end)

    def on_data(self, fr: f.Frame) -> None:
        if fr.stream == 0:
            raise f.FrameError(f.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(fr.payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise f.FrameError(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(fr.stream)
        if stream is None:
            if fr.stream > self.last_stream:
                raise f.FrameError(f.PROTOCOL_ERROR, "DATA on a stream never opened")
            self.credit(size)  # a stream already answered or reset: dropped, credited
            return
        payload = f.unpadded(fr.payload, fr.flags)
        end = bool(fr.flags & f.END_STREAM)
        stream.held += size
        if stream.relayed:
            assert self.relay is not None
            self.relay.send_data(stream, payload, end, size)
            return
        if stream.handler is None or stream.task is not None:
            raise f.FrameError(f.PROTOCOL_ERROR, "DATA after a unary request ended")
        stream.body += payload
        if len(stream.body) > self.max_message + 5:
            self.refuse(stream, PayloadTooLarge(
                f"the request message exceeds {self.max_message} bytes"))
            self.out.append(f.rst_stream(stream.id, f.NO_ERROR))
            return
        if end:
            self.start_call(stream)

    def on_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self.resets += 1
        if self.resets > MAX_RESETS_PER_S:
            raise f.FrameError(f.ENHANCE_YOUR_CALM, "too many streams reset")
        if stream.relayed and self.relay is not None:
            self.relay.reset(stream)
        self.drop(stream)

    # -- flow control

    def credit(self, size: int) -> None:
        """Give ``size`` received bytes back to the peer's connection window."""
        self.uncredited += size
        if self.uncredited >= self.conn_window // 4 or self.uncredited >= 1 << 20:
            self.out.append(f.window_update(0, self.uncredited))
            self.recv_window += self.uncredited
            self.uncredited = 0

    def release(self, stream: _Stream) -> None:
        if stream.held:
            self.credit(stream.held)
            stream.held = 0

    def send(self, stream: _Stream) -> None:
        """Send what the windows allow of ``stream``'s DATA, then its trailer."""
        out = stream.out
        while out:
            room = min(stream.window, self.send_window, self.peer_frame, len(out))
            if room <= 0:
                self.blocked[stream.id] = stream
                return
            self.out.append(f.frame(f.DATA, 0, stream.id, bytes(out[:room])))
            del out[:room]
            stream.window -= room
            self.send_window -= room
            if stream.out_acks:
                acked = min(room, stream.out_acks)
                stream.out_acks -= acked
                assert self.relay is not None
                self.relay.ack(stream, acked)
        self.blocked.pop(stream.id, None)
        if stream.trailer is not None:
            self.out.append(f.frames_for_block(stream.id, stream.trailer, True, self.peer_frame))
            stream.trailer = None
            self.close_stream(stream)

    def send_all(self) -> None:
        for stream in list(self.blocked.values()):
            self.send(stream)

    # -- streams out

    def close_stream(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self.release(stream)
        if stream.out_acks and self.relay is not None:
            self.relay.ack(stream, stream.out_acks)  # what will never reach the client
            stream.out_acks = 0

    def drop(self, stream: _Stream) -> None:
        """Forget a stream the peer reset or the connection lost: its call is cancelled."""
        if stream.task is not None:
            stream.task.cancel()
        self.close_stream(stream)

    def finish(self, stream: _Stream, block: bytes) -> None:
        """End ``stream`` with a trailers-only answer (``block``)."""
        stream.out.clear()
        stream.trailer = block
        self.send(stream)

    def refuse(self, stream: _Stream, exc: AiosError) -> None:
        self.finish(stream, status_block(exc.grpc_code, exc.message, (), head=True))

    def start_call(self, stream: _Stream) -> None:
        body = stream.body
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self.finish(stream, status_block(
                grpc.StatusCode.INTERNAL, "a unary call must carry exactly one message", (),
                head=True))
            return
        if body[0]:
            self.finish(stream, status_block(
                grpc.StatusCode.INTERNAL, "a compressed message without grpc-encoding", (),
                head=True))
            return
        self.release(stream)
        stream.task = self.server.calls.spawn(self.call(stream, bytes(body[5:])))
        stream.body = bytearray()

    async def call(self, stream: _Stream, message: bytes) -> None:
        assert stream.handler is not None
        in_flight = self.server.in_flight
        try:
            context = _Context(f.call_metadata(stream.headers))
            in_flight.enter()
            # A bare timer, not asyncio.timeout: its context manager cost ~2% of the
            # gateway's gRPC CPU, and every call of a tritonclient carries a deadline.
            timer = None if stream.timeout is None else \
                self.server.loop.call_later(stream.timeout, _expire, stream)
            try:
                reply = await stream.handler(message, context)
            finally:
                in_flight.leave()
                if timer is not None:
                    timer.cancel()
            trailer = status_block(grpc.StatusCode.OK, "", context.trailing, head=False)
        except AiosError as exc:
            self.answer(stream, status_block(exc.grpc_code, exc.message, (), head=True))
            return
        except asyncio.CancelledError:
            if not stream.expired:  # the client reset the stream, or the server stops
                raise
            self.answer(stream, status_block(grpc.StatusCode.DEADLINE_EXCEEDED,
                                             "Deadline Exceeded", (), head=True))
            return
        except Exception:
            logger.exception("unhandled error in %s", _header(stream.headers, b":path"))
            self.answer(stream, status_block(grpc.StatusCode.INTERNAL, "internal error", (),
                                             head=True))
            return
        if self.streams.get(stream.id) is not stream:
            return
        self.out.append(f.frame(f.HEADERS, f.END_HEADERS, stream.id, f.RESPONSE_HEAD))
        stream.out += f.grpc_frame(reply)
        stream.trailer = trailer
        self.send(stream)
        self.flush()

    def answer(self, stream: _Stream, block: bytes) -> None:
        if self.streams.get(stream.id) is stream:
            self.finish(stream, block)
            self.flush()

    # -- relayed streams (called by _Relay)

    def relayed_headers(self, stream: _Stream, headers: list[f.Header], end: bool) -> None:
        if self.streams.get(stream.id) is not stream:
            return
        block = f.header_block(headers)
        if end:
            stream.trailer = block
            self.send(stream)
        else:
            stream.answered = True
            self.out.append(f.frames_for_block(stream.id, block, False, self.peer_frame))
        self.flush()

    def relayed_data(self, stream: _Stream, data: bytes) -> bool:
        """Queue ``data`` for the client; False when the stream is gone here."""
        if self.streams.get(stream.id) is not stream:
            return False
        stream.out += data
        stream.out_acks += len(data)
        self.send(stream)
        self.flush()
        return True

    def relayed_reset(self, stream: _Stream, error: tuple[grpc.StatusCode, str] | None,
                      ) -> None:
        """The backend ended ``stream`` without trailers: with ``error`` as its status, or
        (None) with a reset passed on as CANCEL."""
        if self.streams.get(stream.id) is not stream:
            return
        if error is not None:
            block = status_block(*error, (), head=not stream.answered)
            if stream.answered:  # what DATA came before the end still goes first
                stream.trailer = block
                self.send(stream)
            else:
                self.finish(stream, block)
        else:
            self.out.append(f.rst_stream(stream.id, f.CANCEL))
            self.close_stream(stream)
        self.flush()

    def relayed_credit(self, stream: _Stream, size: int) -> None:
        """``size`` bytes of ``stream`` went on to the backend: the peer may send more."""
        if size == 0 or self.streams.get(stream.id) is not stream:
            return
        stream.held -= size
        self.credit(size)
        self.out.append(f.window_update(stream.id, size))
        self.flush()

    # -- time

    def sweep(self, now: float) -> None:
        """Cut off what took too long; reset the per-second flood counters."""
        if now - self.second >= 1.0:
            self.second = now
            self.resets = self.pings = 0
        settings = self.server.settings
        if not self.preface and now - self.opened > settings.header_timeout_s:
            self.fail(f.PROTOCOL_ERROR, "no HTTP/2 preface in time")
            return
        if self.block is not None and now - self.block_started > settings.header_timeout_s:
            self.fail(f.PROTOCOL_ERROR, "a header block did not complete in time")
            return
        for stream in list(self.streams.values()):
            if (stream.handler is not None and stream.task is None
                    and now - stream.started > settings.body_timeout_s):
                self.out.append(f.rst_stream(stream.id, f.CANCEL))
                self.close_stream(stream)
        if not self.streams and now - self.active > IDLE_S:
            self.goaway()
            self.closing = True
            if self.transport is not None:
                self.transport.close()
        self.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def status_block(code: grpc.StatusCode, message: str,
                 trailing: Sequence[tuple[str, str | bytes]], head: bool) -> bytes:
    """The header block that ends a call: grpc-status, grpc-message and trailing metadata;
    with ``head``, a trailers-only answer (the response's headers too)."""
    if code is grpc.StatusCode.OK and not trailing and not message:
        return f.OK_TRAILERS
    headers: list[f.Header] = [(b":status", b"200"),
                               (b"content-type", b"application/grpc")] if head else []
    headers.append((b"grpc-status", str(code.value[0]).encode()))
    if message:
        headers.append((b"grpc-message", f.grpc_message(message)))
    headers.extend(f.metadata_headers(trailing))
    return f.header_block(headers)


_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "the gRPC backend is unreachable")


class _Relay(asyncio.Protocol):
    """One front connection's streams that grpcio answers, over one HTTP/2 connection to
    it (h2 as the client: these calls are not the hot path)."""

    def __init__(self, front: _Connection, address: tuple[str, int]) -> None:
        self.front = front
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: front.stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: front.max_block})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(front.conn_window - f.DEFAULT_WINDOW)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}  # backend stream id → front stream
        self.ids: dict[int, int] = {}  # front stream id → backend stream id
        self.pending: dict[int, list[tuple[bytes, bool, int]]] = {}
        self.closed = False
        self.connecting = front.server.loop.create_task(self._connect(address))

    async def _connect(self, address: tuple[str, int]) -> None:
        loop = self.front.server.loop
        try:
            await loop.create_connection(lambda: self, *address)
        except OSError:
            logger.warning("cannot reach the gRPC backend at %s:%d", *address)
            self.lost()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)
        self.write()

    def write(self) -> None:
        if self.transport is not None:  # until connected, h2 keeps what it would send
            self.transport.write(self.h2.data_to_send())

    def open(self, stream: _Stream, headers: list[f.Header], end: bool) -> None:
        if self.closed:
            self.front.finish(stream, status_block(*_UNAVAILABLE, (), head=True))
            return
        backend = self.h2.get_next_available_stream_id()
        stream.backend = backend
        self.streams[backend] = stream
        self.ids[stream.id] = backend
        self.send_headers(stream, headers, end)

    def send_headers(self, stream: _Stream, headers: list[f.Header], end: bool) -> None:
        backend = self.ids.get(stream.id)
        if backend is None or self.closed:
            return
        try:
            self.h2.send_headers(backend, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:  # headers HTTP/2 does not allow
            self.reset(stream)
            self.front.finish(stream, status_block(
                grpc.StatusCode.INTERNAL, f"request headers refused: {exc}", (), head=True))
            return
        self.write()

    def send_data(self, stream: _Stream, data: bytes, end: bool, size: int) -> None:
        backend = self.ids.get(stream.id)
        if backend is None or self.closed:
            return
        self.pending.setdefault(backend, []).append((data, end, size))
        self.push(backend)
        self.write()

    def push(self, backend: int) -> None:
        """Send ``backend``'s waiting DATA as its windows allow, crediting the client."""
        queue = self.pending.get(backend)
        stream = self.streams.get(backend)
        while queue and stream is not None:
            data, end, size = queue[0]
            room = min(self.h2.local_flow_control_window(backend),
                       self.h2.max_outbound_frame_size)
            if len(data) > room:
                if room <= 0:
                    return
                self.h2.send_data(backend, data[:room])
                queue[0] = (data[room:], end, size - room)
                self.front.relayed_credit(stream, room)
                continue
            self.h2.send_data(backend, data, end_stream=end)
            queue.pop(0)
            self.front.relayed_credit(stream, size)
        self.pending.pop(backend, None)

    def ack(self, stream: _Stream, size: int) -> None:
        """``size`` bytes the backend sent on ``stream`` have reached the client (or never
        will): the backend's windows get them back, the connection's even once the
        stream has ended."""
        if stream.backend and not self.closed:
            self.h2.acknowledge_received_data(size, stream.backend)
            self.write()

    def reset(self, stream: _Stream) -> None:
        backend = self.ids.pop(stream.id, None)
        if backend is None:
            return
        self.streams.pop(backend, None)
        self.pending.pop(backend, None)
        if not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(backend, f.CANCEL)
            self.write()

    def forget(self, backend: int) -> _Stream | None:
        stream = self.streams.pop(backend, None)
        self.pending.pop(backend, None)
        if stream is not None:
            self.ids.pop(stream.id, None)
        return stream

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            logger.warning("the gRPC backend broke HTTP/2", exc_info=True)
            self.close()
            self.lost()
            return
        front = self.front
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    front.relayed_headers(stream, list(event.headers), event.stream_ended
                                          is not None)
                    if event.stream_ended is not None:
                        self.forget(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                padding = event.flow_controlled_length - len(event.data)
                if padding:
                    self.h2.acknowledge_received_data(padding, event.stream_id)
                if stream is None or not front.relayed_data(stream, event.data):
                    self.h2.acknowledge_received_data(len(event.data), event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                stream = self.forget(event.stream_id)
                if stream is not None:
                    front.relayed_headers(stream, list(event.headers), True)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.forget(event.stream_id)
                if stream is not None:  # ended by DATA, with no trailers: no status
                    front.relayed_reset(stream, (grpc.StatusCode.INTERNAL,
                                                 "the gRPC backend sent no status"))
            elif isinstance(event, h2.events.StreamReset):
                stream = self.forget(event.stream_id)
                if stream is not None:
                    front.relayed_reset(stream, None)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                for backend in list(self.pending):
                    self.push(backend)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.close()
                self.lost()
                return
        self.write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost()

    def lost(self) -> None:
        """The backend is gone: its streams end UNAVAILABLE; new ones get a new relay."""
        self.closed = True
        if self.front.relay is self:
            self.front.relay = None
        for backend in list(self.streams):
            stream = self.forget(backend)
            if stream is not None:
                self.front.relayed_reset(stream, _UNAVAILABLE)

    def close(self) -> None:
        self.closed = True
        self.connecting.cancel()
        if self.transport is not None:
            self.transport.close()


class GrpcFront:
    """Serves ``unary`` (full method path → handler) over HTTP/2 on the settings' gRPC
    port, relaying every other stream to grpcio at ``relay_to``."""

    def __init__(self, unary: Mapping[str, Unary], relay_to: tuple[str, int],
                 settings: ServerSettings, in_flight: InFlight) -> None:
        self.unary = {path.encode(): handler for path, handler in unary.items()}
        self.relay_to = relay_to
        self.settings = settings
        self.in_flight = in_flight
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.calls = Tasks()  # the unary calls being answered
        self._tasks = Tasks()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Connection(self), self.settings.host, self.settings.grpc_port,
            reuse_address=True, backlog=2048)
        self._tasks.spawn(sweep_forever(self.connections, SWEEP_S))

    async def shutdown(self) -> None:
        """GOAWAY to every connection; let calls in flight finish; close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.goaway()
        deadline = self.loop.time() + SHUTDOWN_GRACE_S
        while True:
            if not any(c.streams for c in self.connections) or self.loop.time() >= deadline:
                break
            await asyncio.sleep(SWEEP_S)
        for conn in list(self.connections):
            conn.close()
        await self.calls.aclose()
        await self._tasks.aclose()
