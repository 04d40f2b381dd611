"""The search index beside the log: incremental, rebuilt when missing, never trusted over
the segments. Real files, the real log writer, SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
async def test_search(tmp_path: Path, query: Query, expected: list[str]) -> None:
    await write(tmp_path, 0, 70)
    found, total = search(tmp_path, query)
    assert ids(found) == expected
    if query.limit >= 100:
        assert total == len(expected)


async def test_the_index_grows_with_the_log_and_is_rebuilt_when_deleted(tmp_path: Path) -> None:
    await write(tmp_path, 0, 40)
    with AuditIndex(tmp_path) as index:
        assert index.update() == 40
        assert index.update() == 0
    await write(tmp_path, 40, 25)  # a restart: a new segment
    with AuditIndex(tmp_path) as index:
        assert index.update() == 25
    (tmp_path / INDEX_FILE).unlink()
    found, total = search(tmp_path, Query((("key", "C-0"),), limit=100))
    assert total == 10 and ids(found)[-1] == "d-63"


@pytest.mark.parametrize("tamper", [
    "UPDATE decisions SET business_key = 'C-3' WHERE decision_id = 'd-5'",  # a false match
    "UPDATE decisions SET offset = (SELECT offset FROM decisions WHERE sequence = 2) "
    "WHERE decision_id = 'd-3'",  # points at another record
    "DELETE FROM decisions WHERE decision_id = 'd-10'",  # hides one
])
async def test_a_tampered_index_never_changes_what_is_found(tmp_path: Path, tamper: str) -> None:
    await write(tmp_path, 0, 70)
    honest, _ = search(tmp_path, Query((("key", "C-3"),), limit=100))
    db = sqlite3.connect(tmp_path / INDEX_FILE)
    db.execute(tamper)
    db.commit()
    db.close()
    found, total = search(tmp_path, Query((("key", "C-3"),), limit=100))
    assert ids(found) == ids(honest) and total == len(honest)
    assert all(r.business_key == "C-3" for r in found)
    hidden, _ = search(tmp_path, Query((("decision_id", "d-10"),)))
    assert ids(hidden) == ["d-10"]
