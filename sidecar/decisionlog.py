"""The decision log: append-only hash-chained segments, group commit, nothing lost silently.

One writer task owns the chain. Callers hand it records; it takes everything queued (up
to a batch), chains and frames them, writes them with one `pwrite` + one `fdatasync` on
the log's own thread (`aios.worker`), then moves the HEAD marker (async mode writes
between fsyncs on the event loop: a write to the page cache; in sync mode a task of its
own moves HEAD to what is durable at most every HEAD_INTERVAL_S). In `sync` mode each
caller waits for its batch to be durable, so a response is released only for a recorded
decision; a failed write fails those callers (503), it never acknowledges. In `async`
mode callers do not wait, and a batch's fsync may wait up to ASYNC_FSYNC_INTERVAL_S for
the next one; when the queue is full a record is dropped, counted and alarmed.

With a signing key, a checkpoint (`aios.checkpoint`) over what is durable is signed and
published to the witness every ``checkpoint_every_records`` records or
``checkpoint_every_s`` seconds (when there is anything new), and at close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from aios.auditlog import recover, write_head
from aios.chain import GENESIS, seal
from aios.checkpoint import CheckpointError, Durable, Signer
from aios.config import DecisionLogSettings
from aios.errors import LogUnavailable
from aios.merkle import Frontier
from aios.metrics import LATENCY_BUCKETS
from aios.redisconf import RedisEndpoint
from aios.witness import open_signer
from aios.worker import Worker
from proto.decision_record_pb2 import DecisionRecord

logger = logging.getLogger(__name__)

ALARM_INTERVAL_S = 5.0
# Connecting to, and each reply of, the fan-out's Redis (off the answer path).
FANOUT_TIMEOUT_S = 1.0
# async mode: how long a written record may wait for its fsync.
ASYNC_FSYNC_INTERVAL_S = 0.05
# Zeros written ahead of the records, so that a batch's write lands on blocks the file
# already has: its fdatasync then flushes data alone, without the extent and size
# updates of an append (a third less CPU and wall time per fsync on this VM's ext4; see
# loadtests/README.md, round 11). The zeros' own write is one per this many bytes.
PREFILL_BYTES = 1024 * 1024
_ZEROS = bytes(PREFILL_BYTES)
# async mode: HEAD (a file create and rename, about as costly as the fsync) moves with
# an fsync at most this often; `aios audit verify` reports a lagging HEAD as a warning.
ASYNC_HEAD_INTERVAL_S = 1.0
# async mode: nobody waits for a write, so the writer gathers records this long into one
# batch (one thread hop and one write for many records instead of one each).
ASYNC_LINGER_S = 0.005
# sync mode: HEAD follows what is durable, moved at most this often off the writer's path
# (a HEAD update, a file create and rename, costs more CPU than the fsync: ~190 µs
# against ~95 on this VM, and a thread hop each; moved after every batch, it and its hop
# were most of the sync log's cost per record).
HEAD_INTERVAL_S = 0.05

Pending = tuple[DecisionRecord, "asyncio.Future[None] | None"]


class LogMetrics:
    """Write latency, batch sizes, records, drops and queue depth."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("aios_sidecar_log_records", "Decision records made durable",
                               registry=registry)
        self.dropped = Counter("aios_sidecar_log_dropped",
                               "Decision records dropped (async mode, queue full)",
                               registry=registry)
        self.failures = Counter("aios_sidecar_log_write_failures",
                                "Batches that could not be written", registry=registry)
        self.write_seconds = Histogram("aios_sidecar_log_write_seconds",
                                       "Time to write and fsync one batch",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.batch = Histogram("aios_sidecar_log_batch_records", "Records per group commit",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                               registry=registry)
        self.queue = Gauge("aios_sidecar_log_queue_depth", "Records waiting to be written",
                           registry=registry)
        self.checkpoint_failures = Counter("aios_sidecar_log_checkpoint_failures",
                                           "Checkpoints that could not be signed or published",
                                           registry=registry)
        self.head_moves = Counter("aios_sidecar_log_head_moves",
                                  "HEAD marker updates (at most one per interval)",
                                  registry=registry)
        self.fanout_failures = Counter("aios_sidecar_log_fanout_failures",
                                       "Records not published to the Redis stream",
                                       registry=registry)


class DecisionLog:
    """The sidecar's decision log (see the module docstring)."""

    def __init__(self, settings: DecisionLogSettings, registry: CollectorRegistry) -> None:
        self._settings = settings
        self._dir = settings.directory
        self._queue: asyncio.Queue[Pending] = asyncio.Queue(settings.queue_size)
        self.metrics = LogMetrics(registry)
        self._sequence, self._last = 0, GENESIS
        self._fd = -1
        self._segment: Path | None = None
        self._size = 0  # bytes of records in the segment
        self._filled = 0  # bytes in the file: the records, then zeros
        self._writer: asyncio.Task[None] | None = None
        # The writes and fsyncs, one at a time on a thread of their own.
        self._worker = Worker("decision-log")
        self._redis: aioredis.Redis | None = None
        self._last_alarm = 0.0
        self._dropped = 0
        self._synced_at = 0.0
        self._head_at = 0.0
        self._head_sequence = 0
        self._head_lock = threading.Lock()
        # sync mode: the durable position HEAD is to show, and the task that moves it.
        self._head_due: tuple[int, bytes, str] | None = None
        self._head_wanted = asyncio.Event()
        self._header: asyncio.Task[None] | None = None
        self._tree = Frontier()
        self._durable = self._snapshot()
        self._signer: Signer | None = None
        self._sign_now = asyncio.Event()
        # The durable state that crossed checkpoint_every_records: what the next
        # checkpoint covers (so checkpoints fall on the records that called for them).
        self._due: Durable | None = None
        self._signing = 0  # the size of the latest checkpoint begun
        self._checkpointer: asyncio.Task[None] | None = None

    @property
    def sync(self) -> bool:
        """Whether callers wait for durability."""
        return self._settings.mode == "sync"

    async def __aenter__(self) -> DecisionLog:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._signer = open_signer(self._settings, "sidecar.decision_log")
        if self._signer is None:
            logger.warning("decision log: no signing_key_file, so no signed checkpoints: a "
                           "rewrite of the whole log would go unnoticed")
        self._sequence, self._last = await asyncio.to_thread(recover, self._dir, self._tree)
        self._durable = self._snapshot()
        # Always a fresh segment: never append after a tail a crash may have torn.
        self._open_segment(self._sequence + 1)
        await self._worker.__aenter__()
        if self._signer is not None:
            self._checkpointer = asyncio.create_task(self._checkpoint_loop())
        if self._settings.redis_stream_url:
            self._redis = RedisEndpoint.from_url(self._settings.redis_stream_url).client(
                FANOUT_TIMEOUT_S, FANOUT_TIMEOUT_S)
        self._writer = asyncio.create_task(self._write_loop())
        if self.sync:
            self._header = asyncio.create_task(self._head_loop())
        logger.info("decision log in %s (%s), continuing after record %d", self._dir,
                    self._settings.mode, self._sequence)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        # Flush what is queued, then stop.
        await self._queue.join()
        for task in (self._writer, self._header, self._checkpointer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._worker.__aexit__(None, None, None)
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # a closed segment ends at its records
                os.ftruncate(self._fd, self._size)
            try:
                os.fdatasync(self._fd)
                self._durable = self._snapshot()
                if self._sequence and self._segment is not None:
                    self._write_head(self._sequence, self._last, self._segment.name)
            except OSError as error:
                logger.error("decision log: final fsync failed (%s)", error.strerror or error)
            os.close(self._fd)
            await self._checkpoint()
        if self._redis is not None:
            await self._redis.aclose()

    def _open_segment(self, first: int) -> None:
        """Start the segment whose first record will be number ``first``."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # its zeros are skipped by readers anyway
                os.ftruncate(self._fd, self._size)
            os.close(self._fd)
            self._fd = -1
        self._segment = self._dir / f"segment-{first:016d}.log"
        if self._segment.is_file() and self._segment.stat().st_size:
            # A crash during this segment's first write: recovery found no record in it.
            # Kept for an auditor (verify names it), out of the chain.
            aside = self._segment.with_name(f"{self._segment.name}.torn-{time.time_ns()}")
            self._segment.rename(aside)
            logger.warning("decision log: %s held no complete record; set aside as %s",
                           self._segment.name, aside.name)
        self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT, 0o640)
        self._size = self._filled = 0

    async def append(self, record: DecisionRecord) -> None:
        """Log ``record``; in sync mode return only once it is durable (else LogUnavailable)."""
        error = (await self.append_many([record]))[0]
        if error is not None:
            raise error

    async def append_many(self, records: list[DecisionRecord]) -> list[LogUnavailable | None]:
        """Log ``records`` (in this order); in sync mode return once each is durable, with
        the error of each that is not (None for those that are)."""
        if not self.sync:
            for record in records:
                try:
                    self._queue.put_nowait((record, None))
                except asyncio.QueueFull:
                    self._drop(1)
            return [None] * len(records)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for record in records:
            futures.append(loop.create_future())
            await self._queue.put((record, futures[-1]))
        self.metrics.queue.set(self._queue.qsize())
        # All are queued already: waiting for them in turn waits as long as for all at once.
        errors: list[LogUnavailable | None] = []
        for future in futures:
            try:
                await future
            except LogUnavailable as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def _drop(self, count: int) -> None:
        """Count dropped records and raise the alarm (at most every few seconds)."""
        self._dropped += count
        self.metrics.dropped.inc(count)
        now = time.monotonic()
        if now - self._last_alarm >= ALARM_INTERVAL_S:
            self._last_alarm = now
            logger.error("decision log: records are being DROPPED (%d so far)", self._dropped)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if not self.sync:
                await asyncio.sleep(ASYNC_LINGER_S)
            while len(batch) < self._settings.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self.metrics.queue.set(self._queue.qsize())

    async def _commit(self, batch: list[Pending]) -> None:
        sequence, last = self._sequence, self._last
        frames = []
        for record, _ in batch:
            sequence += 1
            frames.append(seal(record, sequence, last))
            last = record.hash
        data = b"".join(frames)
        start = time.perf_counter()
        fsync = self.sync or time.monotonic() - self._synced_at >= ASYNC_FSYNC_INTERVAL_S
        try:
            if fsync or self._size + len(data) > self._filled:
                segment = await self._worker.run(self._write, data, sequence, last, fsync)
            else:
                # async mode between fsyncs: a write to the page cache costs less than the
                # thread hop (Redis' appendfsync everysec does the same).
                segment = self._write(data, sequence, last, fsync)
        except OSError as exc:
            self.metrics.failures.inc()
            logger.error("decision log write failed (%s): %d record(s) not recorded",
                         exc.strerror or exc, len(batch))
            error = LogUnavailable(f"decision log unavailable ({exc.strerror or exc}); "
                                   "the decision was not recorded")
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(error)
            unacknowledged = sum(1 for _, future in batch if future is None)
            if unacknowledged:
                self._drop(unacknowledged)
            return
        self._sequence, self._last = sequence, last
        for record, _ in batch:
            self._tree.append(record.hash)
        if fsync:
            self._durable = self._snapshot()
            # Counted from the last checkpoint asked for, not the last published: one
            # still being signed must not make the next batch ask again.
            asked = max(self._signing, self._due.size if self._due else 0)
            if self._signer is not None and self._durable.size - asked >= \
                    self._settings.checkpoint_every_records:
                self._due = self._durable
                self._sign_now.set()
        self.metrics.write_seconds.observe(time.perf_counter() - start)
        self.metrics.batch.observe(len(batch))
        self.metrics.records.inc(len(batch))
        for _, future in batch:
            if future is not None and not future.done():
                future.set_result(None)
        if self.sync:
            self._head_due = (sequence, last, segment)
            self._head_wanted.set()
        if self._redis is not None:
            await self._publish([record for record, _ in batch])

    def _write(self, data: bytes, sequence: int, last: bytes, fsync: bool) -> str:
        """Write after the last record, filling zeros ahead first where they run out
        (and with ``fsync``, in a worker thread: fsync, and in async mode update HEAD);
        undo a partial write on error. Returns the segment written to."""
        if self._fd < 0:
            self._open_segment(self._sequence + 1)
        assert self._segment is not None
        segment = self._segment.name
        try:
            end = self._size + len(data)
            if end > self._filled and self._filled < self._settings.max_segment_bytes:
                zeros = min(PREFILL_BYTES, self._settings.max_segment_bytes - self._filled)
                _full_write(self._fd, memoryview(_ZEROS)[:zeros], self._filled)
                self._filled += zeros
            self._filled = max(self._filled, end)
            _full_write(self._fd, data, self._size)
            if fsync:
                os.fdatasync(self._fd)
                self._synced_at = time.monotonic()
        except OSError:
            # Leave no half batch behind: the chain continues from the last good record.
            try:
                os.ftruncate(self._fd, self._size)
                self._filled = self._size
            except OSError:
                self._open_segment(self._sequence + 1)
            raise
        self._size = end
        # HEAD marks what is durable: in async mode it moves with an fsync at most every
        # ASYNC_HEAD_INTERVAL_S, and at close; sync mode moves it in `_head_loop`.
        if fsync and not self.sync and \
                time.monotonic() - self._head_at >= ASYNC_HEAD_INTERVAL_S:
            self._write_head(sequence, last, segment)
        if self._size >= self._settings.max_segment_bytes:
            self._open_segment(sequence + 1)
        return segment

    def _snapshot(self) -> Durable:
        """The tree and last record as written so far (durable once fsynced)."""
        return Durable(self._tree.size, self._tree.root(), self._sequence, self._last)

    async def _checkpoint_loop(self) -> None:
        while True:
            # Not wait_for: on 3.11 it swallows a cancel that meets the event being set, and
            # the loop would then outlive close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.checkpoint_every_s):
                    await self._sign_now.wait()
            self._sign_now.clear()
            due, self._due = self._due, None
            await self._checkpoint(due)

    async def _checkpoint(self, due: Durable | None = None) -> None:
        """Sign and publish ``due`` (by default what is durable now), if anything is new
        since the last checkpoint."""
        signer, durable = self._signer, due or self._durable
        if signer is None or durable.size <= signer.published:
            return
        self._signing = durable.size
        try:
            await asyncio.to_thread(signer.publish, durable)
        except (OSError, CheckpointError) as exc:
            self.metrics.checkpoint_failures.inc()
            logger.error("decision log: checkpoint of %d records not published (%s)",
                         durable.size, exc)

    async def _head_loop(self) -> None:
        """sync mode: move HEAD to the last durable batch, then rest HEAD_INTERVAL_S (so
        it lags what is durable by at most about that, and costs nothing per batch)."""
        while True:
            await self._head_wanted.wait()
            self._head_wanted.clear()
            assert self._head_due is not None
            try:
                await asyncio.to_thread(self._write_head, *self._head_due)
            except OSError as exc:  # the records are durable; verify will say HEAD lags
                logger.warning("decision log: HEAD not updated (%s)", exc.strerror or exc)
            await asyncio.sleep(HEAD_INTERVAL_S)

    def _write_head(self, sequence: int, last: bytes, segment: str) -> None:
        # Worker threads and the close may race: HEAD never moves back.
        with self._head_lock:
            if sequence < self._head_sequence:
                return
            write_head(self._dir, sequence, last, segment)
            self._head_sequence, self._head_at = sequence, time.monotonic()
            self.metrics.head_moves.inc()

    async def _publish(self, batch: list[DecisionRecord]) -> None:
        assert self._redis is not None
        try:
            pipe = self._redis.pipeline(transaction=False)
            for record in batch:
                pipe.xadd(self._settings.redis_stream_key, {
                    "sequence": record.sequence, "request_id": record.request_id,
                    "hash": record.hash.hex(),
                    "record": base64.b64encode(record.SerializeToString(deterministic=True)),
                }, maxlen=self._settings.redis_stream_maxlen, approximate=True)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self.metrics.fanout_failures.inc(len(batch))
            logger.warning("decision fan-out to Redis failed: %s", exc)


def _full_write(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (a short write is a full disk)."""
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
