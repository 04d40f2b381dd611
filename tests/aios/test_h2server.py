"""The lean gRPC front door, over real loopback sockets: grpc.aio clients for what clients
do, raw HTTP/2 frames for what attackers and broken clients do, and a real grpcio server
behind it for the streams it relays.

Its place on the real path (tritonclient through gateway and sidecar) is covered by the
e2e suite, which runs with it by default (``server.grpc_server: h2``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import hpack
import pytest

from aios import h2frames as f
from aios.config import ServerSettings
from aios.errors import InvalidInput
from aios.h2server import GrpcFront
from aios.limits import InFlight
from tests.helpers import free_ports

BIG = 3 * 1024 * 1024 + 17  # beyond every default window: flow control must work


@dataclass
class Seen:
    """What the front's handlers saw."""

    metadata: list[Any] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


async def native(seen: Seen, request: bytes, context: Any) -> bytes:
    seen.metadata.append(context.invocation_metadata())
    if request == b"invalid":
        raise InvalidInput("bad % input: ü")
    if request == b"bug":
        raise RuntimeError("a bug")
    if request.startswith(b"sleep"):
        try:
            await asyncio.sleep(float(request[5:]))
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
    if request.startswith(b"big"):
        return b"r" * BIG
    context.set_trailing_metadata((("x-route", "stable"), ("x-id-bin", b"\xff\x00")))
    return b"native:" + request


async def backend_echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"grpcio:" + request


async def backend_stream(requests: AsyncIterator[bytes],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield b"grpcio:" + request


@dataclass
class Front:
    address: str
    port: int
    seen: Seen
    front: GrpcFront


async def start(settings: dict[str, Any] | None = None, in_flight: int = 64,
                ) -> tuple[Front, grpc.aio.Server]:
    seen = Seen()

    async def handler(request: bytes, context: Any) -> bytes:
        return await native(seen, request, context)

    backend = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20),
                                       ("grpc.max_send_message_length", 8 << 20)])
    backend.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {
        "Native": grpc.unary_unary_rpc_method_handler(backend_echo),
        "Relayed": grpc.unary_unary_rpc_method_handler(backend_echo),
        "Stream": grpc.stream_stream_rpc_method_handler(backend_stream)}),))
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    [port] = free_ports(1)
    front = GrpcFront({"/t.T/Native": handler}, ("127.0.0.1", backend_port),
                      ServerSettings(http_port=1, grpc_port=port,
                                     **{"max_body_bytes": 8 << 20, **(settings or {})}),
                      InFlight(in_flight))
    await front.start()
    return Front(f"127.0.0.1:{port}", port, seen, front), backend


@pytest.fixture
async def server() -> AsyncIterator[Front]:
    front, backend = await start()
    yield front
    await front.front.shutdown()
    await backend.stop(None)


def channel(srv: Front, **options: Any) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(srv.address, options=[
        ("grpc.max_receive_message_length", 16 << 20), *options.items()])


async def test_a_unary_call_sees_its_metadata_and_returns_trailing_metadata(
        server: Front) -> None:
    async with channel(server) as ch:
        call = ch.unary_unary("/t.T/Native")(b"hello", metadata=(
            ("authorization", "Bearer t"), ("k-bin", b"\xff\x00\x01")), timeout=5)
        assert await call == b"native:hello"
        assert tuple(await call.trailing_metadata()) == (
            ("x-route", "stable"), ("x-id-bin", b"\xff\x00"))
        assert await call.code() == grpc.StatusCode.OK
    [metadata] = server.seen.metadata
    assert [(k, v) for k, v in metadata if k != "user-agent"] == [
        ("authorization", "Bearer t"), ("k-bin", b"\xff\x00\x01")]
    assert any(k == "user-agent" and "grpc" in str(v) for k, v in metadata)


@pytest.mark.parametrize(("request_", "code", "details"), [
    (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "bad % input: ü"),
    (b"bug", grpc.StatusCode.INTERNAL, "internal error"),
])
async def test_errors_become_their_status(server: Front, request_: bytes,
                                          code: grpc.StatusCode, details: str) -> None:
    async with channel(server) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary("/t.T/Native")(request_, timeout=5)
    assert (caught.value.code(), caught.value.details()) == (code, details)


