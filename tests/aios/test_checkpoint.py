"""Signed checkpoints against each attack on the log, as an auditor runs `aios audit`:
real files, the real sidecar log writer, the CLI in a subprocess."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aios.auditlog import HEAD_FILE, records, segments, verify
from aios.chain import GENESIS, read_frames, seal
from aios.checkpoint import load_public_key, write_key_pair
from aios.config import DecisionLogSettings
from aios.witness import DirectoryWitness
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import DecisionLog
from tests.helpers import REPO


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "signing.pem", tmp_path / "keys" / "signing.pub.pem"
    write_key_pair(private, public)
    return private, public


async def write_log(log_dir: Path, private: Path, n: int = 30) -> None:
    settings = DecisionLogSettings.model_validate({
        "directory": str(log_dir), "signing_key_file": str(private),
        # By count only: a slow disk must not let the 10 s timer add a checkpoint.
        "checkpoint_every_records": 10, "checkpoint_every_s": 3600,
        "max_segment_bytes": 4096})
    async with DecisionLog(settings, CollectorRegistry()) as log:
        for i in range(n):
            await log.append(DecisionRecord(request_id=f"req-{i}", decision_id=f"d-{i}",
                                            model="claims_risk", version="2", outcome="ok"))


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aios_cli", "audit", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)


def rewrite_from(log_dir: Path, sequence: int) -> None:
    """What an insider with write access to the folder can do: change a record, chain
    everything after it again, and write HEAD to match."""
    recs = list(records(log_dir))
    for path in segments(log_dir):
        path.unlink()
    prev, data = GENESIS, b""
    for rec in recs:
        if rec.sequence == sequence:
            rec.outcome = "rejected"
        data += seal(rec, rec.sequence, prev)
        prev = rec.hash
    (log_dir / "segment-0000000000000001.log").write_bytes(data)
    (log_dir / HEAD_FILE).write_text(json.dumps({"sequence": recs[-1].sequence,
                                                 "hash": prev.hex(), "segment": "x"}))


def cut_tail(log_dir: Path, keep: int) -> None:
    """Cut records from the end and move HEAD back to match (or delete it)."""
    rewrite_from(log_dir, 0)
    only = segments(log_dir)[0]
    frames = list(read_frames(only.read_bytes()))
    only.write_bytes(only.read_bytes()[:frames[keep].offset])
    last = frames[keep - 1].record
    assert last is not None
    (log_dir / HEAD_FILE).write_text(json.dumps({"sequence": last.sequence,
                                                 "hash": last.hash.hex(), "segment": "x"}))


async def test_checkpoints_are_signed_and_published_outside_the_log(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    await write_log(tmp_path / "log", keys[0])
    witness = DirectoryWitness(tmp_path / "log-checkpoints")
    sizes = [c.size for c in witness.checkpoints()]
    assert sizes[:3] == [10, 20, 30] and sizes[-1] == 30
    for checkpoint in witness.checkpoints():
        checkpoint.check(load_public_key(keys[1]))
    assert not list((tmp_path / "log").glob("*checkpoint*"))
    out = audit("verify", "--dir", str(tmp_path / "log"), "--public-key", str(keys[1]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "intact: 30 records" in out.stdout
    assert "the latest covering 30 records" in out.stdout


ATTACKS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "a full rewrite, chain and HEAD recomputed": (
        lambda d: rewrite_from(d, 15), "REWRITTEN", "the first 20 records do not have the root"),
    "records cut from the end, HEAD moved back": (
        lambda d: cut_tail(d, 25), "TRUNCATED", "covers 30 records but the log ends at 25: "
        "5 record(s) were removed"),
    "records cut from the end, HEAD deleted": (
        lambda d: (cut_tail(d, 22), (d / HEAD_FILE).unlink()), "TRUNCATED",
        "the log ends at 22: 8 record(s)"),
}


@pytest.mark.parametrize(("attack", "verdict", "named"), ATTACKS.values(), ids=ATTACKS.keys())
async def test_what_the_chain_cannot_see_the_signed_checkpoint_does(
        tmp_path: Path, keys: tuple[Path, Path], attack: Callable[[Path], None], verdict: str,
        named: str) -> None:
    log_dir = tmp_path / "log"
    await write_log(log_dir, keys[0])
    assert audit("verify", "--dir", str(log_dir)).returncode == 0
    attack(log_dir)
    without = verify(log_dir)
    assert without.intact, "the chain alone is fooled (why checkpoints exist)"
    out = audit("verify", "--dir", str(log_dir), "--public-key", str(keys[1]))
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith(f"{verdict}: "), out.stdout
    assert named in out.stdout, out.stdout


async def test_a_checkpoint_signed_with_another_key_is_refused(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log_dir = tmp_path / "log"
    await write_log(log_dir, keys[0])
    other = tmp_path / "other.pem"
    write_key_pair(other, tmp_path / "other.pub.pem")
    rewrite_from(log_dir, 15)
    # The insider also writes checkpoints for the rewritten log, signed with their own key.
    forged_settings = DecisionLogSettings.model_validate({
        "directory": str(tmp_path / "forged"), "signing_key_file": str(other),
        "witness_directory": str(tmp_path / "log-checkpoints"),
        "checkpoint_every_records": 10})
    (tmp_path / "forged").mkdir()
    for path in segments(log_dir):
        (tmp_path / "forged" / path.name).write_bytes(path.read_bytes())
    async with DecisionLog(forged_settings, CollectorRegistry()) as log:
        await log.append(DecisionRecord(request_id="more"))
    out = audit("verify", "--dir", str(log_dir), "--public-key", str(keys[1]))
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith("FORGED CHECKPOINT: "), out.stdout
    assert "is signed by key" in out.stdout and "refused" in out.stdout


async def test_an_inclusion_proof_checks_with_the_public_key_alone(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log_dir = tmp_path / "log"
    await write_log(log_dir, keys[0])
    proof = tmp_path / "proof.json"
    out = audit("prove", "d-17", "--dir", str(log_dir), "--out", str(proof))
    assert out.returncode == 0, out.stderr
    # The auditor has the proof file and the public key, nothing else.
    log_gone = tmp_path / "elsewhere"
    log_dir.rename(log_gone)
    good = audit("check-proof", str(proof), "--public-key", str(keys[1]))
    assert good.returncode == 0, good.stdout
    assert good.stdout.startswith("valid: decision d-17 (record 18") and "tree of 30" in \
        good.stdout
    original = proof.read_text()
    doc = json.loads(original)
    record = DecisionRecord()
    record.ParseFromString(base64.b64decode(doc["record"]))
    record.outcome = "rejected"
    doc["record"] = base64.b64encode(record.SerializeToString()).decode()
    proof.write_text(json.dumps(doc))
    bad = audit("check-proof", str(proof), "--public-key", str(keys[1]))
    assert (bad.returncode, bad.stdout.strip()) == (
        1, "INVALID: the record does not match its own hash: it was altered")
    other = tmp_path / "other.pem"
    write_key_pair(other, tmp_path / "other.pub.pem")
    proof.write_text(original)
    wrong = audit("check-proof", str(proof), "--public-key", str(tmp_path / "other.pub.pem"))
    assert wrong.returncode == 1 and "is signed by key" in wrong.stdout
