"""The review API's query parsing and figures (the endpoints run in tests/e2e)."""

from __future__ import annotations

import pytest

from aios.errors import InvalidInput
from aios.reviewstore import Stats
from gateway.review import parse_listing, stats_json

S = 1_000_000_000


@pytest.mark.parametrize(("params", "expected"), [
    ({}, (None, None, None, 50)),
    ({"state": "pending", "gate": "unsure", "model": "m", "limit": "7"},
     ("pending", "unsure", "m", 7)),
])
def test_listing_queries(params: dict[str, str],
                         expected: tuple[object, ...]) -> None:
    assert parse_listing(params) == expected


@pytest.mark.parametrize(("params", "message"), [
    ({"state": "open"}, "state: must be one of pending, claimed, decided, got 'open'"),
    ({"limit": "1001"}, "limit: must be an integer between 1 and 1000"),
    ({"limit": "-1"}, "limit: must be an integer between 1 and 1000"),
    ({"order": "age"}, "order: unknown parameter (state, gate, model, limit)"),
])
def test_bad_listing_queries_name_the_parameter(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_listing(params)
    assert caught.value.message == message


def test_figures_give_the_override_rate_and_time_to_decision() -> None:
    doc = stats_json(Stats({"unsure": 3}, {"unsure": 40 * S}, {"approve": 3, "override": 1},
                           [10.0, 20.0, 30.0, 40.0]), 100 * S)
    assert doc == {"open": {"unsure": 3}, "oldest_open_s": {"unsure": 60.0},
                   "decided": {"approve": 3, "override": 1}, "override_rate": 0.25,
                   "time_to_decision_s": {"p50": 25.0, "p95": 38.5, "mean": 25.0,
                                          "decisions": 4}}
    assert stats_json(Stats({}, {}, {}, []), 0)["override_rate"] is None
