"""How every Redis client of the project is configured: one URL form for the quota's
pipelined client, the routing store and the decision-log fan-out.

``redis[s]://[[user]:password@]host[:port][/db][?ssl_ca_certs=PATH]``: ``rediss`` is TLS,
verified against the system's CAs or ``ssl_ca_certs``. Each user gives its own timeouts.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """Where a Redis is, and how to log in to it."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        """The endpoint a URL names; ValueError saying what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} "
                             "(use redis:// or rediss://)")
        db = parts.path.lstrip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"Redis URL database must be a number, got {db!r}")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, int(db),
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None,
                   parts.scheme == "rediss",
                   parse_qs(parts.query).get("ssl_ca_certs", [None])[0])

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for a connection to it (None: plain)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    def client(self, timeout_s: float | None, connect_timeout_s: float) -> aioredis.Redis:
        """A redis-py client (pooled; for the routing store and the decision-log fan-out).
        ``timeout_s`` bounds each reply (None: none, for pub/sub waits)."""
        return aioredis.Redis(host=self.host, port=self.port, db=self.db,
                              username=self.username, password=self.password,
                              ssl=self.tls, ssl_ca_certs=self.ca_file,
                              socket_timeout=timeout_s,
                              socket_connect_timeout=connect_timeout_s)
