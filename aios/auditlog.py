"""Reading the decision log for an auditor: verify it, read a record, prove one.

`verify` walks the hash chain across segments and checks it against HEAD and against
every signed checkpoint the witness holds (`aios.checkpoint`): a byte edit, a removed,
inserted or swapped record breaks the chain (named by record); a log rewritten from some
record on, chain and HEAD recomputed, no longer has the signed Merkle root; records cut
from the end fall short of the signed size; a checkpoint not signed by the key is
refused. `prove` writes an inclusion proof of one record in the latest checkpoint, which
`check_proof` verifies with the public key alone.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from aios.chain import GENESIS, read_frames, record_hash
from aios.checkpoint import Checkpoint, CheckpointError, Witness
from aios.merkle import Frontier, inclusion_proof, leaf_hash, root_from_proof
from proto.decision_record_pb2 import DecisionRecord

SEGMENT_GLOB = "segment-*.log"
# A segment a restarted writer found with no complete record, renamed out of the chain.
SET_ASIDE_GLOB = "segment-*.log.torn-*"
HEAD_FILE = "HEAD"
PROOF_FORMAT = "aios-inclusion-proof/v1"
PROGRESS_EVERY = 10_000


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
    checkpoints: int = 0  # signed checkpoints checked against the log
    covered: int = 0  # records covered by the latest good checkpoint
    problem: str = ""  # the first sign of tampering; "" when intact
    kind: str = ""  # tampered | truncated | rewritten | forged checkpoint
    warnings: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No tampering found (warnings, such as a crash-truncated tail, are allowed)."""
        return not self.problem

    def fail(self, kind: str, problem: str) -> Report:
        self.kind, self.problem = kind, problem
        return self

    def to_json(self) -> dict[str, Any]:
        return {"intact": self.intact, "kind": self.kind or None, "problem": self.problem or None,
                "records": self.records, "segments": self.segments,
                "last_sequence": self.last_sequence, "last_hash": self.last_hash.hex(),
                "checkpoints": self.checkpoints, "covered": self.covered,
                "warnings": self.warnings}


def verify(directory: Path, witness: Witness | None = None,
           public_key: Ed25519PublicKey | None = None,
           progress: Callable[[int], None] | None = None) -> Report:
    """Check every record's hash and link, across segments, then HEAD, then the
    witness's checkpoints (their signatures with ``public_key``); ``progress`` is told
    the records checked so far, every PROGRESS_EVERY."""
    report = Report()
    files = segments(directory)
    if not files:
        return report.fail("tampered", f"no segments in {directory}")
    checkpoints = _signed(witness, public_key, report)
    if report.problem:
        return report
    pending = list(checkpoints)
    tree = Frontier()
    prev, expected = GENESIS, 1
    for index, path in enumerate(files):
        report.segments += 1
        for frame in read_frames(path.read_bytes()):
            where = f"{path.name} at byte {frame.offset}"
            rec = frame.record
            if rec is None:
                if not frame.torn:
                    return report.fail("tampered", f"{where}: {frame.error}")
                how = "truncated" if frame.error == "truncated" else \
                    f"torn ({frame.error}, with sectors of zeros where its write stopped)"
                if index == len(files) - 1:
                    report.warnings.append(
                        f"{where}: the last record is {how}: a write cut short by a crash; "
                        "it was never acknowledged")
                else:
                    # A torn tail is fine if the next segment continues the chain.
                    report.warnings.append(f"{where}: {how} record at the end of a segment "
                                           "(a crash; the next segment continues)")
                break
            label = f"record {rec.sequence} (decision {rec.decision_id or '-'}, request " \
                    f"{rec.request_id or '-'}) in {where}"
            if rec.sequence != expected:
                return report.fail("tampered", f"{label}: expected sequence {expected} "
                                   "(a record was removed, inserted or reordered)")
            if rec.prev_hash != prev:
                return report.fail("tampered", f"{label}: does not link to the record "
                                   "before it")
            if record_hash(rec) != rec.hash:
                return report.fail("tampered", f"{label}: content altered (hash mismatch)")
            prev, expected = rec.hash, expected + 1
            report.records += 1
            tree.append(rec.hash)
            if progress is not None and report.records % PROGRESS_EVERY == 0:
                progress(report.records)
            while pending and pending[0].size == tree.size:
                checkpoint = pending.pop(0)
                if checkpoint.root != tree.root().hex():
                    return report.fail("rewritten", (
                        f"the first {checkpoint.size} records do not have the root signed "
                        f"at {_when(checkpoint)} (records 1-{checkpoint.size} were rewritten, "
                        "their chain recomputed)"))
                report.checkpoints += 1
                report.covered = checkpoint.size
    report.last_sequence, report.last_hash = expected - 1, prev
    if pending:
        return report.fail("truncated", (
            f"a checkpoint signed at {_when(pending[-1])} covers {pending[-1].size} records "
            f"but the log ends at {report.records}: {pending[-1].size - report.records} "
            "record(s) were removed from the end"))
    _check_head(directory, report)
    for aside in sorted(directory.glob(SET_ASIDE_GLOB)):
        report.warnings.append(f"{aside.name}: a segment set aside at a restart, holding no "
                               "complete record (a crash during its first write)")
    if report.intact and checkpoints and report.records > report.covered:
        report.warnings.append(f"{report.records - report.covered} record(s) after the last "
                               f"checkpoint (size {report.covered}) are not yet covered by a "
                               "signature")
    return report


