"""A PostgreSQL database of the test's own on the machine's server (127.0.0.1:5432, trust
auth): created for the test, dropped after. A missing server fails the test loudly."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import free_ports

# Where the machine's PostgreSQL is (a different one: AIOS_TEST_POSTGRES).
ADMIN_URL = os.environ.get("AIOS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def database() -> Iterator[str]:
    """The URL of a fresh database, dropped (with whatever is connected) at the end."""
    name = f"aios_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}): start it, or "
                    "apt-get install postgresql")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class PostgresServer:
    """A PostgreSQL server of the test's own (initdb in a temporary folder, a free port),
    for what the machine's shared server must not be put through: a restart while
    clients hold connections. Run as the `postgres` user when the tests run as root
    (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            pytest.fail("PostgreSQL's server programs are missing: apt-get install postgresql")
        self._bin = found[-1].parent
        self.port = free_ports(1)[0]
        # Its own folder under /tmp: pytest's are private to the user running the tests.
        workdir = Path(tempfile.mkdtemp(prefix="aios-pg-"))
        self.data = workdir / "pgdata"
        self._workdir = workdir
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(workdir, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, str(self._bin / program), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self._workdir / "pg.log"),
                  "-o", f"-p {self.port} -k {self._workdir} -c listen_addresses=127.0.0.1 "
                  "-c fsync=on", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        """Stop it if it runs, and delete its files."""
        subprocess.run([*self._as, str(self._bin / "pg_ctl"), "-D", str(self.data), "-w",
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self._workdir, ignore_errors=True)
