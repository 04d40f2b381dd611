"""`aios audit verify` and `aios audit show`: walk the decision log's hash chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from proto.decision_record_pb2 import DecisionRecord
from sidecar.chain import GENESIS, read_frames, record_hash

SEGMENT_GLOB = "segment-*.log"
HEAD_FILE = "HEAD"


def segments(directory: Path) -> list[Path]:
    """The log's segment files, oldest first (their names sort by first sequence)."""
    return sorted(p for p in directory.glob(SEGMENT_GLOB) if p.is_file())


@dataclass
class Report:
    """What `verify` found."""

    records: int = 0
    segments: int = 0
    last_sequence: int = 0
    last_hash: bytes = GENESIS
    problem: str = ""  # the first sign of tampering; "" when intact
    warnings: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No tampering found (warnings, such as a crash-truncated tail, are allowed)."""
        return not self.problem


def verify(directory: Path) -> Report:
    """Check every record's hash and link, across segments, and the HEAD marker."""
    report = Report()
    files = segments(directory)
    if not files:
        report.problem = f"no segments in {directory}"
        return report
    prev, expected = GENESIS, 1
    for index, path in enumerate(files):
        report.segments += 1
        for frame in read_frames(path.read_bytes()):
            where = f"{path.name} at byte {frame.offset}"
            rec = frame.record
            if rec is None:
                if frame.error == "truncated" and index == len(files) - 1:
                    report.warnings.append(
                        f"{where}: the last record is truncated (a write cut short by a crash; "
                        "it was never acknowledged)")
                    break
                if frame.error == "truncated":
                    # A torn tail is fine if the next segment continues the chain.
                    report.warnings.append(f"{where}: truncated record at the end of a "
                                           "segment (a crash; the next segment continues)")
                    break
                report.problem = f"{where}: {frame.error}"
                return report
            label = f"record {rec.sequence} (request {rec.request_id or '-'}) in {where}"
            if rec.sequence != expected:
                report.problem = (f"{label}: expected sequence {expected} "
                                  "(a record was removed, inserted or reordered)")
                return report
            if rec.prev_hash != prev:
                report.problem = f"{label}: does not link to the record before it"
                return report
            if record_hash(rec) != rec.hash:
                report.problem = f"{label}: content altered (hash mismatch)"
                return report
            prev, expected = rec.hash, expected + 1
            report.records += 1
    report.last_sequence, report.last_hash = expected - 1, prev
    _check_head(directory, report)
    return report


def _check_head(directory: Path, report: Report) -> None:
    head_path = directory / HEAD_FILE
    if not head_path.exists():
        report.warnings.append("no HEAD marker: cannot tell whether records were cut "
                               "from the end")
        return
    head = json.loads(head_path.read_text())
    if head["sequence"] > report.last_sequence:
        report.problem = (f"HEAD records sequence {head['sequence']} but the log ends at "
                          f"{report.last_sequence}: records were removed from the end")
    elif head["sequence"] == report.last_sequence and head["hash"] != report.last_hash.hex():
        report.problem = f"record {report.last_sequence} differs from the one HEAD records"
    elif head["sequence"] < report.last_sequence:
        report.warnings.append(f"HEAD lags at {head['sequence']} (a crash before the marker "
                               "was updated)")


def records(directory: Path) -> Iterator[DecisionRecord]:
    """Every readable record, in order."""
    for path in segments(directory):
        for frame in read_frames(path.read_bytes()):
            if frame.record is None:
                break
            yield frame.record


def show(directory: Path, request_id: str) -> list[dict[str, Any]]:
    """The records of ``request_id`` as JSON-ready dicts."""
    return [MessageToDict(r, preserving_proto_field_name=True)
            for r in records(directory) if r.request_id == request_id]
