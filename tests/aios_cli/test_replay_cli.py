"""`aios replay` on a real sidecar and Triton: 10,000 decisions recorded by version 1,
replayed against version 2, agree exactly as scoring the same rows with version 2's
model.pt directly (scores to 1e-6); the replayed calls are recorded as replays and counted
apart from decisions."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import torch

from aios.auditlog import records
from aios_cli.claims import synthesize_claims
from tests.conftest import Stack
from tests.e2e.test_decisions import sidecar_config
from tests.helpers import MODEL_REPO, REPO, free_ports, infer_json, running, write_config


def metric(address: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"http://{address}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_replay_of_10000_decisions_matches_the_candidates_own_model(
        stack: Stack, tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    config = sidecar_config(stack, http_port, grpc_port, tmp_path)
    path = write_config(tmp_path / "replay-sidecar.yaml", config)
    claims, _ = synthesize_claims(10_000, seed=11)
    address = f"127.0.0.1:{http_port}"
    with running("sidecar", config, http_port, tmp_path):
        for start in range(0, len(claims), 50):
            resp = httpx.post(f"http://{address}/v2/models/claims_risk/versions/1/infer",
                              content=infer_json(claims[start:start + 50].tolist()),
                              headers={"x-aios-business-key": f"batch-{start}"}, timeout=30)
            assert resp.status_code == 200, resp.text
        decisions = metric(address, "aios_sidecar_requests_total", protocol="rest")
        done = subprocess.run(
            [sys.executable, "-m", "aios_cli", "replay", "--config", str(path),
             "--model", "claims_risk", "--candidate", "2", "--dir",
             str(tmp_path / "decisions"), "--url", f"http://{address}", "--rate", "1e6",
             "--batch", "64", "--out", str(tmp_path / "out")],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert metric(address, "aios_sidecar_requests_total", protocol="replay") == 157
        assert metric(address, "aios_sidecar_requests_total", protocol="rest") == decisions
    report = json.loads((tmp_path / "out" / "replay.json").read_text())
    with (tmp_path / "out" / "replay_rows.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["rows"] == 10_000
    model = torch.jit.load(str(MODEL_REPO / "claims_risk" / "2" / "model.pt")).eval()
    with torch.inference_mode():
        direct = model(torch.from_numpy(claims.astype(np.float32))).numpy().reshape(-1)
    replayed = np.asarray([float(r["candidate"]) for r in rows])
    np.testing.assert_allclose(replayed, direct, rtol=0, atol=1e-6)
    recorded = np.asarray([float(r["recorded"]) for r in rows])
    agreed = int(((recorded >= 0.5) == (direct >= 0.5)).sum())
    assert report["agreement"]["agreed"] == agreed
    assert report["agreement"]["rows"] == 10_000
    low, high = report["agreement"]["ci95"]
    assert low < agreed / 10_000 < high
    assert set(report["by_feature_decile"]) >= {"claim_amount", "claimant_age"}
    assert (tmp_path / "out" / "replay.png").stat().st_size > 10_000
    assert "agreement at threshold 0.5: " in done.stdout
    kinds = [r.kind for r in records(tmp_path / "decisions")]
    assert kinds.count("replay") == 157 and kinds.count("") == 200
