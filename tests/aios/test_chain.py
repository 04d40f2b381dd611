"""The segment format read back: zeros filled ahead, torn writes told from edits."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aios.chain import GENESIS, SECTOR, read_frames, seal
from proto.decision_record_pb2 import DecisionRecord


def segment(n: int, tensor: bytes = b"\x01" * 1500) -> tuple[bytes, list[int]]:
    """``n`` sealed records (each with a 1,500-byte tensor, so a frame spans sectors),
    and each frame's offset."""
    data, offsets, prev = b"", [], GENESIS
    for i in range(n):
        record = DecisionRecord(request_id=f"req-{i}")
        record.inputs.add(name="x", datatype="BYTES", contents=tensor)
        offsets.append(len(data))
        data += seal(record, i + 1, prev)
        prev = record.hash
    return data, offsets


def sequences(data: bytes, base: int = 0) -> list[int]:
    return [f.record.sequence for f in read_frames(data, base) if f.record is not None]


def test_the_zeros_filled_ahead_end_the_frames_silently() -> None:
    data, _ = segment(3)
    frames = list(read_frames(data + bytes(1 << 20)))
    assert [f.record.sequence for f in frames if f.record] == [1, 2, 3]
    assert all(f.record is not None for f in frames)


def test_a_record_whose_own_bytes_end_in_zeros_is_read_whole() -> None:
    # A frame ends with its hash, whose last byte can be zero: the zeros filled ahead
    # begin where a frame would, not where the non-zero bytes stop.
    record = next(r for r in (DecisionRecord(request_id=f"r{i}") for i in range(10_000))
                  if seal(r, 1, GENESIS)[-1] == 0)
    frame = seal(record, 1, GENESIS)
    assert sequences(frame) == sequences(frame + bytes(4096)) == [1]


def _sector_at(start: int) -> int:
    """The first whole sector at or after ``start``."""
    return -(-start // SECTOR) * SECTOR


# Each damage returns the damaged bytes and where the damage starts.
Damage = Callable[[bytes, list[int]], tuple[bytes, int]]


def zero_the_sector_of_a_length(data: bytes, offsets: list[int]) -> tuple[bytes, int]:
    # The sector holding frame 3's length word never reached the disk; the rest did.
    at = offsets[2] - offsets[2] % SECTOR
    return data[:at] + bytes(SECTOR) + data[at + SECTOR:], at


def zero_a_sector_of_a_tensor(data: bytes, offsets: list[int]) -> tuple[bytes, int]:
    # Zeros inside a tensor's bytes still parse: only the hash tells.
    at = _sector_at(offsets[2] + 64)
    return data[:at] + bytes(SECTOR) + data[at + SECTOR:], at


def cut_mid_frame(data: bytes, offsets: list[int]) -> tuple[bytes, int]:
    return data[:offsets[2] + 700], offsets[2] + 700


TORN: dict[str, Damage] = {
    "the sector of a length word zero": zero_the_sector_of_a_length,
    "a sector of a tensor zero": zero_a_sector_of_a_tensor,
    "cut by the end of the file": cut_mid_frame,
}


@pytest.mark.parametrize("damage", TORN.values(), ids=TORN.keys())
def test_a_torn_write_reads_as_torn(damage: Damage) -> None:
    data, offsets = segment(5)
    damaged, at = damage(data, offsets)
    frames = list(read_frames(damaged + bytes(2 * SECTOR)))
    whole = [i + 1 for i, end in enumerate([*offsets[1:], len(data)]) if end <= at]
    assert [f.record.sequence for f in frames if f.record is not None] == whole
    assert frames[-1].record is None and frames[-1].torn, frames[-1]
    assert frames[-1].offset == offsets[len(whole)]


def flip_a_tag(data: bytes, offsets: list[int]) -> bytes:
    at = offsets[2] + 4  # the first field's tag: field 0 does not parse
    return data[:at] + b"\x00" + data[at + 1:]


def an_impossible_length(data: bytes, offsets: list[int]) -> bytes:
    return data[:offsets[2]] + b"\xff\xff\xff\xff" + data[offsets[2] + 4:]


def an_empty_record(data: bytes, offsets: list[int]) -> bytes:
    return data[:offsets[2]] + bytes(4) + data[offsets[2] + 4:]


EDITED: dict[str, tuple[Callable[[bytes, list[int]], bytes], str]] = {
    "a tag zeroed": (flip_a_tag, "undecodable record"),
    "an impossible length": (an_impossible_length, "impossible record length 4294967295"),
    "a zero length before records": (an_empty_record, "empty record"),
}


@pytest.mark.parametrize(("damage", "error"), EDITED.values(), ids=EDITED.keys())
def test_an_edit_in_place_is_not_torn(damage: Callable[[bytes, list[int]], bytes],
                                      error: str) -> None:
    data, offsets = segment(5)
    frames = list(read_frames(damage(data, offsets)))
    assert [f.record.sequence for f in frames if f.record is not None] == [1, 2]
    assert (frames[-1].offset, frames[-1].error, frames[-1].torn) == (offsets[2], error, False)


def test_sectors_are_aligned_in_the_file_not_in_the_data() -> None:
    # A record may hold 512 zero bytes: they make a frame torn only where they fill a
    # sector of the file, which depends on where the data starts in it (``base``).
    data, offsets = segment(5, tensor=b"\x01" * 700 + bytes(SECTOR) + b"\x01" * 700)
    damaged = flip_a_tag(data, offsets)
    run = damaged.index(bytes(SECTOR), offsets[2])
    aligned, unaligned = (-run) % SECTOR, (1 - run) % SECTOR
    assert list(read_frames(damaged, aligned))[-1].torn
    last = list(read_frames(damaged, unaligned))[-1]
    assert (last.offset, last.error, last.torn) == (offsets[2], "undecodable record", False)
    # Intact frames with such zeros read whole either way (their hash holds).
    assert sequences(data, aligned) == sequences(data, unaligned) == [1, 2, 3, 4, 5]
