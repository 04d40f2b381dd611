"""The gateway's change log: routing changes chained and signed, read with `aios audit`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aios.auditlog import records, segments, verify
from aios.checkpoint import load_public_key, write_key_pair
from aios.config import SignedLogSettings
from aios.signedlog import SignedLog
from aios.witness import DirectoryWitness
from gateway.changelog import change_record
from gateway.routestore import Change
from tests.helpers import REPO

CHANGES = [
    Change("claims_risk", 1, "alice", 1_796_000_000.0, "replace", "first table", None,
           {"targets": {"stable": {"backend": "local", "version": "1", "weight": 100}}}),
    Change("claims_risk", 2, "bob", 1_796_000_060.0, "set_weights", "canary healthy",
           {"targets": {"canary": {"weight": 0}}}, {"targets": {"canary": {"weight": 10}}}),
    Change("claims_risk", 3, "alice", 1_796_000_120.0, "set_weights", "",
           {"targets": {"canary": {"weight": 10}}}, {"targets": {"canary": {"weight": 50}}}),
]


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aios_cli", "audit", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)


async def test_each_change_is_chained_signed_and_readable(tmp_path: Path) -> None:
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    settings = SignedLogSettings(directory=tmp_path / "changes",
                                 signing_key_file=tmp_path / "k.pem")
    log = await SignedLog.open(settings, "change_log")
    for change in CHANGES[:2]:
        await log.append(change_record(change), "a change")
    log = await SignedLog.open(settings, "change_log")  # a restart continues the chain
    await log.append(change_record(CHANGES[2]), "a change")
    assert len(segments(tmp_path / "changes")) == 2
    witness = DirectoryWitness(tmp_path / "changes-checkpoints")
    assert [c.size for c in witness.checkpoints()] == [1, 2, 3], "signed before answering"
    report = verify(tmp_path / "changes", witness, load_public_key(tmp_path / "k.pub.pem"))
    assert report.intact and report.records == report.covered == 3, report
    [_, second, _] = records(tmp_path / "changes")
    assert (second.kind, second.subject, second.route_revision, second.route_change.reason) \
        == ("route_change", "bob", 2, "canary healthy")
    assert json.loads(second.route_change.after_json) == {"targets": {"canary": {"weight": 10}}}

    table = audit("search", "--dir", str(tmp_path / "changes")).stdout.splitlines()
    assert table[0].split() == ["RECORD", "TIME", "MODEL", "REVISION", "WHO", "ACTION",
                                "REASON"]
    assert table[2].split()[2:7] == ["claims_risk", "2", "bob", "set_weights", "canary"]
    out = audit("verify", "--dir", str(tmp_path / "changes"), "--public-key",
                str(tmp_path / "k.pub.pem"))
    assert out.returncode == 0 and "the latest covering 3 records" in out.stdout


async def test_an_edited_change_is_named_by_verify(tmp_path: Path) -> None:
    log = await SignedLog.open(SignedLogSettings(directory=tmp_path / "changes"), "change_log")
    for change in CHANGES:
        await log.append(change_record(change), "a change")
    [segment] = segments(tmp_path / "changes")
    data = segment.read_bytes()
    segment.write_bytes(data.replace(b"canary healthy", b"canary HEALTHY"))
    out = audit("verify", "--dir", str(tmp_path / "changes"))
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith("TAMPERED: record 2 ") and \
        "content altered" in out.stdout
