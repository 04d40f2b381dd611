"""The audit search benchmark, small: it writes a log that verifies and times searches
that find what they look for."""

from __future__ import annotations

from pathlib import Path

from aios.auditindex import Query, search
from aios.auditlog import verify
from loadtests.audit_search import claim_id, markdown, run, write_log


def test_the_benchmark_log_is_a_real_log(tmp_path: Path) -> None:
    write_log(tmp_path, 500)
    assert verify(tmp_path).records == 500
    found, total = search(tmp_path, Query((("key", claim_id(300)),)))
    assert [r.sequence for r in found] == [301, 302, 303] and total == 3


def test_the_benchmark_reports_each_search(tmp_path: Path) -> None:
    result = run(tmp_path / "log", 2000, 3)
    assert result["records"] == 2000 and len(result["searches"]) == 5
    assert all(r["median_ms"] > 0 for r in result["searches"].values())
    assert markdown(result).splitlines()[0].startswith("2,000 records")
