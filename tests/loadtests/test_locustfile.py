"""The locustfile runs headless against the real stack (this proves it works; it times
nothing)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Stack
from tests.helpers import REPO, TEST_TENANT


def test_steady_scenario_runs_headless(stack: Stack, tmp_path: Path) -> None:
    env = {**os.environ, "AIOS_CONFIG": str(stack.config_path),
           "AIOS_GRPC": stack.gateway_grpc, "AIOS_LOADTEST_TENANTS": TEST_TENANT}
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
         "--users", "6", "--spawn-rate", "6", "--run-time", "5s", "--tags", "steady",
         "--host", f"http://{stack.gateway_http}", "--csv", str(tmp_path / "locust"),
         "--only-summary", "--stop-timeout", "5", "RestUser", "GrpcUser"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("rest json", "rest binary", "grpc infer"):
        assert int(rows[name]["Request Count"]) > 0, (name, out.stderr[-2000:])
        assert int(rows[name]["Failure Count"]) == 0, (name, out.stderr[-2000:])
