"""What the REST front door does at its edges, ours (`aios.h1server`) against uvicorn.

The transports A/B in `bench.py` measures speed; this measures behaviour: the same small
app behind each server with the same `ServerSettings`, and one raw-socket probe per edge
a front door facing the internet must hold (slow clients, oversized heads, smuggling,
pipelining, header injection, error bodies). A probe passes on what the client can see:
refused or cut off in time, and the app never reached by what should not reach it; the
exact status and text are the unit tests' business (tests/aios/test_h1server.py).

    python -m loadtests.edges [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import Receive, Scope, Send

from aios.config import ServerSettings
from aios.h1server import H1Server
from aios.transports import UvicornServer
from loadtests.ports import free_ports

# Short limits, so a probe that waits them out takes seconds.
SETTINGS = {"header_timeout_s": 1.0, "body_timeout_s": 2.0, "keepalive_timeout_s": 1.0,
            "max_uploads_per_client": 2}
# A probe waits this long for the server to answer or close before calling it held open.
PATIENCE_S = 5.0


class Server(Protocol):
    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class Seen:
    """The paths the app was called with."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        headers = [(b"content-type", b"application/json")]
        if scope["path"] == "/split":
            headers.append((b"x-echo", b"a\r\nX-Injected: 1"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


@dataclass(frozen=True)
class Outcome:
    data: bytes
    closed_after_s: float | None  # None: still open when the probe gave up

    @property
    def statuses(self) -> list[int]:
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.data)]


