"""`python -m loadtests.log_bench`: the sidecar's decision log alone, in sync mode.

N appenders each append a record and wait for it to be durable, again and again, for a
few seconds per N; printed per N: records/s, the append's p50/p99, and the process's CPU
per record (`time.process_time`, every thread: the fsync's worker included). Compare two
commits by alternating them in one sitting (the machine's speed drifts between runs).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from aios.checkpoint import write_key_pair
from aios.config import DecisionLogSettings
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import DecisionLog


async def measure(directory: Path, mode: str, appenders: int, seconds: float,
                  key: Path | None) -> tuple[float, float, float, float]:
    """records/s, p50 and p99 (seconds) of one append, CPU seconds per record."""
    settings = DecisionLogSettings(directory=directory, mode=mode, signing_key_file=key)
    waits: list[float] = []
    async with DecisionLog(settings, CollectorRegistry()) as log:
        stop = time.perf_counter() + seconds

        async def appender(who: int) -> None:
            n = 0
            while time.perf_counter() < stop:
                record = DecisionRecord(request_id=f"{who}-{n}", tenant="bench",
                                        model="claims_risk", error="x" * 300)
                start = time.perf_counter()
                await log.append(record)
                waits.append(time.perf_counter() - start)
                n += 1

        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(appender(i) for i in range(appenders)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    waits.sort()
    return (len(waits) / elapsed, waits[len(waits) // 2], waits[int(len(waits) * 0.99)],
            cpu / len(waits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appenders", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--no-sign", action="store_true", help="no signed checkpoints")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aios-log-bench-") as tmp:
        key = None
        if not args.no_sign:
            key = Path(tmp) / "signing.pem"
            write_key_pair(key, key.with_suffix(".pub.pem"))
        print(f"{'appenders':>9}  {'records/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  "
              f"{'CPU µs/record':>13}")
        for n in args.appenders:
            rate, p50, p99, cpu = asyncio.run(measure(Path(tmp) / f"log-{n}", args.mode, n,
                                                      args.seconds, key))
            print(f"{n:>9}  {rate:>9,.0f}  {p50 * 1e3:>7.3f}  {p99 * 1e3:>7.3f}  "
                  f"{cpu * 1e6:>13,.0f}")


if __name__ == "__main__":
    main()
