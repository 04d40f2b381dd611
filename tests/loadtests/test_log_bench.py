"""The log's micro benchmark measures what it says, in both modes (a short run each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aios.auditlog import verify
from loadtests.log_bench import measure


@pytest.mark.parametrize(("mode", "per_append"), [("sync", 1), ("sync", 6), ("async", 6)])
def test_every_record_is_counted_and_written(tmp_path: Path, mode: str,
                                            per_append: int) -> None:
    figures = asyncio.run(measure(tmp_path, mode, 2, 0.3, None, per_append))
    report = verify(tmp_path)
    assert report.intact, report.problem
    assert report.records == figures.records > 0
    assert figures.records % per_append == 0
    assert 0 < figures.p50_s <= figures.p99_s
    assert 0 < figures.loop_cpu_s <= figures.cpu_s
