"""Decision and request ids: ULIDs."""

from __future__ import annotations

import re

import pytest

from aios.ids import new_ulid, ulid_time_ms

ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def test_a_ulid_carries_its_time_and_sorts_by_it() -> None:
    ids = [new_ulid(now_ms=ms) for ms in (1, 1_796_125_152_507, 2**48 - 1)]
    assert all(ULID.fullmatch(i) for i in ids)
    assert [ulid_time_ms(i) for i in ids] == [1, 1_796_125_152_507, 2**48 - 1]
    assert ids == sorted(ids)
    assert new_ulid(now_ms=0).startswith("0000000000")


def test_ulids_of_one_millisecond_differ() -> None:
    assert len({new_ulid(now_ms=5) for _ in range(10_000)}) == 10_000


def test_the_spec_example_decodes() -> None:
    # The ULID specification's own example.
    assert ulid_time_ms("01ARZ3NDEKTSV4RRFFQ69G5FAV") == 1469922850259


@pytest.mark.parametrize("text", ["", "01ARZ3NDEKTSV4RRFFQ69G5FA", "01ARZ3NDEKTSV4RRFFQ69G5FAU!"])
def test_what_is_not_a_ulid_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a ULID"):
        ulid_time_ms(text)
