"""HTTP/2 and gRPC wire pieces, without sockets."""

from __future__ import annotations

import hpack
import pytest

from aios import h2frames as f
from aios.errors import InvalidInput


def test_frames_are_cut_whole_and_the_rest_is_left() -> None:
    one = f.frame(f.DATA, f.END_STREAM, 1, b"abc")
    two = f.frame(f.PING, 0, 0, b"12345678")
    buf = bytearray(one + two + two[:5])
    frames, used = f.cut_frames(buf, f.DEFAULT_MAX_FRAME)
    assert frames == [f.Frame(f.DATA, f.END_STREAM, 1, b"abc"),
                      f.Frame(f.PING, 0, 0, b"12345678")]
    assert used == len(one + two)


def test_the_reserved_stream_bit_is_ignored() -> None:
    raw = bytearray(f.frame(f.DATA, 0, 3, b"x"))
    raw[5] |= 0x80
    assert f.cut_frames(raw, 100)[0][0].stream == 3


def test_a_frame_beyond_the_advertised_size_is_a_frame_size_error() -> None:
    with pytest.raises(f.FrameError) as caught:
        f.cut_frames(bytearray(f.frame(f.DATA, 0, 1, b"x" * 101)), 100)
    assert (caught.value.code, caught.value.reason) == (
        f.FRAME_SIZE_ERROR, "a 101-byte frame exceeds 100")


@pytest.mark.parametrize(("payload", "flags", "fragment"), [
    (b"block", 0, b"block"),
    (b"\x02block\x00\x00", f.PADDED, b"block"),
    (b"\x00\x00\x00\x01\x10block", f.PRIORITY_FLAG, b"block"),
    (b"\x01\x00\x00\x00\x01\x10block\x00", f.PADDED | f.PRIORITY_FLAG, b"block"),
])
def test_header_fragments_lose_padding_and_priority(payload: bytes, flags: int,
                                                    fragment: bytes) -> None:
    assert f.header_fragment(payload, flags) == fragment


@pytest.mark.parametrize(("payload", "flags", "reason"), [
    (b"\x05ab", f.PADDED, "padding exceeds the frame"),
    (b"", f.PADDED, "padding exceeds the frame"),
    (b"\x00\x00", f.PRIORITY_FLAG, "HEADERS too short for its priority"),
])
def test_malformed_header_frames_are_connection_errors(payload: bytes, flags: int,
                                                       reason: str) -> None:
    with pytest.raises(f.FrameError, match=reason):
        f.header_fragment(payload, flags)


@pytest.mark.parametrize(("payload", "code", "reason"), [
    (b"\x00\x04\x00", f.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6"),
    (f.settings_payload({f.INITIAL_WINDOW_SIZE: 2**31}), f.FLOW_CONTROL_ERROR,
     "INITIAL_WINDOW_SIZE above 2^31-1"),
    (f.settings_payload({f.MAX_FRAME_SIZE: 100}), f.PROTOCOL_ERROR,
     "MAX_FRAME_SIZE out of range"),
    (f.settings_payload({f.MAX_FRAME_SIZE: 2**24}), f.PROTOCOL_ERROR,
     "MAX_FRAME_SIZE out of range"),
    (f.settings_payload({f.ENABLE_PUSH: 2}), f.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1"),
])
def test_bad_settings_are_named(payload: bytes, code: int, reason: str) -> None:
    with pytest.raises(f.FrameError) as caught:
        f.parse_settings(payload)
    assert (caught.value.code, caught.value.reason) == (code, reason)


def test_settings_round_trip() -> None:
    values = {f.INITIAL_WINDOW_SIZE: 1 << 20, f.MAX_FRAME_SIZE: 1 << 15, 99: 7}
    assert f.parse_settings(f.settings_payload(values)) == values


@pytest.mark.parametrize("value", [0, 1, 14, 15, 126, 127, 128, 300, 16_383, 70_000])
def test_header_blocks_decode_with_hpack(value: int) -> None:
    headers = [(b"grpc-status", b"0"), (b"x-long", b"v" * value), (b"k" * value, b"")]
    decoded = hpack.Decoder(max_header_list_size=1 << 20).decode(
        f.header_block(headers), raw=True)
    assert [tuple(h) for h in decoded] == headers


def test_the_constant_blocks_say_what_they_mean() -> None:
    decoder = hpack.Decoder()
    assert [tuple(h) for h in decoder.decode(f.RESPONSE_HEAD, raw=True)] == [
        (b":status", b"200"), (b"content-type", b"application/grpc")]
    assert [tuple(h) for h in decoder.decode(f.OK_TRAILERS, raw=True)] == [
        (b"grpc-status", b"0")]


def test_a_block_longer_than_a_frame_goes_on_in_continuations() -> None:
    block = b"x" * 40
    raw = bytearray(f.frames_for_block(5, block, True, 16))
    frames, used = f.cut_frames(raw, 16)
    assert used == len(raw)
    assert [(fr.type, fr.flags) for fr in frames] == [
        (f.HEADERS, f.END_STREAM), (f.CONTINUATION, 0), (f.CONTINUATION, f.END_HEADERS)]
    assert b"".join(fr.payload for fr in frames) == block


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1S", 1.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0), (b"99999999n", 0.099999999),
    (b"5u", 5e-6), (b"", None), (b"1s", None), (b"123456789S", None), (b"-1S", None),
    (b"1.5S", None),
])
def test_grpc_timeouts(value: bytes, seconds: float | None) -> None:
    assert f.parse_timeout(value) == (pytest.approx(seconds) if seconds else None)


