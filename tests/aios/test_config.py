"""The stack config: defaults, validation errors that name the field, the shipped file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aios.config import ConfigError, StackConfig, load_config, parse_config
from tests.helpers import REPO


def test_shipped_local_stack_matches_documented_ports() -> None:
    config = load_config(REPO / "deploy/local/stack.yaml")
    assert (config.gateway.server.http_port, config.gateway.server.grpc_port) == (8080, 8081)
    assert config.sidecar.server.http_port not in (8080, 8081, 8000, 8001, 8002)
    assert config.gateway.backends["local"].http == (
        f"127.0.0.1:{config.sidecar.server.http_port}")
    assert StackConfig().gateway.auth.hs256_secret is None, "no built-in secret"


@pytest.mark.parametrize(("data", "error"), [
    ({"gateway": {"server": {"http_port": 0, "grpc_port": 1}}},
     "gateway.server.http_port: Input should be greater than or equal to 1"),
    ({"sidecar": {"server": {"grpc_server": "nghttp2"}, "triton": {"http": "x:1", "grpc": "x:2"}}},
     "sidecar.server.grpc_server: Input should be 'h2' or 'grpcio'"),
    ({"gateway": {"models": {"m": {"backend": "nowhere"}}}},
     "models.m.targets.default.backend: unknown backend 'nowhere'"),
    ({"gateway": {"models": {"m": {"targets": {"a": {"backend": "local", "weight": 0}}}}}},
     "targets: all weights are zero"),
    ({"gateway": {"models": {"m": {"targets": {"a": {"backend": "local", "weight": -1}}}}}},
     r"gateway.models.m.targets.a.weight: Input should be greater than or equal to 0"),
    ({"gateway": {"models": {"m": {"backend": "local", "sticky": "cookie"}}}},
     "gateway.models.m.sticky: String should match pattern"),
    ({"sidecar": {"triton": {"http": "x:1"}}}, "sidecar.triton.grpc: Field required"),
    ({"triton": {"colour": "blue"}}, "triton.colour: Extra inputs are not permitted"),
    ({"gateway": {"auth": {"hs256_secret": "short"}}},
     "gateway.auth.hs256_secret: String should have at least 32"),
    ({"gateway": {"auth": {"hs256_secret": "x" * 32, "hs256_secret_file": "/s"}}},
     "hs256_secret and hs256_secret_file: set one of them, not both"),
    ({"gateway": {"quota": {"default": {"cost": "bytes"}}}},
     "gateway.quota.default.cost: Input should be 'request' or 'batch'"),
    ({"gateway": {"quota": {"redis_url": "unix:///run/redis.sock"}}},
     "gateway.quota.redis_url: String should match pattern"),
    ({"gateway": {"console": {"oidc": {"issuer": "idp.example", "client_id": "c"}}}},
     "gateway.console.oidc.issuer: String should match pattern"),
    ({"gateway": {"console": {"oidc": {"issuer": "https://idp.example", "client_id": "c"}}}},
     r"console.oidc.issuer: tokens from 'https://idp.example' are checked against "
     r"auth.issuer \('aios-dev'\): set both to the provider's issuer"),
    ({"gateway": {"auth": {"issuer": "https://idp.example"},
                  "console": {"oidc": {"issuer": "https://idp.example", "client_id": "c"}}}},
     r"console.oidc: the provider signs its tokens with its own keys: set auth.jwks_url"),
    ({"gateway": {"console": {"oidc": {"issuer": "https://idp.example", "client_id": "c",
                                       "token": "refresh_token"}}}},
     "gateway.console.oidc.token: Input should be 'access_token' or 'id_token'"),
    ([1, 2], "the top level must be a mapping"),
])
def test_invalid_config_names_the_field(data: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(data, "test.yaml")


@pytest.mark.parametrize(("text", "error"), [
    ("gateway: [unclosed", "not valid YAML"),
])
def test_unreadable_files(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_immutable() -> None:
    config = StackConfig()
    with pytest.raises(Exception, match="frozen"):
        config.gateway.server.http_port = 1  # type: ignore[misc]
