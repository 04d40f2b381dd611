"""Starting real processes for the tests: free ports, stack configs, process trees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aios.checkpoint import write_key_pair
from loadtests.ports import free_ports

REPO = Path(__file__).resolve().parent.parent
MODEL_REPO = REPO / "model_repo"
STARTUP_TIMEOUT_S = 180.0


@contextlib.contextmanager
def refused_ports(n: int) -> Iterator[list[int]]:
    """``n`` ports on 127.0.0.1 that refuse connections while the block runs: bound and
    never listening, so no server started meanwhile (another test's Redis, say) can take
    one of them, as it could a port `free_ports` merely found free."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class StackPorts:
    triton_http: int
    triton_grpc: int
    triton_metrics: int
    sidecar_http: int
    sidecar_grpc: int
    gateway_http: int
    gateway_grpc: int

    @classmethod
    def allocate(cls) -> StackPorts:
        return cls(*free_ports(7))


TEST_MODELS = REPO / "tests" / "model_repo"
TIGHT_QUOTA = {"rate_per_s": 1, "burst": 5}


def repo_with_test_models(tmp: Path) -> Path:
    """A model repository with claims_risk and the test-only models, linked in."""
    repo = tmp / "model_repo"
    repo.mkdir(exist_ok=True)
    for model in [MODEL_REPO / "claims_risk", *TEST_MODELS.iterdir()]:
        if not (repo / model.name).exists():
            (repo / model.name).symlink_to(model)
    return repo


def stack_config(ports: StackPorts, tmp: Path, model_repo: Path = MODEL_REPO,
                 **overrides: Any) -> dict[str, Any]:
    """A stack config for ``ports``, as the YAML mapping (with a signing key for the
    decision log's checkpoints, made in ``tmp``)."""
    h = "127.0.0.1"
    signing_key = tmp / "audit-signing.pem"
    if not signing_key.exists():
        write_key_pair(signing_key, tmp / "audit-signing.pub.pem")
    config: dict[str, Any] = {
        "triton": {"model_repository": str(model_repo), "http_port": ports.triton_http,
                   "grpc_port": ports.triton_grpc, "metrics_port": ports.triton_metrics},
        "sidecar": {"server": {"http_port": ports.sidecar_http, "grpc_port": ports.sidecar_grpc},
                    "triton": {"http": f"{h}:{ports.triton_http}",
                               "grpc": f"{h}:{ports.triton_grpc}"},
                    "decision_log": {"directory": str(tmp / "decisions"),
                                     "signing_key_file": str(signing_key),
                                     "checkpoint_every_records": 50,
                                     "checkpoint_every_s": 0.5},
                    "parity": {"model_repository": str(model_repo)}},
        "gateway": {"server": {"http_port": ports.gateway_http, "grpc_port": ports.gateway_grpc},
                    "backends": {"local": {"http": f"{h}:{ports.sidecar_http}",
                                           "grpc": f"{h}:{ports.sidecar_grpc}"}},
                    "models": {"claims_risk": {"backend": "local",
                                               "sticky": "header:x-claim-id"},
                               "slow": {"backend": "local"}},
                    "routing": {"state_file": str(tmp / "routes.json")},
                    "change_log": {"directory": str(tmp / "route-changes"),
                                   "signing_key_file": str(signing_key)},
                    "audit": {"logs": {"local": {
                        "directory": str(tmp / "decisions"),
                        "public_key_file": str(tmp / "audit-signing.pub.pem")}},
                        "model_repository": str(model_repo),
                        "access_log": {"directory": str(tmp / "audit-reads"),
                                       "signing_key_file": str(signing_key)}},
                    "auth": TEST_AUTH,
                    # The functional tests must not trip over quotas; test_quota sets its own.
                    "quota": {"tenants": {
                        TEST_TENANT: {"rate_per_s": 1e6, "burst": 100000},
                        **{t: TIGHT_QUOTA for t in ("tight-rest", "tight-grpc")}}}},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def aios(*args: str, log: Path, cwd: Path = REPO,
         env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``aios ARGS`` in its own process group, output to ``log``; ``env`` adds to
    this process's environment."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "aios_cli", *args], cwd=cwd,
                                env={**os.environ, **env} if env else None,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _health(port: int, probe: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/{probe}",
                                    timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def http_ready(port: int) -> bool:
    """Whether a KServe server on ``port`` answers ready."""
    return _health(port, "ready")


def wait_until(predicate: Any, timeout_s: float, what: str,
               process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-4000:] if log else ""
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{tail}")
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log else ""
    raise TimeoutError(f"{what} not within {timeout_s}s\n{tail}")


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def interrupt_and_wait(process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """Ctrl-C, as a terminal would send it to the foreground process."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


TEST_TENANT = "tests"
# The test stacks' own HS256 secret (there is no built-in one).
TEST_HS256_SECRET = "tests-only-hs256-secret-" + "0123456789abcdef" * 2
TEST_AUTH = {"hs256_secret": TEST_HS256_SECRET}


def token(scope: str = "infer:*", tenant: str = TEST_TENANT, subject: str = "pytest",
          ttl_s: int = 3600, **auth: Any) -> str:
    """A token signed with the secret the test stacks use."""
    from aios.config import AuthSettings
    from aios_cli.tokens import mint_token

    return mint_token(AuthSettings(**{**TEST_AUTH, **auth}), subject, tenant, scope, ttl_s)


def bearer(scope: str = "infer:*", tenant: str = TEST_TENANT) -> dict[str, str]:
    """Authorization header for a token with ``scope``."""
    return {"authorization": f"Bearer {token(scope, tenant)}"}


def infer_json(batch: list[list[float]], parameters: dict[str, Any] | None = None) -> bytes:
    """A KServe v2 JSON infer body scoring ``batch`` claims."""
    doc: dict[str, Any] = {"inputs": [{"name": "features", "datatype": "FP32",
                                       "shape": [len(batch), 8], "data": batch}]}
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


def listening(port: int) -> bool:
    """Whether a KServe server answers live on ``port``."""
    return _health(port, "live")


@contextlib.contextmanager
def running(service: str, config: dict[str, Any], http_port: int, tmp: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``aios SERVICE`` on ``config`` until the block ends; then SIGTERM, exit 0."""
    # Each service keeps its state (routing tables, decision log) in the test's own
    # folder, never in the repository's var/.
    if service == "gateway":
        routing = config["gateway"].setdefault("routing", {})
        routing.setdefault("state_file", str(tmp / f"routes-{http_port}.json"))
    else:
        log = config["sidecar"].setdefault("decision_log", {})
        log.setdefault("directory", str(tmp / f"decisions-{http_port}"))
    path = write_config(tmp / f"{service}-{http_port}.yaml", config)
    log = tmp / f"{service}-{http_port}.log"
    process = aios(service, "--config", str(path), log=log, env=env)
    try:
        wait_until(lambda: listening(http_port), 30, f"{service} listening", process, log)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            assert process.wait(30) == 0, log.read_text()[-3000:]


def gateway_config(sidecar_http: str, sidecar_grpc: str, models: dict[str, Any],
                   server: dict[str, Any] | None = None,
                   **extra: Any) -> tuple[dict[str, Any], int, int]:
    """A gateway config on free ports in front of a sidecar (backend "local"), with the
    test tenant's quota out of the way; extra sections (and backends) as given."""
    http_port, grpc_port = free_ports(2)
    backends = {"local": {"http": sidecar_http, "grpc": sidecar_grpc},
                **extra.pop("backends", {})}
    section = {"server": {"http_port": http_port, "grpc_port": grpc_port, **(server or {})},
               "backends": backends, "models": models,
               "quota": {"tenants": {TEST_TENANT: {"rate_per_s": 1e6, "burst": 100000}}},
               "auth": TEST_AUTH,
               # Never the checkout's var/: each gateway's changes in a folder of its own.
               "change_log": {"directory": tempfile.mkdtemp(prefix="aios-changes-")},
               **extra}
    return {"gateway": section}, http_port, grpc_port


def schema_flags(record: Any) -> list[str]:
    """A decision record's schema flags: its parity flags without the drift flags, which
    the suite's shared stack raises as it sees thousands of copies of the same claims."""
    return [f for f in record.parity_flags if not f.startswith("drift:")]
