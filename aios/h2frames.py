"""HTTP/2 (RFC 9113) and gRPC wire pieces for `aios.h2server`, without I/O.

Only what a server of unary gRPC calls needs: frames cut from a byte buffer, frames and
header blocks written, and gRPC's own header values (timeouts, status messages, binary
metadata). Header blocks written here use HPACK literals that never enter the dynamic
table, so a response needs no encoder state and the common ones are constants.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from aios.errors import InvalidInput

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113, 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, \
    STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, \
    CONNECT_ERROR, ENHANCE_YOUR_CALM = range(12)

# Settings (RFC 9113, 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, \
    MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = range(1, 7)

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_LIMIT = 2**24 - 1

Header = tuple[bytes, bytes]


class Frame(NamedTuple):
    type: int
    flags: int
    stream: int
    payload: bytes


class FrameError(Exception):
    """A connection error: the HTTP/2 error code to send in GOAWAY, and why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def cut_frames(buf: bytearray, max_size: int) -> tuple[list[Frame], int]:
    """The whole frames at the start of ``buf`` and how many bytes they took; a frame
    longer than ``max_size`` (the largest this side advertised) is a FRAME_SIZE_ERROR."""
    frames = []
    pos = 0
    end = len(buf)
    while end - pos >= 9:
        length = int.from_bytes(buf[pos:pos + 3], "big")
        if length > max_size:
            raise FrameError(FRAME_SIZE_ERROR, f"a {length}-byte frame exceeds {max_size}")
        if end - pos < 9 + length:
            break
        frames.append(Frame(buf[pos + 3], buf[pos + 4],
                            int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFF_FFFF,
                            bytes(buf[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return frames, pos


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream.to_bytes(4, "big") + payload)


def unpadded(payload: bytes, flags: int) -> bytes:
    """A DATA or HEADERS payload without its padding (PADDED flag)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise FrameError(PROTOCOL_ERROR, "padding exceeds the frame")
    return payload[1:len(payload) - payload[0]]


def header_fragment(payload: bytes, flags: int) -> bytes:
    """A HEADERS payload's header block fragment (padding and priority removed)."""
    body = unpadded(payload, flags)
    if flags & PRIORITY_FLAG:
        if len(body) < 5:
            raise FrameError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        body = body[5:]
    return body


def settings_payload(values: dict[int, int]) -> bytes:
    return b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())


def parse_settings(payload: bytes) -> dict[int, int]:
    """A SETTINGS payload's values, each checked where RFC 9113 bounds it."""
    if len(payload) % 6:
        raise FrameError(FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
    values = {}
    for pos in range(0, len(payload), 6):
        key = int.from_bytes(payload[pos:pos + 2], "big")
        value = int.from_bytes(payload[pos + 2:pos + 6], "big")
        if key == INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise FrameError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
        if key == MAX_FRAME_SIZE and not DEFAULT_MAX_FRAME <= value <= MAX_FRAME_LIMIT:
            raise FrameError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
        if key == ENABLE_PUSH and value > 1:
            raise FrameError(PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        values[key] = value
    return values


def window_increment(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
    return int.from_bytes(payload, "big") & 0x7FFF_FFFF


def error_code(payload: bytes) -> int:
    """RST_STREAM's error code."""
    if len(payload) != 4:
        raise FrameError(FRAME_SIZE_ERROR, "RST_STREAM must be 4 bytes")
    return int.from_bytes(payload, "big")


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, code.to_bytes(4, "big"))


def goaway(last_stream: int, code: int, reason: str = "") -> bytes:
    return frame(GOAWAY, 0, 0, last_stream.to_bytes(4, "big") + code.to_bytes(4, "big")
                 + reason.encode()[:256])


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, increment.to_bytes(4, "big"))


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541, 5.1) under an N-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(raw: bytes) -> bytes:
    size = len(raw)
    return (bytes((size,)) if size < 127 else _integer(size, 7)) + raw


def _skip_integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """(value, position after it) of the HPACK integer at ``pos`` (RFC 7541, 5.1)."""
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def leaves_table(block: bytes) -> bool:
    """Whether an HPACK block leaves the dynamic table as it was: indexed fields and
    literals not indexed or never indexed only (RFC 7541, 6.1 and 6.2.2-3). While no other
    block arrives, such a block always decodes to the same headers. False for anything
    else, a truncated block included."""
    pos, end = 0, len(block)
    try:
        while pos < end:
            first = block[pos]
            if first & 0x80:
                _, pos = _skip_integer(block, pos, 7)
                continue
            if first & 0xE0:  # incremental indexing (01) or a table size update (001)
                return False
            index, pos = _skip_integer(block, pos, 4)
            for _ in range(1 if index else 2):  # the name when not indexed, the value
                length, pos = _skip_integer(block, pos, 7)
                pos += length
        return pos == end
    except IndexError:
        return False


def header_block(headers: Iterable[Header]) -> bytes:
    """An HPACK block of literal fields not indexed (RFC 7541, 6.2.2): no table state."""
    return b"".join(b"\x00" + _string(name) + _string(value) for name, value in headers)


def frames_for_block(stream: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS (and CONTINUATION, when ``block`` exceeds the peer's frame size)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream, block)
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)]
    return frame(HEADERS, flags, stream, parts[0]) + b"".join(
        frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, stream, part)
        for i, part in enumerate(parts[1:], 1))


# What a unary response starts with; ":status: 200" is entry 8 of HPACK's static table.
RESPONSE_HEAD = b"\x88" + header_block([(b"content-type", b"application/grpc")])
OK_TRAILERS = header_block([(b"grpc-status", b"0")])

_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout in seconds; None for a malformed value (then the call has none)."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def grpc_message(text: str) -> bytes:
    """grpc-message's percent-encoding of UTF-8 text (the gRPC HTTP/2 protocol)."""
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in text.encode())


# Headers that are the transport's, not the call's metadata (grpcio hides them too).
_NOT_METADATA = frozenset((b"te", b"content-type", b"host"))


def call_metadata(headers: Sequence[Header]) -> tuple[tuple[str, str | bytes], ...]:
    """The request metadata a gRPC handler sees: custom and user-agent headers, with
    ``-bin`` values base64-decoded (padded or not, as the protocol allows)."""
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[:1] == b":" or name[:5] == b"grpc-" or name in _NOT_METADATA:
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            try:
                out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4),
                                                  validate=True)))
            except ValueError:
                raise InvalidInput(f"metadata {key!r} is not base64") from None
        else:
            out.append((key, value.decode("latin-1")))
    return tuple(out)


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def metadata_headers(items: Iterable[tuple[str, str | bytes]]) -> list[Header]:
    """Trailing metadata as header fields: ``-bin`` values base64 without padding, others
    checked for what a header value may hold."""
    out = []
    for key, value in items:
        name = key.lower().encode("latin-1")
        if isinstance(value, bytes):
            raw = base64.b64encode(value).rstrip(b"=") if key.endswith("-bin") else value
        else:
            raw = value.encode("latin-1")
        if _CONTROL.search(raw):
            raise ValueError(f"metadata {key!r} holds a control character")
        out.append((name, raw))
    return out


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
