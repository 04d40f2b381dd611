"""The decision log's on-disk format and hash chain. Pure functions, no I/O.

A segment file is a sequence of frames: a 4-byte big-endian length, then a
`DecisionRecord` in deterministic protobuf encoding. Each record carries the previous
record's hash and its own: SHA-256(prev_hash || encoding of the record with `hash`
empty). Editing a byte, removing, reordering or inserting a record breaks the chain.

The writer fills a segment with zeros ahead of its records (an `fdatasync` of blocks
already written skips the file system's extent and size updates), so a segment may end
in zeros: the frames end where only zeros are left. A write a crash interrupted leaves
its frames cut short by the end of the file or holding zeros where some of its sectors
never reached the disk: such a frame is *torn*, which a reader tells from a frame
altered in place (no sector of which is all zeros).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from proto.decision_record_pb2 import DecisionRecord

GENESIS = bytes(32)
_LEN = struct.Struct(">I")
MAX_RECORD_BYTES = 64 * 1024 * 1024
# The unit a disk writes whole: an interrupted write leaves each sector old or new.
SECTOR = 512


def record_hash(record: DecisionRecord) -> bytes:
    """The hash a record must carry, given its prev_hash and content."""
    unsealed = DecisionRecord()
    unsealed.CopyFrom(record)
    unsealed.ClearField("hash")
    prev: bytes = record.prev_hash
    return hashlib.sha256(prev + unsealed.SerializeToString(deterministic=True)).digest()


# A sealed frame is the unsealed encoding with the `hash` field appended (a parser takes
# fields in any order), so the record is encoded once.
_HASH_FIELD = bytes((DecisionRecord.HASH_FIELD_NUMBER << 3 | 2, 1, 32))


def seal(record: DecisionRecord, sequence: int, prev_hash: bytes) -> bytes:
    """Chain ``record`` after ``prev_hash`` as number ``sequence``; return its frame."""
    record.sequence = sequence
    record.prev_hash = prev_hash
    record.ClearField("hash")
    body: bytes = record.SerializeToString(deterministic=True)
    digest = hashlib.sha256(prev_hash + body).digest()
    record.hash = digest
    payload = body + _HASH_FIELD + digest
    return _LEN.pack(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame read back: its offset, and its record (None if it is unreadable, with
    why, and whether a crash's interrupted write explains it)."""

    offset: int
    record: DecisionRecord | None
    error: str = ""
    torn: bool = False


def read_frames(data: bytes, base: int = 0) -> Iterator[Frame]:
    """The frames of a segment's bytes from file offset ``base``; they end at the end of
    the data or where only zeros are left; an unreadable frame comes last."""
    pos, size = 0, len(data)
    while pos < size:
        if pos + _LEN.size > size:
            yield Frame(pos, None, "truncated", torn=True)
            return
        (length,) = _LEN.unpack_from(data, pos)
        if length == 0 and data.count(0, pos) == size - pos:
            return  # the zeros the writer filled ahead
        end = pos + _LEN.size + length
        if length == 0 or length > MAX_RECORD_BYTES:
            error = "empty record" if length == 0 else f"impossible record length {length}"
            yield Frame(pos, None, error, _zeroed(data, base, pos, min(end, size)))
            return
        if end > size:
            yield Frame(pos, None, "truncated", torn=True)
            return
        record = DecisionRecord()
        try:
            record.ParseFromString(data[pos + _LEN.size:end])
        except DecodeError:
            yield Frame(pos, None, "undecodable record", _zeroed(data, base, pos, end))
            return
        # A zeroed sector can also fall inside a field and still parse: such a record is
        # taken only if its hash holds.
        if _zeroed(data, base, pos, end) and record_hash(record) != record.hash:
            yield Frame(pos, None, "content altered (hash mismatch)", torn=True)
            return
        yield Frame(pos, record)
        pos = end


def _zeroed(data: bytes, base: int, start: int, end: int) -> bool:
    """Whether a sector (aligned in the file, whole within ``data`` or cut by its end)
    overlapping ``data[start:end]`` is all zeros."""
    first = start - (base + start) % SECTOR
    if first < 0:
        first += SECTOR
    for sector in range(first, end, SECTOR):
        stop = min(sector + SECTOR, len(data))
        if data.count(0, sector, stop) == stop - sector:
            return True
    return False