async def test_large_messages_both_ways_follow_flow_control(server: Front) -> None:
    async with channel(server) as ch:
        reply = await ch.unary_unary("/t.T/Native")(b"big" + b"q" * BIG, timeout=10)
    assert reply == b"r" * BIG


async def test_many_calls_at_once_on_one_connection(server: Front) -> None:
    async with channel(server) as ch:
        call = ch.unary_unary("/t.T/Native")
        replies = await asyncio.gather(*(call(str(i).encode(), timeout=10)
                                         for i in range(300)))
    assert replies == [b"native:" + str(i).encode() for i in range(300)]


@pytest.mark.parametrize("method", ["/t.T/Relayed", "/t.T/Native"])
async def test_other_methods_and_compressed_calls_are_answered_by_grpcio(
        server: Front, method: str) -> None:
    async with channel(server) as ch:
        relayed = await ch.unary_unary("/t.T/Relayed")(b"x" * BIG, timeout=10)
        compressed = await ch.unary_unary(method)(b"zip", timeout=5,
                                                  compression=grpc.Compression.Gzip)
    assert relayed == b"grpcio:" + b"x" * BIG
    assert compressed == b"grpcio:zip"
    assert server.seen.metadata == []


async def test_a_relayed_stream_keeps_its_order_and_large_messages(server: Front) -> None:
    messages = [b"one", b"m" * BIG, b"three"]

    async def requests() -> AsyncIterator[bytes]:
        for m in messages:
            yield m

    async with channel(server) as ch:
        got = [r async for r in ch.stream_stream("/t.T/Stream")(requests(), timeout=10)]
    assert got == [b"grpcio:" + m for m in messages]


async def test_an_unknown_method_is_unimplemented(server: Front) -> None:
    async with channel(server) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary("/t.T/Nothing")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("size", [70_000, 200_000])
async def test_metadata_over_the_limit_is_refused_and_the_connection_goes_on(
        server: Front, size: int) -> None:
    async with channel(server) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary("/t.T/Native")(b"x", metadata=(("x-big", "v" * size),),
                                                timeout=5)
        assert await ch.unary_unary("/t.T/Native")(b"y", timeout=5) == b"native:y"
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details().endswith("exceeds 61440 bytes")


async def test_a_message_over_the_limit_is_resource_exhausted() -> None:
    front, backend = await start({"max_body_bytes": 1024})
    try:
        async with channel(front) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ch.unary_unary("/t.T/Native")(b"x" * 1025, timeout=5)
            ok = await ch.unary_unary("/t.T/Native")(b"x" * 1024, timeout=5)
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "the request message exceeds 1024 bytes")
    assert ok == b"native:" + b"x" * 1024


