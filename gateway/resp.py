"""A pipelined Redis client for the quota check, the one Redis call on the hot path.

One connection carries every concurrent call: commands are written as they come and
replies matched in order (RESP is ordered per connection), parsed by hiredis. Compared
with a pooled client, a call costs no pool checkout, no lock and no per-read timer, and
concurrent calls share a write. Every call is bounded by the client's timeout, counted
from when its command is written, and a reply that has arrived is always read before a
call is given up: so a timeout measures Redis, not our own event loop's lag (a busy
loop that ran the timer before the write or before the read would otherwise fail calls
Redis answered at once, and send quotas into their fallback). A call that timed out
leaves its slot in the queue, so later replies stay matched, and retires its connection
(new calls open another). Errors are redis-py's exception classes, so callers handle
one family.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

from aios.redisconf import RedisEndpoint

# Once a call's time is up, it is given up only after the event loop has polled its
# sockets once more (a later timer, not one in the same pass of the loop's timers).
READ_GRACE_S = 0.001


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.retired = False  # takes no new calls; closes once its replies are in
        self._timeout_s = timeout_s
        self._out: list[bytes] = []
        self._out_futures: list[asyncio.Future[Any]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        """Queue ``command``, whose reply ``future`` awaits; everything queued in one turn
        of the event loop leaves in one write (one syscall, one wake-up of Redis) at the
        end of that turn, and the calls' time starts then."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(command)
        self._out_futures.append(future)

    def _flush(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._out))
            # One timer for the whole write, rather than one armed and cancelled per call.
            asyncio.get_running_loop().call_later(self._timeout_s, self._time_up,
                                                  self._out_futures)
            self._out_futures = []
        else:
            self._out_futures.clear()
        self._out.clear()

    def _time_up(self, futures: list[asyncio.Future[Any]]) -> None:
        if not all(f.done() for f in futures):
            asyncio.get_running_loop().call_later(READ_GRACE_S, _expire_all, futures)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future = self.pending.popleft()
                if future.done():  # its caller timed out or went away
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
            if self.retired and not self.pending:
                self.close()
        except InvalidResponse as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def retire(self) -> None:
        self.retired = True
        if not self.pending:
            self.close()


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else reply


def _expire_all(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(TimeoutError("Redis did not answer in time"))


class Script:
    """A Lua script run by its SHA-1 (loaded on first use or after a Redis restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class Execute(Protocol):
    """A client's one-command call."""

    def __call__(self, *args: Any, undo: Sequence[Any] = ()) -> Awaitable[Any]:
        ...


async def run_script(execute: Execute, script: Script, keys: list[str], args: list[Any],
                     undo: Sequence[Any]) -> Any:
    """EVALSHA ``script`` through ``execute``, loading it first if Redis does not have it
    (at first use, or after a Redis restart)."""
    try:
        return await execute("EVALSHA", script.sha, len(keys), *keys, *args, undo=undo)
    except NoScriptError:
        await execute("SCRIPT", "LOAD", script.source)
        return await execute("EVALSHA", script.sha, len(keys), *keys, *args, undo=undo)


class PipelinedRedis:
    """One pipelined connection to the Redis at ``url`` (`aios.redisconf`'s URL form),
    opened on first use and again after it is lost."""

    def __init__(self, url: str, timeout_s: float, connect_timeout_s: float | None = None,
                 ) -> None:
        endpoint = RedisEndpoint.from_url(url)
        self._tls = endpoint.ssl_context()
        self._host = endpoint.host
        self._port = endpoint.port
        self._password = endpoint.password
        self._username = endpoint.username
        self._db = endpoint.db
        self._timeout = timeout_s
        # Connecting (and AUTH, SELECT) is bounded by asyncio.timeout, which a busy loop
        # can run out before it reads the answer: it gets a bound of its own.
        self._connect_timeout = connect_timeout_s or timeout_s
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connection(self) -> _Protocol:
        if self._conn is not None and not self._conn.closed and not self._conn.retired:
            return self._conn
        if self._connecting is None:  # one connect for every caller waiting on it
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            conn = await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        return conn

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: _Protocol(self._timeout),
                                                       self._host, self._port, ssl=self._tls)
                self._conn = conn
                if self._password is not None:
                    user = (self._username,) if self._username else ()
                    await self._send(conn, "AUTH", *user, self._password)
                if self._db:
                    await self._send(conn, "SELECT", self._db)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self._host}:"
                                       f"{self._port}: {exc or type(exc).__name__}") from exc
        return conn

    @staticmethod
    def _send(conn: _Protocol, *args: Any) -> asyncio.Future[Any]:
        assert conn.transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending.append(future)
        conn.send(hiredis.pack_command(args), future)
        return future

    async def execute(self, *args: Any, undo: Sequence[Any] = ()) -> Any:
        """Run one command within the client's timeout; its reply, a redis-py exception,
        or TimeoutError. ``undo``: a command that reverses it, sent if the caller gives up
        (timeout or cancellation) — the command still runs when Redis gets to it."""
        conn = await self._connection()
        future = self._send(conn, *args)
        try:
            return await future
        except (asyncio.CancelledError, TimeoutError):
            if undo:
                # On the same connection, so Redis runs it after the late command (RESP
                # is ordered per connection), whenever that is; nobody waits for it.
                self._send(conn, *undo).cancel()
            # Calls queued behind a late reply would be late too: new calls take a new
            # connection; this one finishes the calls it has and closes.
            conn.retire()
            raise

    async def run(self, script: Script, keys: list[str], args: list[Any],
                  undo: Sequence[Any] = ()) -> Any:
        """EVALSHA ``script`` (`run_script`); ``undo`` as in `execute`."""
        return await run_script(self.execute, script, keys, args, undo)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
