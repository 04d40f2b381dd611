"""The search index beside the log: incremental, rebuilt when missing, never trusted over
the segments. Real files, the real log writer; each test on SQLite and on PostgreSQL (a
database of the test's own)."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from aios.auditindex import INDEX_FILE, AuditIndex, Query, search
from aios.config import DecisionLogSettings
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import DecisionLog


async def write(log_dir: Path, first: int, n: int) -> None:
    settings = DecisionLogSettings.model_validate({"directory": str(log_dir),
                                                   "max_segment_bytes": 4096})
    async with DecisionLog(settings, CollectorRegistry()) as log:
        await log.append_many([DecisionRecord(
            decision_id=f"d-{i}", request_id=f"r-{i}", business_key=f"C-{i % 7}",
            tenant="acme" if i % 2 else "globex", model="claims_risk",
            version=str(1 + i % 2), outcome="ok" if i % 5 else "400",
            time_unix_nanos=1_000_000 + i) for i in range(first, first + n)])


def ids(found: list[DecisionRecord]) -> list[str]:
    return [r.decision_id for r in found]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str | None:
    """Where the index is: None for the SQLite file in the log folder, else a URL."""
    if request.param == "sqlite":
        return None
    given: str = request.getfixturevalue("postgres_url")
    return given


def tamper(directory: Path, url: str | None, statement: str) -> None:
    """What someone who can write the index (not the log) does."""
    if url is None:
        with sqlite3.connect(directory / INDEX_FILE) as db:
            db.execute(statement)
        return
    with psycopg.connect(url) as pg:
        pg.execute(statement)


@pytest.mark.parametrize(("query", "expected"), [
    (Query((("key", "C-3"),), limit=100), [f"d-{i}" for i in range(3, 70, 7)]),
    (Query((("key", "C-3"), ("tenant", "acme")), limit=100), ["d-3", "d-17", "d-31", "d-45",
                                                               "d-59"]),
    (Query((("decision_id", "d-42"),)), ["d-42"]),
    (Query((("request_id", "r-42"),)), ["d-42"]),
    (Query((("model", "claims_risk"), ("version", "2"), ("outcome", "400")), limit=100),
     [f"d-{i}" for i in range(5, 70, 10)]),
    (Query(since_ns=1_000_010, until_ns=1_000_013), ["d-10", "d-11", "d-12"]),
    (Query(limit=5, page=3), ["d-10", "d-11", "d-12", "d-13", "d-14"]),
    (Query((("key", "nobody"),)), []),
])
async def test_search(tmp_path: Path, query: Query, expected: list[str],
                      url: str | None) -> None:
    await write(tmp_path, 0, 70)
    found, total = search(tmp_path, query, url=url)
    assert ids(found) == expected
    if query.limit >= 100:
        assert total == len(expected)


async def test_the_index_grows_with_the_log_and_is_rebuilt_when_deleted(
        tmp_path: Path, url: str | None) -> None:
    await write(tmp_path, 0, 40)
    with AuditIndex(tmp_path, url=url) as index:
        assert index.update() == 40
        assert index.update() == 0
    await write(tmp_path, 40, 25)  # a restart: a new segment
    with AuditIndex(tmp_path, url=url) as index:
        assert index.update() == 25
    tamper(tmp_path, url, "DROP TABLE aios_decisions")
    found, total = search(tmp_path, Query((("key", "C-0"),), limit=100), url=url)
    assert total == 10 and ids(found)[-1] == "d-63"


@pytest.mark.parametrize("statement", [
    "UPDATE aios_decisions SET business_key = 'C-3' WHERE decision_id = 'd-5'",  # false match
    "UPDATE aios_decisions SET at_offset = (SELECT at_offset FROM aios_decisions WHERE "
    "sequence = 2) WHERE decision_id = 'd-3'",  # points at another record
    "DELETE FROM aios_decisions WHERE decision_id = 'd-10'",  # hides one
])
async def test_a_tampered_index_never_changes_what_is_found(
        tmp_path: Path, statement: str, url: str | None) -> None:
    await write(tmp_path, 0, 70)
    honest, _ = search(tmp_path, Query((("key", "C-3"),), limit=100), url=url)
    tamper(tmp_path, url, statement)
    found, total = search(tmp_path, Query((("key", "C-3"),), limit=100), url=url)
    assert ids(found) == ids(honest) and total == len(honest)
    assert all(r.business_key == "C-3" for r in found)
    hidden, _ = search(tmp_path, Query((("decision_id", "d-10"),)), url=url)
    assert ids(hidden) == ["d-10"]


async def test_records_written_after_the_last_update_are_not_called_wrong(
        tmp_path: Path, url: str | None) -> None:
    await write(tmp_path, 0, 30)
    with AuditIndex(tmp_path, url=url) as index:
        index.update()
    await write(tmp_path, 30, 10)  # a live log: the sidecar goes on writing
    with AuditIndex(tmp_path, url=url) as index:
        assert index.check() == 0
        assert index.update() == 10


async def test_a_row_edited_to_hide_a_record_is_found_by_check(
        tmp_path: Path, url: str | None) -> None:
    await write(tmp_path, 0, 70)
    with AuditIndex(tmp_path, url=url) as index:
        index.update()
        assert index.check() == 0
    tamper(tmp_path, url, "UPDATE aios_decisions SET business_key = 'C-0' "
                          "WHERE decision_id = 'd-10'")
    # A search reads only what matches: the edited row hides d-10 from its claim...
    found, _ = search(tmp_path, Query((("key", "C-3"),), limit=100), url=url)
    assert "d-10" not in ids(found)
    with AuditIndex(tmp_path, url=url) as index:
        assert index.check() == 1  # ...until a check, which compares every row
        assert index.check() == 0
    found, _ = search(tmp_path, Query((("key", "C-3"),), limit=100), url=url)
    assert "d-10" in ids(found)


async def test_logs_sharing_a_postgresql_index_keep_apart(tmp_path: Path,
                                                           postgres_url: str) -> None:
    for name, n in (("a", 30), ("b", 12)):
        await write(tmp_path / name, 0, n)
    for name, n in (("a", 30), ("b", 12)):
        found, total = search(tmp_path / name, Query(limit=100), url=postgres_url,
                              log=f"sidecar-{name}")
        assert total == n and ids(found) == [f"d-{i}" for i in range(n)]


async def test_indexers_meeting_a_fresh_database_all_open_it(tmp_path: Path,
                                                            postgres_url: str) -> None:
    await write(tmp_path, 0, 5)

    def search_once(_: int) -> int:
        return search(tmp_path, Query(limit=100), url=postgres_url)[1]

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(search_once, range(6))) == [5] * 6
