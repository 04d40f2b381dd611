"""The decision log's on-disk format and hash chain. Pure functions, no I/O.

A segment file is a sequence of frames: a 4-byte big-endian length, then a
`DecisionRecord` in deterministic protobuf encoding. Each record carries the previous
record's hash and its own: SHA-256(prev_hash || encoding of the record with `hash`
empty). Editing a byte, removing, reordering or inserting a record breaks the chain.
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
    """One frame read back: its offset, and its record (None if it is cut short)."""

    offset: int
    record: DecisionRecord | None
    error: str = ""


def read_frames(data: bytes) -> Iterator[Frame]:
    """The frames of a segment; a frame cut off by the end of the data comes last, empty."""
    pos = 0
    while pos < len(data):
        if pos + _LEN.size > len(data):
            yield Frame(pos, None, "truncated")
            return
        (length,) = _LEN.unpack_from(data, pos)
        if length > MAX_RECORD_BYTES:
            yield Frame(pos, None, f"impossible record length {length}")
            return
        end = pos + _LEN.size + length
        if end > len(data):
            yield Frame(pos, None, "truncated")
            return
        record = DecisionRecord()
        try:
            record.ParseFromString(data[pos + _LEN.size:end])
        except DecodeError:
            yield Frame(pos, None, "undecodable record")
            return
        yield Frame(pos, record)
        pos = end
