"""The `aios` command line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from aios.cli import main
from aios.config import StackConfig
from tests.helpers import REPO, gateway_config, write_config

COMMANDS = [["up"], ["gateway"], ["sidecar"], ["triton"], ["models", "build"], ["token"], []]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "aios")
def test_help(command: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios", *command, "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"usage: aios {' '.join(command)}".rstrip())


def test_token_is_signed_with_the_configured_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "alice", "--tenant", "acme", "--scope", "infer:claims_risk",
                 "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    auth = StackConfig().gateway.auth
    claims = jwt.decode(token, auth.hs256_secret, algorithms=["HS256"],
                        audience=auth.audience, issuer=auth.issuer)
    assert (claims["sub"], claims["tenant"], claims["scope"]) == ("alice", "acme",
                                                                   "infer:claims_risk")
    assert claims["exp"] - claims["iat"] == 60


def test_bad_config_exits_2_naming_the_field(tmp_path: object, caplog: pytest.LogCaptureFixture,
                                             ) -> None:
    path = tmp_path / "bad.yaml"  # type: ignore[operator]
    path.write_text("gateway: {server: {http_port: 70000, grpc_port: 1}}\n")
    assert main(["token", "--config", str(path)]) == 2
    assert "gateway.server.http_port" in caplog.text


def test_a_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config, _, _ = gateway_config("127.0.0.1:1", "127.0.0.1:1", {})
        config["gateway"]["server"]["http_port"] = port
        config["gateway"]["routing"] = {"state_file": str(tmp_path / "routes.json")}
        path = write_config(tmp_path / "gateway.yaml", config)
        out = subprocess.run([sys.executable, "-m", "aios", "gateway", "--config", str(path)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot run:" in out.stderr and "address already in use" in out.stderr
    assert "Traceback" not in out.stderr