def test_grpc_messages_are_percent_encoded() -> None:
    assert f.grpc_message("bad % input: ü\n") == b"bad %25 input: %C3%BC%0A"


def test_call_metadata_leaves_out_the_transports_headers_and_decodes_binary() -> None:
    headers = [(b":path", b"/s/M"), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
               (b"grpc-timeout", b"1S"), (b"user-agent", b"ua"), (b"authorization", b"Bearer t"),
               (b"k-bin", b"/wA"), (b"p-bin", b"/wA=")]
    assert f.call_metadata(headers) == (("user-agent", "ua"), ("authorization", "Bearer t"),
                                        ("k-bin", b"\xff\x00"), ("p-bin", b"\xff\x00"))


def test_binary_metadata_that_is_not_base64_is_refused() -> None:
    with pytest.raises(InvalidInput, match="metadata 'k-bin' is not base64"):
        f.call_metadata([(b"k-bin", b"!!!")])


def test_trailing_metadata_is_encoded_and_control_characters_refused() -> None:
    assert f.metadata_headers([("X-Route", "stable"), ("id-bin", b"\xff\x00")]) == [
        (b"x-route", b"stable"), (b"id-bin", b"/wA")]
    with pytest.raises(ValueError, match="metadata 'x' holds a control character"):
        f.metadata_headers([("x", "a\r\nb")])


@pytest.mark.parametrize("value", ["\x00", "a\x1fb", "\x7f", b"\x00-raw"])
def test_each_control_character_in_trailing_metadata_is_refused(value: str | bytes) -> None:
    with pytest.raises(ValueError, match="metadata 'k' holds a control character"):
        f.metadata_headers([("k", value)])


def test_the_edges_of_printable_metadata_pass() -> None:
    assert f.metadata_headers([("k", " ~\x80")]) == [(b"k", b" ~\x80")]


def test_grpc_frames_are_length_prefixed() -> None:
    assert f.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


@pytest.mark.parametrize(("block", "leaves"), [
    (b"", True),
    (b"\x82\x86\x84", True),                  # static-table entries
    (b"\xbe\xff\x00\xff\x81\x01", True),      # indexes beyond the 7-bit prefix
    (b"\x82\x00\x01a\x01b", True),           # a literal not indexed, new name
    (b"\x82\x14\x01b", True),                # never indexed, name from the table
    (b"\x0f\x2f\x01b", True),                # not indexed, name index beyond 4 bits
    (b"\x00\x81\xff\x01b", True),             # a Huffman-coded name
    (b"\x82\x40\x01a\x01b", False),          # a literal that enters the table
    (b"\x3f\xe1\x1f", False),                # a table size update
    (b"\x82\x00\x05a", False),               # truncated
    (b"\xff", False),                        # an index cut off
])
def test_blocks_that_leave_the_table_are_told_apart(block: bytes, leaves: bool) -> None:
    assert f.leaves_table(block) is leaves


def test_an_encoders_repeated_block_leaves_the_table_the_second_time() -> None:
    encoder = hpack.Encoder()
    headers = [(b":path", b"/t.T/M"), (b"authorization", b"Bearer t")]
    first, second = encoder.encode(headers), encoder.encode(headers)
    assert (f.leaves_table(first), f.leaves_table(second)) == (False, True)
