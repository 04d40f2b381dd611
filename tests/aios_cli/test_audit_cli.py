"""`aios audit show | search | export` on a real log written by the sidecar's writer,
with feature names from the repository's profile.json."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from aios.checkpoint import write_key_pair
from aios.config import DecisionLogSettings
from proto.decision_record_pb2 import DecisionRecord
from sidecar.decisionlog import DecisionLog
from sidecar.records import add_tensor
from tests.helpers import REPO

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aios_cli", "audit", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)


@pytest.fixture
async def log_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "log"
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    settings = DecisionLogSettings.model_validate({
        "directory": str(directory), "signing_key_file": str(tmp_path / "k.pem"),
        "checkpoint_every_records": 5})
    async with DecisionLog(settings, CollectorRegistry()) as log:
        for i in range(12):
            record = DecisionRecord(
                decision_id=f"d-{i}", request_id=f"r-{i}", business_key=f"C-{i % 3}",
                tenant="acme", model="claims_risk", version="2", outcome="ok",
                route_reason="sticky", route_weights={"stable": 90, "canary": 10},
                time_unix_nanos=1_796_000_000_000_000_000 + i * 60_000_000_000)
            add_tensor(record.inputs, "features", np.asarray([CLAIM], np.float32), "keep")
            add_tensor(record.outputs, "risk_score", np.asarray([[0.1315]], np.float32),
                       "keep" if i % 2 else "hash")
            await log.append(record)
    return directory


def test_show_prints_a_decision_by_id_readably(log_dir: Path) -> None:
    out = audit("show", "d-4", "--dir", str(log_dir))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "decision d-4  (record 5)"
    assert "  business key  C-1" in lines
    assert "  route         target -, reason sticky, revision 0, weights canary=10, " \
        "stable=90" in lines
    assert "    claim_amount                 5255.70 EUR" in lines
    assert any(line.startswith("  output risk_score (FP32 [1, 1])  (hashed, sha256 ")
               for line in lines)
    odd = audit("show", "r-5", "--dir", str(log_dir)).stdout
    assert "  output risk_score (FP32 [1, 1])  0.1315" in odd.splitlines()


@pytest.mark.parametrize(("args", "message"), [
    (["show", "nobody"], "no record of decision or request 'nobody' in"),
    (["search", "--since", "yesterday"], "--since: not an ISO 8601 time ('yesterday')"),
])
def test_what_is_not_there_is_said_plainly(log_dir: Path, args: list[str], message: str) -> None:
    out = audit(*args, "--dir", str(log_dir))
    assert out.returncode in (1, 2) and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_search_pages_through_a_key(log_dir: Path) -> None:
    first = audit("search", "--key", "C-1", "--limit", "2", "--dir", str(log_dir)).stdout
    assert first.splitlines()[-1] == "1-2 of 4 (--page 2 for more)"
    second = json.loads(audit("search", "--key", "C-1", "--limit", "2", "--page", "2",
                              "--json", "--dir", str(log_dir)).stdout)
    assert [d["decision_id"] for d in second["decisions"]] == ["d-7", "d-10"]
    # Records are a minute apart from 2026-11-30 00:53:20 UTC.
    timed = json.loads(audit("search", "--since", "2026-11-30T00:55:00",
                             "--until", "2026-11-30T01:57:20+01:00", "--json", "--dir",
                             str(log_dir)).stdout)
    assert [d["decision_id"] for d in timed["decisions"]] == ["d-2", "d-3"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_writes_decoded_decisions_and_a_manifest(log_dir: Path, tmp_path: Path,
                                                        fmt: str) -> None:
    out_file = tmp_path / f"export.{fmt}"
    out = audit("export", "--format", fmt, "--out", str(out_file), "--dir", str(log_dir))
    assert out.returncode == 0, out.stderr
    if fmt == "jsonl":
        docs = [json.loads(line) for line in out_file.read_text().splitlines()]
        assert docs[0]["inputs"][0]["rows"][0]["claim_amount"]["unit"] == "EUR"
    elif fmt == "parquet":
        docs = pq.read_table(out_file).to_pylist()
        assert docs[0]["claim_amount"] == [pytest.approx(5255.7)]
        assert (docs[0]["risk_score"], docs[1]["decision_id"]) == ("(hash)", "d-1")
    else:
        docs = list(csv.DictReader(out_file.open()))
        assert json.loads(docs[0]["claim_amount"]) == [pytest.approx(5255.7)]
        assert docs[0]["risk_score"] == "(hash)" and docs[0]["route_weights"] == \
            "canary=10,stable=90"
    assert len(docs) == 12
    manifest = json.loads((tmp_path / f"export.{fmt}.manifest.json").read_text())
    assert (manifest["count"], manifest["first"]["sequence"], manifest["last"]["sequence"]) \
        == (12, 1, 12)
    assert manifest["checkpoint"]["size"] >= 12
    assert manifest["file_sha256"] == hashlib.sha256(out_file.read_bytes()).hexdigest()


async def write_to_fleet(settings: DecisionLogSettings) -> None:
    async with DecisionLog(settings, CollectorRegistry()) as log:
        for i in range(10):
            await log.append(DecisionRecord(decision_id=f"d-{i}", business_key=f"C-{i % 2}",
                                            model="claims_risk", version="2", outcome="ok"))


def test_a_fleets_log_is_read_from_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """A sidecar publishing checkpoints to PostgreSQL under its own name; the auditor's
    CLI checks the log against them and searches through an index in the same database."""
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    asyncio.run(write_to_fleet(DecisionLogSettings.model_validate({
        "directory": str(tmp_path / "log"), "signing_key_file": str(tmp_path / "k.pem"),
        "witness_url": postgres_url, "name": "sidecar-7", "checkpoint_every_records": 4})))
    fleet = ("--dir", str(tmp_path / "log"), "--witness", postgres_url, "--log-name",
             "sidecar-7", "--public-key", str(tmp_path / "k.pub.pem"))
    out = audit("verify", *fleet)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the latest covering 10 records" in out.stdout
    assert not list(tmp_path.glob("log-checkpoints")), "nothing on the disk's witness"
    found = json.loads(audit("search", *fleet, "--index", postgres_url, "--key", "C-1",
                             "--json").stdout)
    assert [d["decision_id"] for d in found["decisions"]] == ["d-1", "d-3", "d-5", "d-7", "d-9"]
    assert not (tmp_path / "log" / "index.sqlite3").exists()
    wrong = audit("verify", *fleet[:4], "--log-name", "sidecar-8", *fleet[6:])
    assert wrong.returncode == 0 and "no checkpoint" in wrong.stdout, wrong.stdout
