"""The `aios` command line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from aios.config import StackConfig, load_config
from aios_cli.cli import main
from tests.helpers import REPO, gateway_config, write_config

COMMANDS = [["up"], ["gateway"], ["sidecar"], ["triton"], ["models", "build"], ["token"], []]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "aios")
def test_help(command: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "aios_cli", *command, "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"usage: aios {' '.join(command)}".rstrip())


def test_token_is_signed_with_the_configured_secret(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "hs256.secret"
    secret.write_text("a-secret-of-this-test-only-" + "x" * 20 + "\n")
    path = write_config(tmp_path / "stack.yaml",
                        {"gateway": {"auth": {"hs256_secret_file": str(secret)}}})
    assert main(["token", "--config", str(path), "--sub", "alice", "--tenant", "acme",
                 "--scope", "infer:claims_risk", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    auth = StackConfig().gateway.auth
    claims = jwt.decode(token, secret.read_text().strip(), algorithms=["HS256"],
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


NO_KEY = {
    "no key at all": ({}, "gateway.auth: auth is enabled but has no key: set "
                          "hs256_secret_file, jwks_file or jwks_url"),
    "missing secret file": ({"hs256_secret_file": "{tmp}/nowhere.secret"},
                            "gateway.auth.hs256_secret_file: cannot read {tmp}/nowhere.secret: "
                            "No such file or directory"),
    "short secret file": ({"hs256_secret_file": "{tmp}/short.secret"},
                          "gateway.auth.hs256_secret_file: the secret in {tmp}/short.secret "
                          "has 5 characters, at least 32 are needed"),
}


@pytest.mark.parametrize("command", ["gateway", "token", "up"])
@pytest.mark.parametrize(("auth", "error"), NO_KEY.values(), ids=NO_KEY.keys())
def test_no_key_is_a_startup_error_naming_the_field(tmp_path: Path, command: str,
                                                    auth: dict[str, str], error: str) -> None:
    (tmp_path / "short.secret").write_text("short\n")
    config, port, _ = gateway_config("127.0.0.1:1", "127.0.0.1:1", {})
    config["gateway"]["auth"] = {k: v.format(tmp=tmp_path) for k, v in auth.items()}
    config["gateway"]["routing"] = {"state_file": str(tmp_path / "routes.json")}
    path = write_config(tmp_path / "gateway.yaml", config)
    out = subprocess.run([sys.executable, "-m", "aios_cli", command, "--config", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert error.format(tmp=tmp_path) in out.stderr
    assert "Traceback" not in out.stderr
    with socket.socket() as probe:  # it stopped before listening
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_shipped_stack_has_no_secret_of_its_own() -> None:
    text = (REPO / "deploy/local/stack.yaml").read_text()
    auth = load_config(REPO / "deploy/local/stack.yaml").gateway.auth
    assert auth.hs256_secret is None and auth.hs256_secret_file == Path("var/dev-hs256.secret")
    assert "hs256_secret:" not in text
    assert "var/" in (REPO / ".gitignore").read_text().split()


def test_make_run_writes_a_development_secret_of_its_own(tmp_path: Path) -> None:
    target = "var/dev-hs256.secret"
    for run in range(2):
        out = subprocess.run(["make", "-s", "-C", str(REPO), f"DEV_SECRET={tmp_path}/{run}",
                              f"{tmp_path}/{run}"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    first, second = ((tmp_path / str(r)).read_text().strip() for r in range(2))
    assert len(first) >= 32 and first != second, "each machine gets a secret of its own"
    assert (tmp_path / "0").stat().st_mode & 0o077 == 0, "readable by its owner only"
    assert target in (REPO / "Makefile").read_text()


def test_a_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config, _, _ = gateway_config("127.0.0.1:1", "127.0.0.1:1", {})
        config["gateway"]["server"]["http_port"] = port
        config["gateway"]["routing"] = {"state_file": str(tmp_path / "routes.json")}
        path = write_config(tmp_path / "gateway.yaml", config)
        out = subprocess.run([sys.executable, "-m", "aios_cli", "gateway", "--config", str(path)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot run:" in out.stderr and "address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_every_command_has_an_example_that_parses() -> None:
    """Each command's --help ends with an example, and the example is a valid call of it."""
    import shlex

    from aios_cli.cli import build_parser
    from aios_cli.examples import EXAMPLES, commands

    parser = build_parser({})
    names = [name for name, _ in commands(parser)]
    assert sorted(names) == sorted(EXAMPLES), "an example per command, no stale ones"
    for name, command in commands(parser):
        assert command.format_help().endswith(f"example:\n  {EXAMPLES[name]}\n")
        words = shlex.split(EXAMPLES[name])
        assert words[:1 + len(name.split())] == ["aios", *name.split()]
        parser.parse_args(words[1:])  # exits (SystemExit) if the example is not valid
