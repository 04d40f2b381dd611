"""Edge limits on a gateway configured small: headers, body and message sizes, in-flight cap."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import Stack
from tests.e2e.test_errors import INFER
from tests.helpers import bearer, gateway_config, infer_json, running, token

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
LIMIT = 64 * 1024


@dataclass(frozen=True)
class Small:
    http: str
    grpc: str


@pytest.fixture(scope="module")
def small(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Small]:
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc,
        {"claims_risk": {"backend": "local"}, "slow": {"backend": "local"}},
        server={"max_body_bytes": LIMIT, "max_header_bytes": 4096, "max_headers": 30,
                "max_concurrent_requests": 2, "header_timeout_s": 1,
                "body_timeout_s": 2, "max_uploads_per_client": 1,
                "keepalive_timeout_s": 1})
    with contextlib.ExitStack() as services:
        services.enter_context(running("gateway", config, http_port,
                                       tmp_path_factory.mktemp("small")))
        yield Small(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")


def post(small: Small, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{small.http}/v2/models/claims_risk/infer", content=body,
                      headers={**bearer(), **headers}, timeout=30)


def test_oversized_headers_get_431(small: Small) -> None:
    resp = post(small, infer_json([CLAIM]), **{"x-filler": "a" * 5000})
    assert resp.status_code == 431
    assert resp.json()["error"].endswith("exceed the 4096-byte limit")
    many = {f"x-h{i}": "1" for i in range(40)}
    resp = post(small, infer_json([CLAIM]), **many)
    assert (resp.status_code, resp.json()) == (431, {"error": "more than 30 request headers"})


def test_body_over_the_limit_gets_413_without_buffering_it(small: Small) -> None:
    resp = post(small, b"x" * (LIMIT + 1))
    assert resp.status_code == 413
    assert resp.json()["error"] == (f"request body of {LIMIT + 1} bytes exceeds the "
                                    f"{LIMIT}-byte limit")

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
        for _ in range(64):
            yield b"x" * 4096

    streamed = httpx.post(f"{small.http}/v2/models/claims_risk/infer", content=chunks(),
                          headers=bearer(), timeout=30)
    assert streamed.status_code == 413
    assert streamed.json()["error"] == f"request body exceeds the {LIMIT}-byte limit"


def padded(size: int) -> bytes:
    """A well-formed ModelInferRequest of exactly ``size`` bytes: a batch of claims too
    large for the model (so it is refused downstream, not here), trimmed by its id."""
    rows = (size - 200) // 32
    for pad in range(200):
        req = service_pb2.ModelInferRequest(model_name="claims_risk", id="p" * pad)
        tensor = req.inputs.add(name="features", datatype="FP32")
        tensor.shape.extend([rows, 8])
        req.raw_input_contents.append(bytes(rows * 32))
        if len(req.SerializeToString()) == size:
            return bytes(req.SerializeToString())
    raise AssertionError(f"cannot build a message of {size} bytes")


@pytest.mark.parametrize(("size", "exhausted"), [(LIMIT - 1, False), (LIMIT, False),
                                                 (LIMIT + 1, True)])
def test_grpc_message_limit(small: Small, size: int, exhausted: bool) -> None:
    with grpc.insecure_channel(small.grpc, options=[
            ("grpc.max_send_message_length", LIMIT * 2)]) as channel, \
            pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(INFER)(padded(size), metadata=tuple(bearer().items()), timeout=10)
    # Within the limit the message gets through to Triton, which refuses the batch size.
    assert (info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED) is exhausted, \
        info.value.details()


def test_in_flight_cap_answers_fast_503(small: Small) -> None:
    def slow(_: int) -> tuple[int, float, str]:
        start = time.monotonic()
        resp = httpx.post(f"{small.http}/v2/models/slow/infer",
                          content=infer_json([CLAIM], {"delay_ms": 800}), headers=bearer(),
                          timeout=30)
        return resp.status_code, time.monotonic() - start, resp.headers.get("retry-after", "")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(slow, range(6)))
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(served) == 2 and len(refused) == 4, results
    assert all(seconds < 0.5 and retry == "1" for _, seconds, retry in refused)
    assert all(seconds >= 0.8 for _, seconds, _ in served), "admitted calls keep their pace"


def test_slowloris_is_cut_off_with_408(small: Small) -> None:
    host, port = small.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v2/models/claims_risk/infer HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        time.sleep(0.4)
        sock.sendall(b"X-Slow: 1\r\n")  # still trickling, never finishing
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert 0.9 < time.monotonic() - start < 3
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert answer.endswith(b'{"error": "request headers not received in time"}')


def _trickle(small: Small, source: str) -> socket.socket:
    """A connection from ``source`` that sends a request's headers and then its body a
    byte at a time, each byte within the between-bytes timeout."""
    host, port = small.http.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    sock.sendall(b"POST /v2/models/claims_risk/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + token().encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    return sock


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_a_trickled_body_holds_no_slot_for_long(small: Small) -> None:
    slow = _trickle(small, "127.0.0.2")
    other = _trickle(small, "127.0.0.3")
    try:
        start = time.monotonic()
        # One address may have only max_uploads_per_client bodies arriving at once.
        with _trickle(small, "127.0.0.2") as second:
            assert _answer(second).startswith(b"HTTP/1.1 503 Service Unavailable")
        # As many bodies arriving as the in-flight cap, and a prompt client is served:
        # a request counts once its body is in.
        for _ in range(3):
            assert post(small, infer_json([CLAIM])).status_code == 200
        answer = b""
        while not answer:  # a byte every 0.5 s: never stalls past header_timeout_s
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                slow.sendall(b" ")
            slow.settimeout(0.01)
            try:
                answer = slow.recv(4096)
            except TimeoutError:
                continue
            slow.settimeout(5)
            answer += _answer(slow)
        assert 1.9 < time.monotonic() - start < 3.5
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert answer.endswith(b'{"error": "request body not received within 2 s"}')
        assert _answer(other).startswith(b"HTTP/1.1 408 Request Timeout")
    finally:
        slow.close()
        other.close()
    assert post(small, infer_json([CLAIM])).status_code == 200


def test_a_prompt_client_is_not_cut_off(small: Small) -> None:
    with httpx.Client() as client:
        for _ in range(3):  # keep-alive: each request gets its own header clock
            assert client.post(f"{small.http}/v2/models/claims_risk/infer",
                               content=infer_json([CLAIM]), headers=bearer()).status_code == 200
            time.sleep(0.6)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_1gib_chunked_upload_gets_413_in_bounded_memory(small: Small) -> None:
    host, port = small.http.removeprefix("http://").split(":")
    pid = next(p for p in _listeners(int(port)))
    before = _rss_mib(pid)
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/claims_risk/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: " + bearer()["authorization"].encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):  # the server hangs up once it has refused
            while sent < 1 << 30:
                sock.sendall(chunk)
                sent += 1 << 20
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 1 << 30, "the server stopped reading long before 1 GiB"
    assert _rss_mib(pid) - before < 50


def _listeners(port: int) -> list[int]:
    """PIDs of the processes listening on ``port`` (from /proc/net/tcp and fd links)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            inodes.add(fields[9])
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if any(os.readlink(fd) == f"socket:[{i}]" for i in inodes):
                    pids.append(int(proc.name))
                    break
    return pids


def test_idle_keep_alive_connections_are_closed(small: Small) -> None:
    host, port = small.http.removeprefix("http://").split(":")
    body = infer_json([CLAIM])
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/claims_risk/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: " + bearer()["authorization"].encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        idle_since = time.monotonic()
        while sock.recv(65536):
            pass
        assert 0.8 < time.monotonic() - idle_since < 3, "closed after the keep-alive timeout"