async def talk(port: int, parts: list[bytes], gap_s: float = 0.0) -> Outcome:
    """Send ``parts`` (``gap_s`` apart, while the server keeps the connection), then read
    until it closes or `PATIENCE_S` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started, data = time.monotonic(), b""
    try:
        async with asyncio.timeout(PATIENCE_S):
            for i, part in enumerate(parts):
                if i and gap_s:
                    with contextlib.suppress(TimeoutError):
                        data += await asyncio.wait_for(reader.read(65536), gap_s)
                    if reader.at_eof():
                        return Outcome(data, time.monotonic() - started)
                writer.write(part)
            while chunk := await reader.read(65536):
                data += chunk
            return Outcome(data, time.monotonic() - started)
    except TimeoutError:
        return Outcome(data, None)
    except ConnectionError:
        return Outcome(data, time.monotonic() - started)
    finally:
        writer.close()


def cut_off(outcome: Outcome, within_s: float) -> bool:
    return outcome.closed_after_s is not None and outcome.closed_after_s <= within_s


def refused(outcome: Outcome, seen: Seen, path: str = "/smuggled") -> bool:
    """Answered 4xx and closed, and ``path`` never reached the app."""
    return (any(400 <= s < 500 for s in outcome.statuses) and outcome.closed_after_s is not None
            and path not in seen.paths)


GET = b"GET /%b HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /%b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


async def slow_headers(port: int, seen: Seen) -> bool:
    # A header byte every 0.3 s, for longer than header_timeout_s.
    trickle = [b"GET /a HTTP/1.1\r\nHost: x\r\n"] + [b"x"] * 20
    return cut_off(await talk(port, trickle, gap_s=0.3), SETTINGS["header_timeout_s"] + 1.5)


async def stalled_body(port: int, seen: Seen) -> bool:
    out = await talk(port, [b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"])
    return cut_off(out, SETTINGS["header_timeout_s"] + 1.5)


async def trickled_body(port: int, seen: Seen) -> bool:
    # A byte every 0.5 s never stalls long, but the whole body takes 10 s.
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
    out = await talk(port, [head] + [b"x"] * 20, gap_s=0.5)
    return cut_off(out, SETTINGS["body_timeout_s"] + 1.5)


async def many_headers(port: int, seen: Seen) -> bool:
    head = b"GET /many HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"x-%d: 1\r\n" % i for i in range(500)) + b"\r\n"
    return refused(await talk(port, [head]), seen, "/many")


async def huge_header(port: int, seen: Seen) -> bool:
    head = b"GET /huge HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (256 * 1024) + b"\r\n\r\n"
    return refused(await talk(port, [head]), seen, "/huge")


async def uploads_per_client(port: int, seen: Seen) -> bool:
    # max_uploads_per_client (2) bodies trickling from one address; one more is refused.
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx"
    holders = [asyncio.create_task(talk(port, [head] + [b"x"] * 4, gap_s=0.5))
               for _ in range(int(SETTINGS["max_uploads_per_client"]))]
    await asyncio.sleep(0.3)
    extra = await talk(port, [head])
    for task in holders:
        task.cancel()
    return 503 in extra.statuses and cut_off(extra, 1.0)


async def bad_behind_pipelined(port: int, seen: Seen) -> bool:
    out = await talk(port, [POST % b"a" + POST % b"b" + b"GARBAGE\r\n\r\n"])
    return out.statuses[:2] == [200, 200] and len(out.statuses) == 3


def smuggling(raw: bytes) -> Callable[[int, Seen], Awaitable[bool]]:
    async def probe(port: int, seen: Seen) -> bool:
        return refused(await talk(port, [raw]), seen)
    return probe


async def response_splitting(port: int, seen: Seen) -> bool:
    out = await talk(port, [b"GET /split HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    return b"x-injected" not in out.data.lower()


async def kserve_error_body(port: int, seen: Seen) -> bool:
    out = await talk(port, [b"GARBAGE\r\n\r\n"])
    _, _, body = out.data.partition(b"\r\n\r\n")
    try:
        return "error" in json.loads(body)
    except ValueError:
        return False


PROBES: dict[str, Callable[[int, Seen], Awaitable[bool]]] = {
    "slowloris headers cut off (header_timeout_s)": slow_headers,
    "stalled body cut off (header_timeout_s)": stalled_body,
    "trickled body cut off (body_timeout_s)": trickled_body,
    "500 request headers refused before the app (max_headers)": many_headers,
    "256 KiB header refused before the app (max_header_bytes)": huge_header,
    "uploads per client address capped (max_uploads_per_client)": uploads_per_client,
    "bad request behind 2 pipelined: 3 answers, in order": bad_behind_pipelined,
    "smuggling: Content-Length + Transfer-Encoding": smuggling(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n" + SMUGGLED),
    "smuggling: two Content-Lengths": smuggling(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc"
        + SMUGGLED),
    "smuggling: obs-fold": smuggling(
        b"POST /a HTTP/1.1\r\nHost: x\r\nX: a\r\n Content-Length: 38\r\n\r\n" + SMUGGLED),
    "smuggling: bare LF": smuggling(b"GET /a HTTP/1.1\nHost: x\n\n" + SMUGGLED),
    "smuggling: chunk-size overflow": smuggling(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000000\r\n\r\n0\r\n\r\n" + SMUGGLED),
    "response header with CR/LF never sent": response_splitting,
    "invalid HTTP answered with a KServe JSON error": kserve_error_body,
}

SERVERS: dict[str, Callable[[Seen, ServerSettings], Server]] = {
    "h1server": lambda seen, s: H1Server(seen.app, s),
    "uvicorn": lambda seen, s: UvicornServer(seen.app, s),
}


async def run_probe(server: str, probe: Callable[[int, Seen], Awaitable[bool]]) -> bool:
    """One probe against a fresh server, so no probe sees another's connections."""
    [port] = free_ports(1)
    seen = Seen()
    srv = SERVERS[server](seen, ServerSettings.model_validate(
        {"http_port": port, "grpc_port": 1, **SETTINGS}))
    await srv.start()
    try:
        return await probe(port, seen)
    finally:
        await srv.shutdown()


async def run_all(servers: list[str]) -> dict[str, dict[str, bool]]:
    return {name: {server: await run_probe(server, probe) for server in servers}
            for name, probe in PROBES.items()}


def markdown(results: dict[str, dict[str, bool]]) -> str:
    servers = list(next(iter(results.values())))
    lines = ["| edge | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]
    for name, by_server in results.items():
        lines.append(f"| {name} | " + " | ".join(
            "holds" if by_server[s] else "**fails**" for s in servers) + " |")
    totals = [sum(r[s] for r in results.values()) for s in servers]
    lines.append("| **held** | " + " | ".join(f"**{t} of {len(results)}**" for t in totals)
                 + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.add_argument("--server", action="append", choices=sorted(SERVERS),
                        help="the servers to probe (default: both)")
    args = parser.parse_args()
    results = asyncio.run(run_all(args.server or list(SERVERS)))
    print(json.dumps(results, indent=2) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
