"""Review stores, SQLite and PostgreSQL, on the same tests: items kept, listed in review
order, changed by compare-and-set (two deciders at once: exactly one wins), gates by
revision, and a store that cannot be reached answering 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aios.errors import Conflict, NotFound, StoreUnavailable
from aios.reviewqueue import Item, claim, decide, mark, new_item
from aios.reviewstore import (
    PING_AFTER_IDLE_S,
    GateRevision,
    SqlReviewStore,
    open_review_store,
)
from tests.postgres import PostgresServer

S = 1_000_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlReviewStore]:
    url = str(tmp_path / "reviews.db") if request.param == "sqlite" else \
        request.getfixturevalue("postgres_url")
    opened = open_review_store(url)
    yield opened
    opened.close()


def item(n: int, gate: str = "unsure", priority: int = 0, at: int = 0) -> Item:
    return new_item(id=f"R{n:03d}", decision_id=f"D{n:03d}", model="claims_risk",
                    version="1", gate=gate, priority=priority, sla_s=60, now_ns=at or n * S,
                    source="decisions", tenant="acme", business_key=f"CLM-{n}",
                    inputs={"features": {"rows": [{"age": {"value": 40}}]}},
                    outputs={"risk_score": [0.5]})


def test_items_are_kept_once_and_listed_most_urgent_then_oldest(store: SqlReviewStore) -> None:
    store.add([item(1), item(2, priority=5), item(3, gate="big")])
    store.add([item(1)])  # again: kept once
    assert [i.id for i in store.items(None, None, None, 10, 0)] == ["R002", "R001", "R003"]
    assert [i.id for i in store.items(None, "big", None, 10, 0)] == ["R003"]
    assert [i.id for i in store.items(None, None, None, 10, 0, tenant="acme")] == [
        "R002", "R001", "R003"]
    assert store.items(None, None, None, 10, 0, tenant="globex") == []
    assert store.get("R001") == item(1)
    assert [i.id for i in store.by_decision("D002")] == ["R002"]
    assert store.get("nope") is None


def test_a_claim_past_its_lease_lists_as_pending(store: SqlReviewStore) -> None:
    store.add([item(1), item(2)])
    store.change("R001", lambda i: claim(i, "ann", 10 * S, 5))
    assert [i.id for i in store.items("claimed", None, None, 10, 12 * S)] == ["R001"]
    assert [i.id for i in store.items("pending", None, None, 10, 12 * S)] == ["R002"]
    assert [i.id for i in store.items("pending", None, None, 10, 15 * S)] == ["R001", "R002"]


def test_two_deciders_at_once_exactly_one_wins(store: SqlReviewStore) -> None:
    store.add([item(n) for n in range(1, 6)])
    for n in range(1, 6):
        start = threading.Barrier(2)
        outcomes: list[str] = []

        def decider(who: str, rid: str = f"R{n:03d}", start: threading.Barrier = start,
                    outcomes: list[str] = outcomes) -> None:
            start.wait()
            try:
                store.change(rid, lambda i: decide(i, who, 20 * S, "approve", ""))
                outcomes.append("won")
            except Conflict as exc:
                outcomes.append(exc.message)

        threads = [threading.Thread(target=decider, args=(w,)) for w in ("ann", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes)[1] == "won" and "already decided" in sorted(outcomes)[0], \
            outcomes
        got = store.get(f"R{n:03d}")
        assert got is not None and got.state == "decided"
        assert [t.action for t in got.history].count("approve") == 1


def test_unfinished_are_the_sources_decided_items_not_yet_announced(
        store: SqlReviewStore) -> None:
    store.add([item(1), item(2), item(3)])
    store.change("R001", lambda i: decide(i, "ann", 5 * S, "approve", ""))
    store.change("R002", lambda i: decide(i, "ann", 6 * S, "approve", ""))
    store.change("R002", lambda i: mark(i, "chained", 7 * S))
    assert [(i.id, i.chained) for i in store.unfinished("decisions", 10)] == [
        ("R001", False), ("R002", True)]
    store.change("R002", lambda i: mark(i, "announced", 8 * S))
    assert [i.id for i in store.unfinished("decisions", 10)] == ["R001"]
    assert store.unfinished("other-sidecar", 10) == []


def test_stats_count_the_queue(store: SqlReviewStore) -> None:
    store.add([item(1), item(2, gate="big"), item(3), item(4)])
    store.change("R003", lambda i: decide(i, "ann", 13 * S, "approve", ""))
    store.change("R004", lambda i: decide(i, "ann", 24 * S, "override", "no",
                                          {"risk_score": [1.0]}))
    stats = store.stats(100 * S)
    assert stats.open_by_gate == {"unsure": 1, "big": 1}
    assert stats.oldest_open_ns == {"unsure": 1 * S, "big": 2 * S}
    assert stats.decided_by_action == {"approve": 1, "override": 1}
    assert sorted(stats.decision_seconds) == [10.0, 20.0]


def test_change_of_a_missing_item_is_not_found(store: SqlReviewStore) -> None:
    with pytest.raises(NotFound, match="no review 'R999'"):
        store.change("R999", lambda i: i)


def test_gates_are_revisions_each_on_the_one_before(store: SqlReviewStore) -> None:
    assert store.gates("claims_risk") is None
    first = GateRevision("claims_risk", 1, {"gates": []}, "ann", "start", 1)
    store.set_gates(first, 0)
    with pytest.raises(Conflict, match="are at revision 1, not 0"):
        store.set_gates(GateRevision("claims_risk", 1, {}, "bob", "", 2), 0)
    store.set_gates(GateRevision("claims_risk", 2, {"mode": "hold"}, "bob", "hold", 3), 1)
    store.set_gates(GateRevision("other", 1, {}, "bob", "", 4), 0)
    latest = store.gates("claims_risk")
    assert latest is not None and (latest.revision, latest.doc, latest.who) == (
        2, {"mode": "hold"}, "bob")
    assert {m: g.revision for m, g in store.all_gates().items()} == {"claims_risk": 2,
                                                                      "other": 1}


def test_an_unreachable_postgres_is_503_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable, match="review store unavailable"):
        open_review_store("postgresql://postgres@127.0.0.1:1/none")


def test_the_first_call_after_a_postgres_restart_reconnects() -> None:
    server = PostgresServer()
    try:
        server.start()
        opened = open_review_store(server.url)
        opened.add([item(1)])
        server.stop()
        server.start()  # the store's connection is dead now, and it does not know
        time.sleep(PING_AFTER_IDLE_S)
        got = opened.get("R001")  # no 503: the idle connection was checked first
        assert got is not None and got.id == "R001"
        opened.close()
    finally:
        server.remove()


def test_sqlite_items_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    first = open_review_store(str(path))
    first.add([item(1)])
    first.change("R001", lambda i: claim(i, "ann", 0, 60))
    first.close()
    again = open_review_store(str(path))
    got = again.get("R001")
    assert got is not None and (got.claimed_by, got.revision) == ("ann", 1)
    again.close()