async def test_beyond_the_in_flight_limit_calls_are_unavailable() -> None:
    front, backend = await start(in_flight=1)
    try:
        async with channel(front) as ch:
            call = ch.unary_unary("/t.T/Native")
            slow = asyncio.ensure_future(call(b"sleep0.5", timeout=5))
            await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"next", timeout=5)
            assert await slow == b"native:sleep0.5"
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_gives_up_cancels_the_call(server: Front) -> None:
    async with channel(server) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary("/t.T/Native")(b"sleep5", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(server.seen.cancelled.wait(), 2)


class Raw:
    """An HTTP/2 client written frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = bytearray()

    @classmethod
    async def open(cls, srv: Front, preface: bytes = f.PREFACE,
                   settings: dict[int, int] | None = None) -> Raw:
        raw = cls(*await asyncio.open_connection("127.0.0.1", srv.port))
        raw.send(preface + f.frame(f.SETTINGS, 0, 0, f.settings_payload(settings or {})))
        return raw

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(self, stream: int, path: bytes = b"/t.T/Native", end: bool = False,
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
        block = self.encoder.encode([(b":method", b"POST"), (b":scheme", b"http"),
                                     (b":path", path), (b":authority", b"x"),
                                     (b"content-type", b"application/grpc"),
                                     (b"te", b"trailers"), *extra])
        return f.frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if end else 0), stream, block)

    async def frames(self, until: Any, within: float = 5.0) -> list[f.Frame]:
        """Frames read until ``until(frame)`` holds, or the connection closes."""
        out: list[f.Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            got, used = f.cut_frames(self.buf, f.MAX_FRAME_LIMIT)
            del self.buf[:used]
            for fr in got:
                out.append(fr)
                if until(fr):
                    return out
            data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
            if not data:
                return out
            self.buf += data

    def trailers(self, frames: list[f.Frame], stream: int) -> dict[bytes, bytes]:
        blocks = [fr.payload for fr in frames if fr.type == f.HEADERS and fr.stream == stream]
        return {bytes(k): bytes(v) for k, v in self.decoder.decode(blocks[-1], raw=True)}

    def close(self) -> None:
        self.writer.close()


def goaway(frames: list[f.Frame]) -> tuple[int, bytes] | None:
    for fr in frames:
        if fr.type == f.GOAWAY:
            return int.from_bytes(fr.payload[4:8], "big"), fr.payload[8:]
    return None


def is_goaway(fr: f.Frame) -> bool:
    return fr.type == f.GOAWAY


@pytest.mark.parametrize(("send", "code", "reason"), [
    (lambda r: r.send(b"GET / HTTP/1.1\r\n\r\n"), f.FRAME_SIZE_ERROR, None),
    (lambda r: r.send(r.headers(2)), f.PROTOCOL_ERROR, b"stream 2 may not be opened"),
    (lambda r: r.send(f.frame(f.DATA, 0, 0, b"x")), f.PROTOCOL_ERROR, b"DATA on stream 0"),
    (lambda r: r.send(f.frame(f.DATA, 0, 9, b"x")), f.PROTOCOL_ERROR,
     b"DATA on a stream never opened"),
    (lambda r: r.send(f.frame(f.DATA, 0, 1, b"x" * 20_000)), f.FRAME_SIZE_ERROR,
     b"a 20000-byte frame exceeds 16384"),
    (lambda r: r.send(f.frame(f.HEADERS, 0, 1, b"") + f.frame(f.PING, 0, 0, b"12345678")),
     f.PROTOCOL_ERROR, b"a header block was interrupted"),
    (lambda r: r.send(f.frame(f.CONTINUATION, f.END_HEADERS, 1, b"")), f.PROTOCOL_ERROR,
     b"CONTINUATION outside a header block"),
    (lambda r: r.send(f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\xff")),
     f.COMPRESSION_ERROR, None),
    (lambda r: r.send(f.frame(f.HEADERS, 0, 1, b"") + b"".join(
        f.frame(f.CONTINUATION, 0, 1, b"\x00" * 16_000) for _ in range(16))),
     f.ENHANCE_YOUR_CALM, b"a header block exceeds 245760 bytes"),
    (lambda r: r.send(f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\x00\x00\x00\x02")),
     f.PROTOCOL_ERROR, b"a client may not push"),
    (lambda r: r.send(f.frame(f.SETTINGS, 0, 0, b"\x00\x04")), f.FRAME_SIZE_ERROR,
     b"SETTINGS length is not a multiple of 6"),
    (lambda r: r.send(f.frame(f.PING, 0, 0, b"123")), f.PROTOCOL_ERROR, b"a malformed PING"),
    (lambda r: r.send(f.window_update(0, 0)), f.PROTOCOL_ERROR, b"a WINDOW_UPDATE of 0"),
    (lambda r: r.send(f.window_update(0, f.MAX_WINDOW)), f.FLOW_CONTROL_ERROR,
     b"connection window above 2^31-1"),
    (lambda r: r.send(b"".join(f.frame(f.PING, 0, 0, b"12345678") for _ in range(300))),
     f.ENHANCE_YOUR_CALM, b"too many PING or SETTINGS frames"),
    (lambda r: r.send(b"".join(r.headers(i) + f.rst_stream(i, f.CANCEL)
                               for i in range(1, 1000, 2))),
     f.ENHANCE_YOUR_CALM, b"too many streams reset"),
], ids=["http1", "even-stream", "data-on-0", "data-unopened", "frame-too-big",
        "interrupted-block", "stray-continuation", "bad-hpack", "huge-header-block", "push",
        "bad-settings", "bad-ping", "zero-window-update", "window-overflow", "ping-flood",
        "rapid-reset"])
async def test_protocol_violations_and_floods_end_the_connection_with_goaway(
        server: Front, send: Any, code: int | None, reason: bytes | None) -> None:
    raw = await Raw.open(server)
    send(raw)
    frames = await raw.frames(is_goaway)
    raw.close()
    said = goaway(frames)
    assert said is not None
    if code is not None:
        assert said[0] == code
    if reason is not None:
        assert said[1] == reason


async def test_a_bad_preface_is_refused() -> None:
    front, backend = await start()
    try:
        raw = await Raw.open(front, preface=b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n")
        frames = await raw.frames(is_goaway)
        raw.close()
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert goaway(frames) == (f.PROTOCOL_ERROR, b"not an HTTP/2 preface")


async def test_a_silent_connection_is_cut_off_after_the_header_timeout() -> None:
    front, backend = await start({"header_timeout_s": 0.5})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        start_ = asyncio.get_running_loop().time()
        data = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            data += chunk
        took = asyncio.get_running_loop().time() - start_
        writer.close()
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert b"no HTTP/2 preface in time" in data
    assert 0.4 < took < 2.0


async def test_a_stalled_body_is_cancelled_after_the_body_timeout() -> None:
    front, backend = await start({"body_timeout_s": 0.5})
    try:
        raw = await Raw.open(front)
        raw.send(raw.headers(1) + f.frame(f.DATA, 0, 1, b"\x00\x00\x00\x00\x09abc"))
        frames = await raw.frames(lambda fr: fr.type == f.RST_STREAM)
        raw.close()
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert (frames[-1].type, frames[-1].stream, frames[-1].payload) == (
        f.RST_STREAM, 1, f.CANCEL.to_bytes(4, "big"))


async def test_the_servers_own_deadline_comes_from_grpc_timeout(server: Front) -> None:
    raw = await Raw.open(server)
    raw.send(raw.headers(1, extra=((b"grpc-timeout", b"200m"),))
             + f.frame(f.DATA, f.END_STREAM, 1, f.grpc_frame(b"sleep5")))
    frames = await raw.frames(lambda fr: fr.type == f.HEADERS and bool(fr.flags & f.END_STREAM))
    trailers = raw.trailers(frames, 1)
    raw.close()
    assert (trailers[b"grpc-status"], trailers[b"grpc-message"]) == (b"4", b"Deadline Exceeded")
    await asyncio.wait_for(server.seen.cancelled.wait(), 2)


@pytest.mark.parametrize(("body", "extra", "status", "message"), [
    (b"", (), b"13", b"a unary call must carry exactly one message"),
    (f.grpc_frame(b"a") + f.grpc_frame(b"b"), (), b"13",
     b"a unary call must carry exactly one message"),
    (b"\x01" + f.grpc_frame(b"a")[1:], (), b"13", b"a compressed message without grpc-encoding"),
    (f.grpc_frame(b"a"), ((b"k-bin", b"!!"),), b"3", b"metadata 'k-bin' is not base64"),
], ids=["no-message", "two-messages", "compressed-flag", "bad-binary-metadata"])
async def test_malformed_calls_get_their_status(server: Front, body: bytes,
                                                extra: tuple[tuple[bytes, bytes], ...],
                                                status: bytes, message: bytes) -> None:
    raw = await Raw.open(server)
    raw.send(raw.headers(1, extra=extra) + f.frame(f.DATA, f.END_STREAM, 1, body))
    frames = await raw.frames(lambda fr: fr.type == f.HEADERS and bool(fr.flags & f.END_STREAM))
    trailers = raw.trailers(frames, 1)
    raw.close()
    assert (trailers[b"grpc-status"], trailers[b"grpc-message"]) == (status, message)


async def test_a_reply_waits_for_the_clients_windows() -> None:
    front, backend = await start()
    try:
        raw = await Raw.open(front, settings={f.INITIAL_WINDOW_SIZE: 1000})
        raw.send(raw.headers(1) + f.frame(f.DATA, f.END_STREAM, 1, f.grpc_frame(b"big")))
        first = await raw.frames(lambda fr: fr.type == f.DATA)
        await asyncio.sleep(0.2)
        stuck = await raw.frames(lambda fr: True, within=0.3) if raw.buf else []
        sent = sum(len(fr.payload) for fr in first + stuck if fr.type == f.DATA)
        raw.send(f.window_update(1, 1 << 24) + f.window_update(0, 1 << 24))
        rest = await raw.frames(lambda fr: fr.type == f.HEADERS and bool(fr.flags & f.END_STREAM))
        raw.close()
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert sent == 1000
    assert sent + sum(len(fr.payload) for fr in rest if fr.type == f.DATA) == BIG + 5


async def test_streams_beyond_the_connections_limit_are_refused() -> None:
    front, backend = await start({"max_concurrent_requests": 2})
    try:
        raw = await Raw.open(front)
        raw.send(b"".join(raw.headers(i) for i in (1, 3, 5)))
        frames = await raw.frames(lambda fr: fr.type == f.RST_STREAM)
        raw.close()
    finally:
        await front.front.shutdown()
        await backend.stop(None)
    assert (frames[-1].stream, frames[-1].payload) == (5, f.REFUSED_STREAM.to_bytes(4, "big"))


async def test_shutdown_says_goaway_and_lets_calls_in_flight_finish() -> None:
    front, backend = await start()
    try:
        async with channel(front) as ch:
            slow = asyncio.ensure_future(ch.unary_unary("/t.T/Native")(b"sleep0.5", timeout=5))
            await asyncio.sleep(0.2)
            await front.front.shutdown()
            assert await slow == b"native:sleep0.5"
    finally:
        await backend.stop(None)



async def test_a_relayed_call_to_an_unreachable_grpcio_is_unavailable() -> None:
    front, backend = await start()
    await backend.stop(None)
    try:
        async with channel(front) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ch.unary_unary("/t.T/Relayed")(b"x", timeout=5)
            # The lean front's own methods do not need it.
            assert await ch.unary_unary("/t.T/Native")(b"y", timeout=5) == b"native:y"
    finally:
        await front.front.shutdown()
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.UNAVAILABLE, "the gRPC backend is unreachable")


async def test_a_relayed_stream_whose_grpcio_goes_away_ends_with_a_status() -> None:
    front, backend = await start()
    try:
        async with channel(front) as ch:
            requests: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def messages() -> AsyncIterator[bytes]:
                while (m := await requests.get()) is not None:
                    yield m

            call = ch.stream_stream("/t.T/Stream")(messages(), timeout=10)
            await requests.put(b"one")
            assert await call.read() == b"grpcio:one"
            await backend.stop(None)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
    finally:
        await front.front.shutdown()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_same_block_after_the_table_changed_is_decoded_anew(server: Front) -> None:
    # Blocks written by hand: the fixed fields as literals that leave the table, then
    # x-tenant either entering the table (at index 62, pushing the one before to 63) or
    # as index 62. The two "index 62" blocks are the same bytes and mean "a", then "b".
    fixed = b"\x83\x86" + f.header_block([
        (b":path", b"/t.T/Native"), (b":authority", b"x"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")])

    def entering(value: bytes) -> bytes:
        return fixed + b"\x40\x08x-tenant" + bytes((len(value),)) + value

    blocks = [entering(b"a"), fixed + b"\xbe", entering(b"b"), fixed + b"\xbe"]
    raw = await Raw.open(server)
    for i, block in enumerate(blocks):
        stream = 2 * i + 1
        raw.send(f.frame(f.HEADERS, f.END_HEADERS, stream, block)
                 + f.frame(f.DATA, f.END_STREAM, stream, f.grpc_frame(b"x")))
        frames = await raw.frames(lambda fr: fr.type == f.HEADERS
                                  and bool(fr.flags & f.END_STREAM))
        assert raw.trailers(frames, stream)[b"grpc-status"] == b"0"
    raw.close()
    assert [dict(m)["x-tenant"] for m in server.seen.metadata] == ["a", "a", "b", "b"]
