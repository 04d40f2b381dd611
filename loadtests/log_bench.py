"""`python -m loadtests.log_bench`: the sidecar's decision log alone (sync mode; `--mode async`).

N appenders each append a record (or `--per-append` records at once, as the sidecar
logs an envelope's calls) and wait for it to be durable, again and again, for a few
seconds per N; printed per N: records/s, the append's p50/p99, the process's CPU per
record (`time.process_time`, every thread: the fsync's worker included) and the event
loop's own (`time.thread_time`). In async mode nothing makes an appender wait, so each
waits ASYNC_PACE_S between appends (unpaced it would only fill the queue). Compare two
commits by alternating them in one sitting (the machine's speed drifts between runs).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from aios.checkpoint import write_key_pair
from aios.config import DecisionLogSettings
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import DecisionLog

ASYNC_PACE_S = 0.001


@dataclass(frozen=True)
class Figures:
    records: int
    records_per_s: float
    p50_s: float  # of one append
    p99_s: float
    cpu_s: float  # per record, every thread
    loop_cpu_s: float  # per record, the event loop's thread


async def measure(directory: Path, mode: str, appenders: int, seconds: float,
                  key: Path | None, per_append: int = 1) -> Figures:
    settings = DecisionLogSettings(directory=directory, mode=mode, signing_key_file=key)
    waits: list[float] = []
    async with DecisionLog(settings, CollectorRegistry()) as log:
        stop = time.perf_counter() + seconds

        async def appender(who: int) -> None:
            n = 0
            while time.perf_counter() < stop:
                records = [DecisionRecord(request_id=f"{who}-{n}-{k}", tenant="bench",
                                          model="claims_risk", error="x" * 300)
                           for k in range(per_append)]
                start = time.perf_counter()
                await log.append_many(records)
                waits.append(time.perf_counter() - start)
                if not log.sync:
                    await asyncio.sleep(ASYNC_PACE_S)
                n += 1

        began, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.gather(*(appender(i) for i in range(appenders)))
        elapsed = time.perf_counter() - began
        cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    waits.sort()
    records = len(waits) * per_append
    return Figures(records, records / elapsed, waits[len(waits) // 2],
                   waits[int(len(waits) * 0.99)], cpu / records, loop_cpu / records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appenders", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--per-append", type=int, default=1,
                        help="records per append (a sidecar envelope's calls)")
    parser.add_argument("--no-sign", action="store_true", help="no signed checkpoints")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aios-log-bench-") as tmp:
        key = None
        if not args.no_sign:
            key = Path(tmp) / "signing.pem"
            write_key_pair(key, key.with_suffix(".pub.pem"))
        print(f"{'appenders':>9}  {'records/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  "
              f"{'CPU µs/record':>13}  {'loop µs/record':>14}")
        for n in args.appenders:
            f = asyncio.run(measure(Path(tmp) / f"log-{n}", args.mode, n, args.seconds, key,
                                    args.per_append))
            print(f"{n:>9}  {f.records_per_s:>9,.0f}  {f.p50_s * 1e3:>7.3f}  "
                  f"{f.p99_s * 1e3:>7.3f}  {f.cpu_s * 1e6:>13,.0f}  {f.loop_cpu_s * 1e6:>14,.1f}")


if __name__ == "__main__":
    main()
