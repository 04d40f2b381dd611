"""`aios routes`' tables for people: what each change moved, and how long ago."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aios_cli.routes_cli import diff, history_text, tables_text

ROUTE = {"targets": {"stable": {"backend": "local", "version": "1", "weight": 90},
                     "canary": {"backend": "local", "version": "2", "weight": 10}},
         "sticky": "header:x-claim-id", "shadow": None}


def moved(**weights: int) -> dict[str, Any]:
    return {**ROUTE, "targets": {n: {**t, "weight": weights.get(n, t["weight"])}
                                 for n, t in ROUTE["targets"].items()}}


@pytest.mark.parametrize(("before", "after", "said"), [
    (None, ROUTE, "created: stable=90, canary=10"),
    (ROUTE, moved(stable=70, canary=30), "canary weight 10->30, stable weight 90->70"),
    (ROUTE, {**ROUTE, "targets": {"stable": ROUTE["targets"]["stable"]}}, "-canary"),
    (ROUTE, {**ROUTE, "shadow": {"backend": "local", "model": "", "version": "1",
                                 "fraction": 0.1}}, "shadow -->local/- v1 10%"),
    (ROUTE, {**ROUTE, "sticky": "tenant"}, "sticky header:x-claim-id->tenant"),
    (ROUTE, ROUTE, "no change"),
])
def test_a_change_is_said_briefly(before: dict[str, Any] | None, after: dict[str, Any],
                                  said: str) -> None:
    assert diff(before, after) == said


def test_history_rows_say_when_who_and_why() -> None:
    text = history_text([{"at": 1000.0, "model": "claims_risk", "revision": 3, "who": "ops",
                          "action": "set_weights", "before": ROUTE,
                          "after": moved(canary=20, stable=80), "reason": "canary healthy"}],
                        now=1000.0 + 7200 + 300)
    header, row = text.splitlines()
    assert header.split() == ["WHEN", "MODEL", "REV", "WHO", "ACTION", "CHANGE", "REASON"]
    assert row.startswith("2h05m ago  claims_risk  3    ops  set_weights")
    assert row.endswith("canary weight 10->20, stable weight 90->80  canary healthy")


def test_tables_have_a_row_per_target_and_say_ejected() -> None:
    doc = {"model": "claims_risk", "revision": 4, **copy.deepcopy(ROUTE)}
    doc["targets"]["canary"]["ejected"] = True
    rows = tables_text([doc]).splitlines()
    assert [r.split()[2] for r in rows[1:]] == ["stable", "canary"]
    assert rows[2].split()[6] == "EJECTED"
    assert tables_text([]) == "no routing tables"
