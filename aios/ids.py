"""Identifiers a caller is given for a call: ULIDs (time-ordered, 26 characters)."""

from __future__ import annotations

import random
import time

# Crockford's base32, as ULIDs spell it; a table of every pair of characters (10 bits).
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def new_ulid(now_ms: int | None = None) -> str:
    """48 bits of milliseconds, then 80 random bits: unique, sortable by time, not
    secret (`random`, not `secrets`: one getrandom syscall per call would cost more)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | random.getrandbits(80)
    p = _PAIRS
    # 26 characters carry 130 bits: the value's 128 behind two zero bits.
    return "".join((p[value >> 120], p[value >> 110 & 1023], p[value >> 100 & 1023],
                    p[value >> 90 & 1023], p[value >> 80 & 1023], p[value >> 70 & 1023],
                    p[value >> 60 & 1023], p[value >> 50 & 1023], p[value >> 40 & 1023],
                    p[value >> 30 & 1023], p[value >> 20 & 1023], p[value >> 10 & 1023],
                    p[value & 1023]))


def ulid_time_ms(ulid: str) -> int:
    """The milliseconds a ULID was made at; ValueError if it is not one."""
    if len(ulid) != 26:
        raise ValueError(f"not a ULID: {ulid!r}")
    value = 0
    for char in ulid.upper():
        digit = _ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"not a ULID: {ulid!r}")
        value = value << 5 | digit
    return value >> 80
