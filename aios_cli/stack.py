"""`aios up`: Triton, sidecar and gateway from one config file; Ctrl-C stops all of them."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from aios.config import AuthSettings, StackConfig, load_auth
from aios_cli.process import (
    LAUNCHER_STOP_TIMEOUT_S,
    StartupError,
    Stop,
    child_preexec,
    raise_stop,
    stop_group,
    wait_ready,
)
from aios_cli.tokens import mint_token

logger = logging.getLogger(__name__)

SERVICE_READY_TIMEOUT_S = 30.0
EXAMPLE_CLAIM = [5255.708, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]


DEFAULT_LOG_DIR = Path("var/log")
LOG_TAIL_LINES = 20


def _spawn(command: str, config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    # Each child leads its own process group so that stopping it reaches its children;
    # its output goes to its own log (Triton's start-up noise included), not the terminal.
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "aios_cli", command, "--config",
                                 str(config_path)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=child_preexec)


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` of a service's log, to show beside an error."""
    try:
        text = log.read_bytes()[-64 * 1024:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def banner(config: StackConfig, auth: AuthSettings) -> str:
    """What `aios up` prints once everything is ready: URLs, where the development secret
    is, and a curl to paste (``auth`` as `load_auth` resolved it)."""
    gw = config.gateway.server
    rest = f"http://{gw.host}:{gw.http_port}"
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                   "data": EXAMPLE_CLAIM}]})
    key: list[str] = []
    header: list[str] = []
    if auth.enabled and auth.hs256_secret is not None:
        source = config.gateway.auth.hs256_secret_file or "the config file"
        key = [f"  HS256 secret  {source} (this stack's own; never reuse it)"]
        token = mint_token(auth, "dev", "dev", "infer:*")
        header = [f"    -H 'Authorization: Bearer {token}' \\"]
    elif auth.enabled:
        key = ["  tokens        from your identity provider (JWKS)"]
    return "\n".join([
        "",
        "AIOS stack is up.",
        f"  gateway REST  {rest}",
        f"  gateway gRPC  {gw.host}:{gw.grpc_port}",
        f"  sidecar REST  http://{config.sidecar.server.host}:{config.sidecar.server.http_port}",
        f"  Triton HTTP   http://{config.triton.http_address}",
        *key,
        "",
        "Score a claim:",
        f"  curl -s {rest}/v2/models/claims_risk/infer \\",
        *header,
        "    -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


def run_stack(config: StackConfig, config_path: Path,
              log_dir: Path = DEFAULT_LOG_DIR) -> int:
    """Start the stack in dependency order, each service logging to its own file under
    ``log_dir`` with a line per service on the terminal; wait for a signal or a crash,
    stop in reverse."""
    # A missing or short secret is an error before anything starts.
    auth = load_auth(config.gateway.auth)
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    previous = {s: signal.signal(s, raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def start(name: str, address: str, timeout_s: float) -> None:
        log = log_dir / f"{name}.log"
        print(f"starting {name:<8} (log: {log}) ...", end=" ", flush=True)
        began = time.monotonic()
        process = _spawn(name, config_path, log)
        children.append((name, process))
        try:
            wait_ready(name, address, timeout_s, process)
        except StartupError:
            print("failed", flush=True)
            print(f"the end of {log}:\n{log_tail(log)}", file=sys.stderr, flush=True)
            raise
        print(f"ready in {time.monotonic() - began:.1f} s", flush=True)

    try:
        triton = config.triton
        if triton.external_http:
            wait_ready("external Triton", triton.external_http, triton.startup_timeout_s)
        else:
            start("triton", triton.http_address, triton.startup_timeout_s)
        for name, server in (("sidecar", config.sidecar.server),
                             ("gateway", config.gateway.server)):
            start(name, f"{server.host}:{server.http_port}", SERVICE_READY_TIMEOUT_S)
        print(banner(config, auth), flush=True)
        while True:
            for name, process in children:
                if process.poll() is not None:
                    logger.error("%s exited with code %d; stopping the stack; the end of "
                                 "%s:\n%s", name, process.returncode,
                                 log_dir / f"{name}.log", log_tail(log_dir / f"{name}.log"))
                    return 1
            time.sleep(0.5)
    except Stop:
        logger.info("stopping the stack")
        return 0
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        for name, process in reversed(children):
            logger.info("%s stopped (exit code %d)", name,
                        stop_group(name, process, LAUNCHER_STOP_TIMEOUT_S))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
