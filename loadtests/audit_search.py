"""How fast `aios audit search` answers on a large decision log.

Writes a log of ``--records`` decisions shaped like the claims model's (8 features in, a
score out, a claim id, two tenants, two versions), builds the index once (timed), then
times each kind of search `--repeat` times against it and prints the median and the
slowest, in milliseconds, with the goal (< 100 ms at 1,000,000 records).

    python -m loadtests.audit_search [--records 1000000] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aios.auditindex import AuditIndex, Query, search
from aios.chain import GENESIS, seal
from proto.decision_record_pb2 import DecisionRecord
from sidecar.records import add_tensor

GOAL_MS = 100.0
SEGMENT_RECORDS = 200_000
START_NS = 1_796_000_000_000_000_000
# One decision every 30 s: a million is about a year of the insurer's traffic.
SPACING_NS = 30 * 1_000_000_000


def claim_id(i: int) -> str:
    return f"C-{i // 3:07d}"  # three decisions per claim


def write_log(directory: Path, n: int) -> None:
    """``n`` chained records in segments, as the sidecar writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(15000)
    features = rng.random((1024, 8), dtype=np.float32) * 1000
    prev, out = GENESIS, None
    for i in range(n):
        if i % SEGMENT_RECORDS == 0:
            if out is not None:
                out.close()
            out = (directory / f"segment-{i + 1:016d}.log").open("wb")
        record = DecisionRecord(
            time_unix_nanos=START_NS + i * SPACING_NS, request_id=f"r-{i}",
            decision_id=f"d-{i:08d}", business_key=claim_id(i),
            tenant="acme" if i % 2 else "globex", subject="svc", model="claims_risk",
            version=str(1 + i % 10 // 9), route_target="stable", route_revision=3,
            route_reason="sticky", protocol="rest", outcome="ok", latency_micros=900)
        add_tensor(record.inputs, "features", features[i % 1024:i % 1024 + 1], "keep")
        add_tensor(record.outputs, "risk_score", features[i % 1024:i % 1024 + 1, :1] / 1000,
                   "keep")
        assert out is not None
        out.write(seal(record, i + 1, prev))
        prev = record.hash
    if out is not None:
        out.close()


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run(directory: Path, n: int, repeat: int) -> dict[str, Any]:
    started = time.perf_counter()
    write_log(directory, n)
    written_s = time.perf_counter() - started
    with AuditIndex(directory) as index:
        indexed_ms = timed(index.update)
    rng = random.Random(7)

    def week(i: int) -> Query:
        start = START_NS + i * SPACING_NS
        return Query((("tenant", "acme"), ("version", "2")), start,
                     start + 7 * 86_400_000_000_000, 20, 3)

    queries: dict[str, Callable[[], Query]] = {
        "by claim (--key)": lambda: Query((("key", claim_id(rng.randrange(n))),)),
        "by decision id": lambda: Query((("decision_id", f"d-{rng.randrange(n):08d}"),)),
        "by request id": lambda: Query((("request_id", f"r-{rng.randrange(n)}"),)),
        "tenant + version, one week, page 3": lambda: week(rng.randrange(n)),
        "tenant, all time (the count capped)": lambda: Query((("tenant", "acme"),)),
    }
    results = {}
    for name, make in queries.items():
        times = []
        for _ in range(repeat):
            query = make()
            times.append(timed(lambda: search(directory, query)))  # noqa: B023 (called now)
        results[name] = {"median_ms": round(statistics.median(times), 2),
                         "max_ms": round(max(times), 2),
                         "met": statistics.median(times) < GOAL_MS}
    return {"records": n, "log_bytes": sum(p.stat().st_size for p in directory.glob("*.log")),
            "write_s": round(written_s, 1), "index_build_ms": round(indexed_ms),
            "goal_ms": GOAL_MS, "searches": results}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['records']:,} records ({result['log_bytes'] / 2**20:.0f} MiB of "
             f"segments); index built in {result['index_build_ms'] / 1000:.1f} s", "",
             "| search | median ms | slowest ms | < 100 ms |", "|---|---|---|---|"]
    for name, r in result["searches"].items():
        lines.append(f"| {name} | {r['median_ms']} | {r['max_ms']} | "
                     f"{'met' if r['met'] else '**not met**'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--dir", type=Path, help="where to write the log (default: a "
                        "temporary folder, removed after)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.dir is not None:
        result = run(args.dir, args.records, args.repeat)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(Path(tmp) / "log", args.records, args.repeat)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