def _signed(witness: Witness | None, public_key: Ed25519PublicKey | None,
            report: Report) -> list[Checkpoint]:
    """The witness's checkpoints, each checked against the key."""
    if witness is None:
        report.warnings.append("no witness given: a rewrite of the whole log with its chain "
                               "recomputed cannot be told")
        return []
    try:
        checkpoints = witness.checkpoints()
    except CheckpointError as exc:
        report.fail("forged checkpoint", str(exc))
        return []
    if not checkpoints:
        report.warnings.append("the witness holds no checkpoint yet")
        return []
    if public_key is None:
        report.warnings.append("no public key given: checkpoint signatures were not checked")
        return checkpoints
    for checkpoint in checkpoints:
        try:
            checkpoint.check(public_key)
        except CheckpointError as exc:
            report.fail("forged checkpoint", f"{exc}: refused")
            return []
    return checkpoints


def _when(checkpoint: Checkpoint) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(checkpoint.time_unix_nanos / 1e9,
                                           datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_head(directory: Path, report: Report) -> None:
    head_path = directory / HEAD_FILE
    if not head_path.exists():
        report.warnings.append("no HEAD marker: cannot tell whether records were cut "
                               "from the end")
        return
    head = json.loads(head_path.read_text())
    if head["sequence"] > report.last_sequence:
        report.fail("truncated", f"HEAD records sequence {head['sequence']} but the log ends "
                    f"at {report.last_sequence}: records were removed from the end")
    elif head["sequence"] == report.last_sequence and head["hash"] != report.last_hash.hex():
        report.fail("tampered", f"record {report.last_sequence} differs from the one HEAD "
                    "records")
    elif head["sequence"] < report.last_sequence:
        report.warnings.append(f"HEAD lags at {head['sequence']} (a crash before the marker "
                               "was updated)")


def recover(directory: Path, tree: Frontier) -> tuple[int, bytes]:
    """The last complete record's (sequence, hash): where a writer's chain continues;
    every record's hash goes into ``tree``."""
    sequence, last = 0, GENESIS
    for item in located(directory):
        sequence, last = item.record.sequence, item.record.hash
        tree.append(last)
    return sequence, last


def write_head(directory: Path, sequence: int, last: bytes, segment: str) -> None:
    """Move the HEAD marker (a new file renamed over the old)."""
    head = directory / HEAD_FILE
    tmp = head.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sequence": sequence, "hash": last.hex(), "segment": segment}))
    os.replace(tmp, head)


@dataclass(frozen=True, slots=True)
class Located:
    """A record and where it lies."""

    record: DecisionRecord
    segment: str
    offset: int


def located(directory: Path, after: tuple[str, int] | None = None) -> Iterator[Located]:
    """Every readable record in order, with its segment and byte offset; ``after``
    (segment, offset) starts at that point."""
    for path in segments(directory):
        start = 0
        if after is not None:
            if path.name < after[0]:
                continue
            if path.name == after[0]:
                start = after[1]
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
        for frame in read_frames(data, start):
            if frame.record is None:
                break
            yield Located(frame.record, path.name, start + frame.offset)


def records(directory: Path) -> Iterator[DecisionRecord]:
    """Every readable record, in order."""
    for item in located(directory):
        yield item.record


def record_at(directory: Path, segment: str, offset: int) -> DecisionRecord | None:
    """The record at ``offset`` of ``segment``, if one is there and its own hash holds."""
    path = directory / segment
    if "/" in segment or not path.is_file():
        return None
    with path.open("rb") as f:
        f.seek(offset)
        head = f.read(4)
        if len(head) < 4:
            return None
        data = head + f.read(int.from_bytes(head, "big"))
    frame = next(read_frames(data, offset), None)
    if frame is None or frame.record is None or record_hash(frame.record) != frame.record.hash:
        return None
    return frame.record


def prove(directory: Path, decision_id: str, checkpoint: Checkpoint) -> dict[str, Any]:
    """An inclusion proof of the record ``decision_id`` in ``checkpoint``'s tree."""
    leaves: list[bytes] = []
    found: DecisionRecord | None = None
    for rec in records(directory):
        if len(leaves) == checkpoint.size:
            break
        if rec.decision_id == decision_id and found is None:
            found = rec
        leaves.append(leaf_hash(rec.hash))
    if found is None:
        raise LookupError(f"no record of decision {decision_id!r} among the "
                          f"{checkpoint.size} records the latest checkpoint covers")
    index = found.sequence - 1
    return {"format": PROOF_FORMAT, "leaf_index": index, "tree_size": checkpoint.size,
            "record": base64.b64encode(found.SerializeToString(deterministic=True)).decode(),
            "path": [h.hex() for h in inclusion_proof(leaves, index)],
            "checkpoint": checkpoint.to_json()}


def check_proof(doc: Any, public_key: Ed25519PublicKey) -> DecisionRecord:
    """The proven record, if ``doc`` proves it is in a checkpoint ``public_key`` signed;
    else CheckpointError saying what failed."""
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise CheckpointError(f"not an inclusion proof (format {PROOF_FORMAT!r} expected)")
    checkpoint = Checkpoint.from_json(doc.get("checkpoint"))
    checkpoint.check(public_key)
    try:
        record = DecisionRecord()
        record.ParseFromString(base64.b64decode(doc["record"], validate=True))
        path = [bytes.fromhex(h) for h in doc["path"]]
        index, size = int(doc["leaf_index"]), int(doc["tree_size"])
    except (KeyError, TypeError, ValueError, DecodeError) as exc:
        raise CheckpointError(f"malformed proof: {exc!r}") from exc
    if record_hash(record) != record.hash:
        raise CheckpointError("the record does not match its own hash: it was altered")
    if size != checkpoint.size:
        raise CheckpointError(f"the proof is for a tree of {size}, the checkpoint of "
                              f"{checkpoint.size}")
    root = root_from_proof(leaf_hash(record.hash), index, size, path)
    if root is None or root.hex() != checkpoint.root:
        raise CheckpointError("the record is not in the signed tree (the path does not lead "
                              "to the signed root)")
    return record
