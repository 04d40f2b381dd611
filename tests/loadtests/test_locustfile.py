"""The locustfile runs headless against the real stack (this proves it works; it times
nothing)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Stack
from tests.helpers import REPO, TEST_TENANT, gateway_config, running, write_config


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


def test_canary_scenario_stays_within_a_per_row_quota_and_survives_stale_revisions(
        stack: Stack, tmp_path: Path) -> None:
    """Operators racing each other on one table (409s, retried), and users of a tenant that
    pays per batch row at a rate the unpaced load would exceed: no failures, and the run
    ends with its summary."""
    models = {"claims_risk": {"targets": {
        "stable": {"backend": "local", "version": "2", "weight": 90},
        "canary": {"backend": "local", "version": "1", "weight": 10}}}}
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, models,
        quota={"tenants": {"per-row": {"rate_per_s": 300, "burst": 150, "cost": "batch"}}})
    path = write_config(tmp_path / "gateway.yaml", config)
    with running("gateway", config, http_port, tmp_path):
        env = {**os.environ, "AIOS_CONFIG": str(path), "AIOS_GRPC": f"127.0.0.1:{grpc_port}",
               "AIOS_LOADTEST_TENANTS": "per-row"}
        out = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
             "--users", "12", "--spawn-rate", "12", "--run-time", "8s", "--tags", "canary",
             "--host", f"http://127.0.0.1:{http_port}", "--csv", str(tmp_path / "locust"),
             "--html", str(tmp_path / "report.html"), "--only-summary", "--stop-timeout",
             "5", "RestUser", "GrpcUser", "Ops"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("rest json", "rest binary", "grpc infer", "admin weights"):
        assert int(rows[name]["Request Count"]) > 0, (name, out.stdout[-2000:])
    assert int(rows["Aggregated"]["Failure Count"]) == 0, out.stdout[-3000:]
    assert out.returncode == 0, out.stderr[-2000:]
    summary = out.stdout[out.stdout.index("request          "):]
    assert f"HTML report: {tmp_path / 'report.html'}" in summary
    assert [line.split()[0] for line in summary.splitlines()[1:5]] == [
        "admin", "admin", "grpc", "rest"]


def test_each_make_loadtest_scenario_names_users_with_tasks_for_it(stack: Stack) -> None:
    """Locust fails a user class none of whose tasks has the run's tag: `make loadtest`
    names, per scenario, only users that have one. (Checked in a process of its own:
    importing the locustfile patches the standard library for gevent.)"""
    scenarios = dict(re.findall(r"^USERS_(\w+) := (.+)$", (REPO / "Makefile").read_text(),
                                re.MULTILINE))
    assert sorted(scenarios) == ["canary", "noisy", "shadow", "steady"]
    check = (
        "import json, sys\n"
        "import loadtests.locustfile as f\n"
        "for scenario, users in json.loads(sys.argv[1]).items():\n"
        "    for name in users.split():\n"
        "        tags = [getattr(t, 'locust_tag_set', set()) for t in getattr(f, name).tasks]\n"
        "        assert any(scenario in t for t in tags), (scenario, name)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", check, json.dumps(scenarios)], cwd=REPO,
                          env={**os.environ, "AIOS_CONFIG": str(stack.config_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
