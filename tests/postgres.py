"""A PostgreSQL database of the test's own on the machine's server (127.0.0.1:5432, trust
auth): created for the test, dropped after. A missing server fails the test loudly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

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
