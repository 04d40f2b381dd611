"""The session's real stack: Triton (from nvidia-pytriton), a sidecar and a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    STARTUP_TIMEOUT_S,
    StackPorts,
    aios,
    alive,
    descendants,
    http_ready,
    interrupt_and_wait,
    repo_with_test_models,
    stack_config,
    wait_until,
    write_config,
)
from tests.postgres import database
from tests.redis_server import RedisServer


def pytest_addoption(parser: pytest.Parser) -> None:
    # Re-runs the quota edge tests on the library our Redis client is measured against
    # (loadtests/README.md, "Transports"); the suite itself runs ours.
    parser.addoption("--quota-redis-client", choices=("resp", "redis-py"), default="resp",
                     help="the Redis client the quota edge tests use")


@pytest.fixture
def quota_redis_client(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--quota-redis-client"))


@dataclass(frozen=True)
class Stack:
    ports: StackPorts
    config_path: Path
    log: Path

    @property
    def gateway_http(self) -> str:
        return f"127.0.0.1:{self.ports.gateway_http}"

    @property
    def gateway_grpc(self) -> str:
        return f"127.0.0.1:{self.ports.gateway_grpc}"

    @property
    def sidecar_http(self) -> str:
        return f"127.0.0.1:{self.ports.sidecar_http}"

    @property
    def sidecar_grpc(self) -> str:
        return f"127.0.0.1:{self.ports.sidecar_grpc}"

    @property
    def triton_http(self) -> str:
        return f"127.0.0.1:{self.ports.triton_http}"

    @property
    def triton_grpc(self) -> str:
        return f"127.0.0.1:{self.ports.triton_grpc}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`aios up` on free ports; stopped with Ctrl-C at the end of the session."""
    tmp = tmp_path_factory.mktemp("stack")
    ports = StackPorts.allocate()
    config_path = write_config(tmp / "stack.yaml",
                               stack_config(ports, tmp, repo_with_test_models(tmp)))
    log = tmp / "stack.log"
    process = aios("up", "--config", str(config_path), "--log-dir", str(tmp / "logs"), log=log)
    try:
        wait_until(lambda: http_ready(ports.gateway_http), STARTUP_TIMEOUT_S, "stack ready",
                   process, log)
        yield Stack(ports, config_path, log)
    finally:
        tree = descendants(process.pid)
        interrupt_and_wait(process)
        assert not [p for p in tree if alive(p)], "processes left behind by aios up"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test module's own, on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own (tests/postgres.py)."""
    yield from database()
