"""The decision log on real files: group commit, rotation, tamper detection, faults."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from aios.auditlog import records, segments, verify
from aios.chain import SECTOR, read_frames, record_hash, seal
from aios.config import DecisionLogSettings
from aios.errors import LogUnavailable
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import HEAD_INTERVAL_S, PREFILL_BYTES, DecisionLog
from tests.helpers import REPO
from tests.redis_server import RedisServer


def settings(directory: Path, **overrides: object) -> DecisionLogSettings:
    return DecisionLogSettings.model_validate({"directory": str(directory), **overrides})


async def write(directory: Path, n: int, concurrent: bool = True,
                **overrides: object) -> CollectorRegistry:
    registry = CollectorRegistry()
    async with DecisionLog(settings(directory, **overrides), registry) as log:
        records = [DecisionRecord(request_id=f"req-{i}", model="claims_risk", version="2")
                   for i in range(n)]
        if concurrent:
            await asyncio.gather(*(log.append(r) for r in records))
        else:
            for r in records:
                await log.append(r)
    return registry


async def test_group_commit_and_an_intact_chain(tmp_path: Path) -> None:
    registry = await write(tmp_path, 300)
    report = verify(tmp_path)
    assert report.intact, report.problem
    assert (report.records, report.last_sequence) == (300, 300)
    assert report.warnings == ["no witness given: a rewrite of the whole log with its chain "
                               "recomputed cannot be told"]
    batches = registry.get_sample_value("aios_sidecar_log_batch_records_count")
    assert batches is not None and batches < 300, "concurrent appends share an fsync"
    assert registry.get_sample_value("aios_sidecar_log_records_total") == 300
    assert [r.sequence for r in records(tmp_path) if r.request_id == "req-42"] == [43]


async def test_rotation_and_restart_continue_the_chain(tmp_path: Path) -> None:
    await write(tmp_path, 200, concurrent=False, max_segment_bytes=4096)
    await write(tmp_path, 50, concurrent=False, max_segment_bytes=4096)  # a restart
    report = verify(tmp_path)
    assert report.intact, report.problem
    assert report.records == 250 and report.segments > 3


def audit_verify(directory: Path) -> subprocess.CompletedProcess[str]:
    """`aios audit verify DIR`, as an auditor runs it."""
    return subprocess.run([sys.executable, "-m", "aios_cli", "audit", "verify", str(directory)],
                          cwd=REPO, capture_output=True, text=True, check=False)


def _frames(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    offsets = [f.offset for f in read_frames(data)]
    return list(zip(offsets, [*offsets[1:], len(data)], strict=True))


def edit_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start, end = _frames(path)[5]
    data[(start + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete_record(path: Path) -> None:
    data = path.read_bytes()
    start, end = _frames(path)[5]
    path.write_bytes(data[:start] + data[end:])


def swap_records(path: Path) -> None:
    data = path.read_bytes()
    (a0, a1), (b0, b1) = _frames(path)[5:7]
    path.write_bytes(data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:])


def cut_segment(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:_frames(path)[5][0]])


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "one byte changed": (edit_byte, "record 6 (decision -, request req-5)"),
    "a record removed": (delete_record, "expected sequence 6"),
    "two records swapped": (swap_records, "expected sequence 6"),
    "a segment truncated": (cut_segment, "expected sequence 6"),
}


@pytest.mark.parametrize(("tamper", "named"), TAMPERING.values(), ids=TAMPERING.keys())
async def test_tampering_is_detected_and_named(tmp_path: Path,
                                               tamper: Callable[[Path], None],
                                               named: str) -> None:
    for batch in range(2):  # two segments: the damage is in the first, not at the end
        async with DecisionLog(settings(tmp_path), CollectorRegistry()) as log:
            for i in range(10):
                await log.append(DecisionRecord(request_id=f"req-{batch * 10 + i}"))
    tamper(segments(tmp_path)[0])
    out = audit_verify(tmp_path)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith("TAMPERED: ")
    assert named in out.stdout, out.stdout


async def test_records_cut_from_the_end_are_caught_by_head(tmp_path: Path) -> None:
    await write(tmp_path, 10)
    last = segments(tmp_path)[-1]
    last.write_bytes(last.read_bytes()[:_frames(last)[8][0]])
    report = verify(tmp_path)
    assert not report.intact
    assert "HEAD records sequence 10 but the log ends at 8" in report.problem


async def test_a_torn_last_record_is_a_crash_not_tampering(tmp_path: Path) -> None:
    await write(tmp_path, 10)
    last = segments(tmp_path)[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-7])  # the write of record 10 was cut short
    head = tmp_path / "HEAD"
    doc = json.loads(head.read_text())
    head.write_text(json.dumps({**doc, "sequence": 9, "hash": _hash_of(tmp_path, 9)}))
    out = audit_verify(tmp_path)
    assert out.returncode == 0, out.stdout
    assert "the last record is truncated" in out.stdout
    assert "intact: 9 records" in out.stdout


async def test_zeros_are_filled_ahead_while_open_and_cut_at_close(tmp_path: Path) -> None:
    async with DecisionLog(settings(tmp_path), CollectorRegistry()) as log:
        for i in range(5):
            await log.append(DecisionRecord(request_id=f"req-{i}"))
        [segment] = segments(tmp_path)
        data = segment.read_bytes()
        assert len(data) == PREFILL_BYTES, "the records lie in zeros filled ahead"
        assert [r.request_id for r in records(tmp_path)] == [f"req-{i}" for i in range(5)]
        assert verify(tmp_path).intact
        written = len(data.rstrip(b"\0"))
    assert written <= segment.stat().st_size < written + 32, "closed, it ends at its records"


def _tear(segment: Path, index: int) -> None:
    """What a power loss during the write of ``segment``'s frame ``index`` (its last)
    leaves (a fault this test cannot cause): one of its sectors never written, the zeros
    filled ahead after it, as the writer left them."""
    data = segment.read_bytes()
    start = _frames(segment)[index][0]
    at = -(-(start + 8) // SECTOR) * SECTOR
    segment.write_bytes(data[:at] + bytes(SECTOR) + data[at + SECTOR:] + bytes(PREFILL_BYTES))


async def test_a_torn_write_in_zeros_is_a_crash_and_the_chain_goes_on(tmp_path: Path) -> None:
    tensor = DecisionRecord(request_id="big")
    tensor.inputs.add(name="x", datatype="FP32", contents=b"\x01" * 2000)
    async with DecisionLog(settings(tmp_path), CollectorRegistry()) as log:
        for i in range(10):
            record = DecisionRecord()
            record.CopyFrom(tensor)
            record.request_id = f"req-{i}"
            await log.append(record)
    [first] = segments(tmp_path)
    _tear(first, 9)
    head = tmp_path / "HEAD"  # record 10 was never acknowledged: HEAD is at 9
    head.write_text(json.dumps({**json.loads(head.read_text()), "sequence": 9,
                                "hash": _hash_of(tmp_path, 9)}))
    out = audit_verify(tmp_path)
    assert out.returncode == 0, out.stdout
    assert "the last record is torn (content altered (hash mismatch), with sectors of " \
        "zeros where its write stopped)" in out.stdout
    await write(tmp_path, 3, concurrent=False)  # a restart
    report = verify(tmp_path)
    assert report.intact, report.problem
    assert [r.sequence for r in records(tmp_path)] == list(range(1, 13))
    assert [r.request_id for r in records(tmp_path)][8:] == ["req-8", "req-0", "req-1",
                                                            "req-2"]
    assert any("torn" in w and "next segment continues" in w for w in report.warnings)


def test_a_segment_torn_in_its_first_write_is_set_aside(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, 4, concurrent=False))
    # The crash came during the first write of the next segment.
    torn = tmp_path / "segment-0000000000000005.log"
    torn.write_bytes(seal(DecisionRecord(request_id="lost"), 5, bytes(32))[:30]
                     + bytes(PREFILL_BYTES))
    asyncio.run(write(tmp_path, 2, concurrent=False))
    report = verify(tmp_path)
    assert report.intact, report.problem
    assert [r.sequence for r in records(tmp_path)] == [1, 2, 3, 4, 5, 6]
    [aside] = tmp_path.glob("segment-0000000000000005.log.torn-*")
    assert f"{aside.name}: a segment set aside at a restart, holding no complete record " \
        "(a crash during its first write)" in report.warnings


def _hash_of(directory: Path, sequence: int) -> str:
    for path in segments(directory):
        for frame in read_frames(path.read_bytes()):
            if frame.record is not None and frame.record.sequence == sequence:
                return str(frame.record.hash.hex())
    raise AssertionError(sequence)


async def test_a_full_disk_fails_sync_appends_and_records_nothing(tmp_path: Path) -> None:
    # A real ENOSPC: the next segment is /dev/full.
    (tmp_path / "segment-0000000000000001.log").symlink_to("/dev/full")
    registry = CollectorRegistry()
    async with DecisionLog(settings(tmp_path), registry) as log:
        with pytest.raises(LogUnavailable, match="No space left on device"):
            await log.append(DecisionRecord(request_id="lost"))
    assert registry.get_sample_value("aios_sidecar_log_write_failures_total") == 1


async def test_async_mode_drops_are_counted_never_silent(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    (tmp_path / "segment-0000000000000001.log").symlink_to("/dev/full")
    registry = CollectorRegistry()
    async with DecisionLog(settings(tmp_path, mode="async", queue_size=5), registry) as log:
        for i in range(20):
            await log.append(DecisionRecord(request_id=f"r{i}"))  # returns at once
    dropped = registry.get_sample_value("aios_sidecar_log_dropped_total")
    assert dropped == 20, "queue overflow and failed writes are both counted"
    assert "records are being DROPPED" in caplog.text


def test_segment_files_are_not_world_readable(tmp_path: Path) -> None:
    asyncio.run(write(tmp_path, 1))
    assert os.stat(segments(tmp_path)[0]).st_mode & 0o007 == 0


async def test_records_fan_out_to_a_capped_redis_stream(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        await write(tmp_path / "log", 30, redis_stream_url=server.url,
                    redis_stream_key="test:decisions", redis_stream_maxlen=1000)
        client = redis.Redis(port=server.port)
        entries = client.xrange("test:decisions")
        assert len(entries) == 30
        first = entries[0][1]
        assert first[b"sequence"] == b"1" and first[b"request_id"].startswith(b"req-")
        record = DecisionRecord.FromString(base64.b64decode(first[b"record"]))
        assert record.hash.hex() == first[b"hash"].decode()
        # Consumers use the stream as usual, e.g. in a group.
        client.xgroup_create("test:decisions", "auditors", id="0")
        got = client.xreadgroup("auditors", "a1", {"test:decisions": ">"}, count=5)
        assert len(got[0][1]) == 5
    finally:
        server.stop()


async def test_sync_head_follows_what_is_durable_within_its_interval(
        tmp_path: Path) -> None:
    def head_is(sequence: int) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((tmp_path / "HEAD").read_text())
        assert doc["sequence"] == sequence
        return doc

    registry = CollectorRegistry()

    def count(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    async with DecisionLog(settings(tmp_path, mode="sync"), registry) as log:
        for i in range(3):  # one at a time
            await log.append(DecisionRecord(request_id=f"one-{i}"))
            await asyncio.sleep(HEAD_INTERVAL_S * 2)
            head_is(i + 1)
        moves, batches = count("aios_sidecar_log_head_moves_total"), \
            count("aios_sidecar_log_batch_records_count")
        start = time.monotonic()
        for burst in range(10):
            await asyncio.gather(*(log.append(DecisionRecord(request_id=f"many-{burst}-{i}"))
                                   for i in range(20)))
            await asyncio.sleep(0)
        elapsed = time.monotonic() - start
        await asyncio.sleep(HEAD_INTERVAL_S * 2)
        assert head_is(203)["hash"] == _hash_of(tmp_path, 203)
        moves = count("aios_sidecar_log_head_moves_total") - moves
        batches = count("aios_sidecar_log_batch_records_count") - batches
        # Moved at most once per interval (and once after), not once per batch.
        assert moves <= elapsed / HEAD_INTERVAL_S + 2, (moves, batches, elapsed)
        assert batches >= 10
    assert verify(tmp_path).intact


@pytest.mark.parametrize("record", [
    DecisionRecord(),
    DecisionRecord(request_id="r", tenant="t", model="m", latency_micros=7, shadow=True,
                   parity_flags=["shape:features"], error="x" * 300),
    DecisionRecord(request_id="r", decision_id="01M8RPDN7VPZDDAZ3YC4FMX40Z",
                   business_key="C-1002", route_reason="sticky",
                   route_weights={"stable": 90, "canary": 10}, shadow_of="x"),
], ids=["empty", "full", "with the fields added later"])
def test_a_sealed_frame_is_the_hashed_encoding_then_the_hash(record: DecisionRecord) -> None:
    frame = seal(record, 12, bytes(range(32)))
    unsealed = DecisionRecord()
    unsealed.CopyFrom(record)
    unsealed.ClearField("hash")
    assert frame[4:-35] == unsealed.SerializeToString(deterministic=True)  # tag, length: 3
    assert frame[-32:] == record.hash == record_hash(record)
    assert DecisionRecord.FromString(frame[4:]) == record
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert record.sequence == 12
