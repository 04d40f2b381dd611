"""`make bench`: what the gateway and sidecar cost over calling Triton directly.

Starts a real Triton, Redis, sidecars (async and sync decision log), gateways (bare; auth +
Redis quota; everything on) and an nginx `proxy_pass` hop, then measures every path side
by side in one run, with one load generator per protocol for all paths:

- throughput at a fixed concurrency (wrk for REST; an asyncio gRPC generator);
- latency at a fixed offered rate (an open-loop asyncio generator, REST and gRPC);
- CPU microseconds per request of each of our processes (from /proc) and peak RSS;
- the headline targets (full path vs direct, REST batch 1) once more as PAIRED_ROUNDS
  alternations of direct and full path, reported as the median pair and its range: a
  machine whose speed drifts during the run moves both sides of each pair. Their
  fixed-rate windows last ``--tail-seconds`` (15 s: 3,000 samples at 200 req/s, so ~30
  decide a p99), and the added p50/p99 also come pooled over every round; an added
  latency whose rounds disagree on its sign is "not measurable here", never "met".

Writes results/bench.json, results/bench.md and results/bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import numpy as np
import yaml
from tritonclient.grpc import service_pb2

from aios.checkpoint import write_key_pair
from aios.config import AuthSettings
from aios.tracing import Tracing
from aios_cli.claims import synthesize_claims
from aios_cli.tokens import mint_token
from loadtests.ports import free_ports

# Each run's own secret: the bench's gateways live only as long as the run.
BENCH_AUTH = AuthSettings(hs256_secret=secrets.token_urlsafe(48))

REPO = Path(__file__).resolve().parent.parent
INFER = "/inference.GRPCInferenceService/ModelInfer"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "claims_risk"
DIRECT, FULL = "triton (direct)", "full: gateway -> sidecar (async log)"
AUTH_QUOTA = "gateway +auth +redis quota -> triton"
BARE = "gateway -> triton"
# Alternations of direct and full path for the headline targets: this machine class
# drifts by ±20% within a run, so the median of several pairs is what is reported.
PAIRED_ROUNDS = 5


def wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout_s}s")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    ours: bool  # a process of ours, whose CPU and RSS we report


@dataclass(frozen=True)
class Path_:
    """A way to reach the model."""

    name: str
    http: str
    grpc: str | None
    processes: tuple[str, ...]  # our services on this path
    auth: bool = False


@dataclass
class Run:
    path: str
    protocol: str
    batch: int
    mode: str  # "throughput" (fixed concurrency) | "rate" (fixed offered rate)
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    triton_cpu_us: float = 0.0  # Triton's own per request: the server and its model stubs


class Stack:
    """Everything the benchmark runs, started and stopped together."""

    def __init__(self, workdir: Path, tree: Path = REPO) -> None:
        self.workdir = workdir
        # The source tree our programs run from unless one names another.
        self.tree = tree
        self.services: dict[str, Service] = {}
        self.ports: dict[str, int] = {}

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = free_ports(1)[0]
        return self.ports[name]

    def start(self, name: str, argv: list[str], ours: bool, ready_url: str | None,
              cwd: Path = REPO) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.services[name] = Service(name, process, ours)
        if ready_url:
            wait_ready(ready_url)

    def aios(self, name: str, command: str, config: dict[str, Any], ready_port: int,
             tree: Path | None = None) -> None:
        """Start one of our programs; ``tree``: the source tree it runs from (its modules
        come first on the path: `-m` puts the working directory there), by default the
        stack's."""
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.start(name, [sys.executable, "-m", "aios_cli", command, "--config", str(path)],
                   command != "triton", f"http://127.0.0.1:{ready_port}/v2/health/ready",
                   tree or self.tree)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGINT)
        for service in self.services.values():
            try:
                service.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)

    def cpu_seconds(self, name: str) -> float:
        fields = Path(f"/proc/{self.services[name].process.pid}/stat").read_text().rsplit(
            ")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def tree_cpu_seconds(self, name: str) -> float:
        """CPU of a service and every process under it (Triton's server and the Python
        backend's stubs run as children of the launcher)."""
        parents: dict[int, int] = {}
        used: dict[int, float] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            used[pid] = sum(int(v) for v in fields[11:15]) / CLK_TCK
        tree, frontier = set(), {self.services[name].process.pid}
        while frontier:
            tree |= frontier
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
        return sum(used.get(pid, 0.0) for pid in tree)

    def peak_rss_mib(self, name: str) -> float:
        for line in Path(f"/proc/{self.services[name].process.pid}/status").read_text(
        ).splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def start_triton(stack: Stack) -> dict[str, str]:
    """Start Triton on the model repository; its REST and gRPC addresses."""
    t_http, t_grpc = stack.port("triton_http"), stack.port("triton_grpc")
    stack.aios("triton", "triton", {"triton": {
        "model_repository": str(REPO / "model_repo"), "http_port": t_http,
        "grpc_port": t_grpc, "metrics_port": stack.port("triton_metrics")}}, t_http)
    return {"http": f"127.0.0.1:{t_http}", "grpc": f"127.0.0.1:{t_grpc}"}


def build(stack: Stack, redis_server: str) -> list[Path_]:
    """Start every service; return the paths to measure."""
    h = "127.0.0.1"
    triton = start_triton(stack)
    for mode in ("async", "sync"):
        _sidecar(stack, f"sidecar_{mode}", triton, mode)
    gateways: dict[str, tuple[dict[str, str], dict[str, Any], bool, dict[str, Any]]] = {
        "gateway_bare": (triton, {"backend": "b"}, False, BARE_QUOTA),
        "gateway_auth_quota": (triton, {"backend": "b"}, True, _redis_quota(redis_server)),
        "gateway_full_async": (_addr(stack, "sidecar_async"), SHADOW, True,
                               _redis_quota(redis_server)),
        "gateway_full_sync": (_addr(stack, "sidecar_sync"), SHADOW, True,
                              _redis_quota(redis_server)),
    }
    for name, (backend, route, auth, quota) in gateways.items():
        _gateway(stack, name, backend, route, auth, quota)
    paths = [
        Path_(DIRECT, triton["http"], triton["grpc"], ()),
        _path(stack, "sidecar -> triton", "sidecar_async", ("sidecar_async",)),
        _path(stack, BARE, "gateway_bare", ("gateway_bare",)),
        _path(stack, AUTH_QUOTA, "gateway_auth_quota", ("gateway_auth_quota",), True),
        _path(stack, FULL, "gateway_full_async",
              ("gateway_full_async", "sidecar_async"), True),
        _path(stack, "full: gateway -> sidecar (sync log)", "gateway_full_sync",
              ("gateway_full_sync", "sidecar_sync"), True),
    ]
    if shutil.which("nginx"):
        port = stack.port("nginx")
        conf = stack.workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(port=port, upstream=triton["http"],
                                          dir=stack.workdir))
        stack.start("nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"], False,
                    f"http://{h}:{port}/v2/health/ready")
        paths.insert(1, Path_("nginx -> triton", f"{h}:{port}", None, ()))
    else:
        print("nginx not found: apt-get install -y nginx-light (skipping the nginx path)")
    return paths


BARE_QUOTA: dict[str, Any] = {"enabled": False}
CANARY = {"targets": {"stable": {"backend": "b", "version": "2", "weight": 90},
                      "canary": {"backend": "b", "version": "1", "weight": 10}},
          "sticky": "tenant"}
SHADOW = {**CANARY, "shadow": {"backend": "b", "version": "1", "fraction": 0.1,
                               "output": "risk_score", "threshold": 0.5}}


def _redis_quota(redis_server: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": redis_server,
            "default": {"rate_per_s": 1e6, "burst": 1_000_000}, **extra}


def _server(stack: Stack, name: str, **extra: Any) -> dict[str, Any]:
    return {"http_port": stack.port(f"{name}_http"), "grpc_port": stack.port(f"{name}_grpc"),
            **extra}


def _merged(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section (a variant's
    ``{"decision_log": {"mode": "sync"}}`` keeps the log's directory and key)."""
    merged = dict(base)
    for key, value in (extra or {}).items():
        old = merged.get(key)
        merged[key] = _merged(old, value) if isinstance(old, dict) and isinstance(
            value, dict) else value
    return merged


def _sidecar(stack: Stack, name: str, triton: dict[str, str], mode: str,
             server: dict[str, Any] | None = None,
             review: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
             tree: Path | None = None) -> None:
    # Signed checkpoints on, as a regulated deployment runs the log.
    key = stack.workdir / f"signing-{name}.pem"
    if not key.exists():
        write_key_pair(key, key.with_suffix(".pub.pem"))
    stack.aios(name, "sidecar", {"sidecar": _merged({
        "server": _server(stack, name, **(server or {})), "triton": triton,
        "decision_log": {"directory": str(stack.workdir / f"decisions-{name}"), "mode": mode,
                         "signing_key_file": str(key)},
        "parity": {"model_repository": str(REPO / "model_repo")},
        **({"review": review} if review else {})}, extra)},
        stack.port(f"{name}_http"), tree)


def _gateway(stack: Stack, name: str, backend: dict[str, str], route: dict[str, Any],
             auth: bool, quota: dict[str, Any], server: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None, tree: Path | None = None) -> None:
    stack.aios(name, "gateway", {"gateway": _merged({
        "server": _server(stack, name, **(server or {})),
        "backends": {"b": backend}, "models": {MODEL: route},
        "auth": {"enabled": auth, "hs256_secret": BENCH_AUTH.hs256_secret}, "quota": quota,
        "routing": {"state_file": str(stack.workdir / f"{name}-routes.json")}}, extra)},
        stack.port(f"{name}_http"), tree)


def build_transports(stack: Stack, redis_server: str,
                     paths: list[Path_]) -> list[tuple[str, str, Path_, Path_]]:
    """The same paths again with one transport swapped for the library it replaces:
    (what is swapped, the protocol measured, our path, the library's path)."""
    triton = _addr(stack, "triton")
    uvicorn = {"http_server": "uvicorn"}
    _sidecar(stack, "sidecar_uvicorn", triton, "async", uvicorn)
    _gateway(stack, "gateway_uvicorn", _addr(stack, "sidecar_uvicorn"), SHADOW, True,
             _redis_quota(redis_server), uvicorn)
    _sidecar(stack, "sidecar_aiohttp", {**triton, "client": "aiohttp"}, "async")
    _gateway(stack, "gateway_aiohttp", {**_addr(stack, "sidecar_aiohttp"), "client": "aiohttp"},
             SHADOW, True, _redis_quota(redis_server))
    _gateway(stack, "gateway_redispy", triton, {"backend": "b"}, True,
             _redis_quota(redis_server, redis_client="redis-py"))
    grpcio = {"grpc_server": "grpcio"}
    _gateway(stack, "gateway_bare_grpcio", triton, {"backend": "b"}, False, BARE_QUOTA, grpcio)
    _sidecar(stack, "sidecar_grpcio", triton, "async", grpcio)
    _gateway(stack, "gateway_grpcio", _addr(stack, "sidecar_grpcio"), SHADOW, True,
             _redis_quota(redis_server), grpcio)
    by_name = {p.name: p for p in paths}
    return [
        ("REST front door: uvicorn for h1server (gateway and sidecar; full path)", "rest",
         by_name[FULL], _path(stack, "full, uvicorn", "gateway_uvicorn",
                              ("gateway_uvicorn", "sidecar_uvicorn"), True)),
        ("REST hop client: aiohttp for http1 (gateway->sidecar, sidecar->Triton)", "rest",
         by_name[FULL], _path(stack, "full, aiohttp", "gateway_aiohttp",
                              ("gateway_aiohttp", "sidecar_aiohttp"), True)),
        ("quota Redis client: redis-py for resp (gateway +auth +redis quota)", "rest",
         by_name[AUTH_QUOTA], _path(stack, "auth quota, redis-py", "gateway_redispy",
                                    ("gateway_redispy",), True)),
        ("gRPC front door: grpcio for h2server (bare gateway)", "grpc",
         by_name[BARE], _path(stack, "bare, grpcio", "gateway_bare_grpcio",
                              ("gateway_bare_grpcio",))),
        ("gRPC front door: grpcio for h2server (gateway and sidecar; full path)", "grpc",
         by_name[FULL], _path(stack, "full, grpcio", "gateway_grpcio",
                              ("gateway_grpcio", "sidecar_grpcio"), True)),
    ]


# Review gates as a model would have them: a band on the score, a business rule and a
# flag gate, all evaluated on every call; none fires (the score never reaches 2), or the
# band fires on every call (each call's item is then written to the SQLite queue).
REVIEW_VARIANTS: list[tuple[str, list[dict[str, Any]]]] = [
    ("review gates evaluated (3), none fires", [
        {"name": "band", "band": {"output": "risk_score", "low": 2.0, "high": 3.0}},
        {"name": "big", "rule": "claim_amount > 1e12 and claimant_age < 200"},
        {"name": "flagged", "flags": ["schema:"]}]),
    ("review gate fires on every call (SQLite)", [
        {"name": "band", "band": {"output": "risk_score", "low": 0.0, "high": 1.0}}]),
]


def review_ab(stack: Stack, seconds: float, connections: int, rounds_n: int) -> list[Swap]:
    """One sidecar with review on, its gates switched through the review store between
    paired rounds (the same process measured without and with them: two processes
    differ by more than the gates cost): none against each set of REVIEW_VARIANTS, in
    ``rounds`` pairs."""
    from aios.reviewstore import GateRevision, open_review_store

    db = stack.workdir / "reviews.db"
    _sidecar(stack, "sidecar_review", _addr(stack, "triton"), "async", review={
        "enabled": True, "store_url": str(db), "gates_poll_s": 0.2})
    path = _path(stack, "sidecar, review on", "sidecar_review", ("sidecar_review",))
    store = open_review_store(str(db))
    rest, _ = bodies(1)
    revision = 0

    def gates(config: list[dict[str, Any]]) -> None:
        nonlocal revision
        store.set_gates(GateRevision(MODEL, revision + 1, {"gates": config}), revision)
        revision += 1
        time.sleep(1.0)  # the sidecar takes them within gates_poll_s

    out = []
    try:
        for label, config in REVIEW_VARIANTS:
            swap = Swap(label)
            for i in range(rounds_n):
                rounds: list[tuple[list[dict[str, Any]], list[float], list[float]]] = [
                    ([], swap.ours_rps, swap.ours_cpu_us),
                    (config, swap.theirs_rps, swap.theirs_cpu_us)]
                # Every other round the other way round: a drift of the machine over the
                # run then weighs on both sides alike.
                for chosen, rps, cpu in rounds if i % 2 == 0 else rounds[::-1]:
                    gates(chosen)
                    before = stack.cpu_seconds("sidecar_review")
                    run = wrk(path, rest, {}, connections, seconds, stack.workdir)
                    rps.append(run.rps)
                    cpu.append((stack.cpu_seconds("sidecar_review") - before)
                               / max(run.requests, 1) * 1e6)
                print(f"{label[:40]}: round {i + 1}: without {swap.ours_cpu_us[-1]:.0f}, "
                      f"with {swap.theirs_cpu_us[-1]:.0f} CPU us/req", flush=True)
            out.append(swap)
    finally:
        store.close()
    return out


def review_markdown(swaps: list[Swap]) -> str:
    """The A/B table of the review gates (the sidecar's CPU, without and with)."""
    lines = ["", f"Review gates, one sidecar without and with them "
             f"({len(swaps[0].ours_cpu_us)} paired rounds, gates switched live, order "
             "alternating; REST batch 1, straight to the sidecar; CPU is the sidecar's):",
             "",
             "| added | req/s without / with | CPU µs/req without / with | CPU added "
             "(median, range) |", "|---|---|---|---|"]
    for s in swaps:
        added = [t / o - 1 if o else 0.0 for o, t in zip(s.ours_cpu_us, s.theirs_cpu_us,
                                                          strict=True)]
        mid, low, high = median_and_range(added)
        lines.append(f"| {s.label} | {median_and_range(s.ours_rps)[0]:.0f} / "
                     f"{median_and_range(s.theirs_rps)[0]:.0f} | "
                     f"{median_and_range(s.ours_cpu_us)[0]:.0f} / "
                     f"{median_and_range(s.theirs_cpu_us)[0]:.0f} | {mid:+.1%} ({low:+.1%} "
                     f"to {high:+.1%}) |")
    return "\n".join(lines) + "\n"


def _addr(stack: Stack, name: str) -> dict[str, str]:
    return {"http": f"127.0.0.1:{stack.port(f'{name}_http')}",
            "grpc": f"127.0.0.1:{stack.port(f'{name}_grpc')}"}


def _path(stack: Stack, label: str, service: str, processes: tuple[str, ...],
          auth: bool = False) -> Path_:
    address = _addr(stack, service)
    return Path_(label, address["http"], address["grpc"], processes, auth)


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/nginx-body;
  proxy_temp_path {dir}/nginx-proxy;
  upstream triton {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://triton;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def bodies(batch: int) -> tuple[bytes, bytes]:
    """A JSON REST body and a serialized gRPC request scoring ``batch`` claims."""
    x, _ = synthesize_claims(batch, seed=batch)
    rest = json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                   "shape": list(x.shape), "data": x.ravel().tolist()}]})
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = req.inputs.add(name="features", datatype="FP32")
    tensor.shape.extend(x.shape)
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    return rest.encode(), req.SerializeToString()


WRK_LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {{"requests":%d,"duration_us":%d,"errors":%d,' ..
    '"p50":%d,"p95":%d,"p99":%d}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def wrk(path: Path_, body: bytes, headers: dict[str, str], connections: int, seconds: float,
        workdir: Path) -> Run:
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    auth = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = workdir / "bench.lua"
    script.write_text(WRK_LUA.format(body=body_file, auth=auth))
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d",
                          f"{max(1, round(seconds))}s",
                          "-s", str(script), f"http://{path.http}/v2/models/{MODEL}/infer"],
                         capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH "))
    doc = json.loads(line[6:])
    run = Run(path.name, "rest", 0, "throughput", doc["requests"], doc["errors"],
              doc["duration_us"] / 1e6)
    run.rps = run.requests / run.seconds
    run.p50_ms, run.p95_ms, run.p99_ms = (doc[k] / 1000 for k in ("p50", "p95", "p99"))
    return run


async def _grpc_loop(path: Path_, payload: bytes, metadata: tuple[tuple[str, str], ...],
                     connections: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(path.grpc or "") as channel:
        call = channel.unary_unary(INFER)
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    await call(payload, metadata=metadata, timeout=10)
                    latencies.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, errors


async def _rate_loop(path: Path_, protocol: str, rest: bytes, payload: bytes,
                     headers: dict[str, str], rate: float, seconds: float,
                     ) -> tuple[list[float], int]:
    """Open loop: a request every 1/rate seconds whatever the answers do."""
    latencies: list[float] = []
    errors = 0
    metadata = tuple(headers.items())
    async with aiohttp.ClientSession() as session, \
            grpc.aio.insecure_channel(path.grpc or "127.0.0.1:1") as channel:
        call = channel.unary_unary(INFER)
        url = f"http://{path.http}/v2/models/{MODEL}/infer"

        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            try:
                if protocol == "rest":
                    async with session.post(url, data=rest, headers={
                            **headers, "content-type": "application/json"}) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                            return
                else:
                    await call(payload, metadata=metadata, timeout=10)
                latencies.append(time.perf_counter() - start)
            except (aiohttp.ClientError, grpc.aio.AioRpcError):
                errors += 1

        tasks = []
        begin = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, errors


def _summarise(run: Run, latencies: list[float], errors: int, seconds: float) -> Run:
    run.requests, run.errors, run.seconds = len(latencies), errors, seconds
    run.rps = len(latencies) / seconds
    if latencies:
        run.p50_ms, run.p95_ms, run.p99_ms = (float(np.percentile(latencies, q)) * 1000
                                              for q in (50, 95, 99))
    return run


def _auth_headers(path: Path_) -> dict[str, str]:
    """A bearer token for a path through an authenticating gateway, else nothing."""
    if not path.auth:
        return {}
    token = mint_token(BENCH_AUTH, "bench", "bench", f"infer:{MODEL}", 7200)
    return {"authorization": f"Bearer {token}"}


def measure(stack: Stack, paths: list[Path_], seconds: float, rate: float,
            connections: int, batches: tuple[int, ...] = (1, 32),
            protocols: tuple[str, ...] = ("rest", "grpc")) -> list[Run]:
    runs = []
    for batch in batches:
        rest, payload = bodies(batch)
        for path in paths:
            headers = _auth_headers(path)
            for protocol in protocols:
                if protocol == "grpc" and path.grpc is None:
                    continue
                for mode in ("throughput", "rate"):
                    before = {p: stack.cpu_seconds(p) for p in path.processes}
                    triton_before = stack.tree_cpu_seconds("triton")
                    if mode == "throughput" and protocol == "rest" and shutil.which("wrk"):
                        run = wrk(path, rest, headers, connections, seconds, stack.workdir)
                    elif mode == "throughput":
                        lat, err = asyncio.run(_grpc_loop(
                            path, payload, tuple(headers.items()), connections, seconds))
                        run = _summarise(Run(path.name, protocol, 0, mode), lat, err, seconds)
                    else:
                        lat, err = asyncio.run(_rate_loop(path, protocol, rest, payload,
                                                          headers, rate, seconds))
                        run = _summarise(Run(path.name, protocol, 0, mode), lat, err, seconds)
                    run.protocol, run.batch, run.mode = protocol, batch, mode
                    for p in path.processes:
                        used = stack.cpu_seconds(p) - before[p]
                        run.cpu_us_per_request[p] = used / max(run.requests, 1) * 1e6
                    run.triton_cpu_us = (stack.tree_cpu_seconds("triton") - triton_before) / \
                        max(run.requests, 1) * 1e6
                    runs.append(run)
                    print(f"{path.name:42s} {protocol:4s} b{batch:<2d} {mode:10s} "
                          f"{run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                          f"p99 {run.p99_ms:6.2f} ms  errors {run.errors}", flush=True)
    return runs


@dataclass
class Paired:
    """Direct and full path measured back to back, once per round (REST, batch 1)."""

    ratios: list[float] = field(default_factory=list)  # full req/s over direct req/s
    added_p50_ms: list[float] = field(default_factory=list)  # at the fixed rate
    added_p99_ms: list[float] = field(default_factory=list)
    # Every fixed-rate latency of the rounds, pooled per path (ms).
    direct_ms: list[float] = field(default_factory=list, repr=False)
    full_ms: list[float] = field(default_factory=list, repr=False)

    def add(self, direct: tuple[Run, Run], full: tuple[Run, Run],
            direct_ms: Sequence[float], full_ms: Sequence[float]) -> None:
        """One round: (throughput, rate) runs of each path, and the rate runs' latencies."""
        self.ratios.append(full[0].rps / direct[0].rps if direct[0].rps else 0.0)
        self.added_p50_ms.append(full[1].p50_ms - direct[1].p50_ms)
        self.added_p99_ms.append(full[1].p99_ms - direct[1].p99_ms)
        self.direct_ms.extend(direct_ms)
        self.full_ms.extend(full_ms)

    def pooled_added_ms(self, q: float) -> float:
        """The full path's q-th percentile over every round minus direct's (0 if none)."""
        if not (self.direct_ms and self.full_ms):
            return 0.0
        return float(np.percentile(self.full_ms, q) - np.percentile(self.direct_ms, q))


def median_and_range(values: list[float]) -> tuple[float, float, float]:
    """The median (the lower middle for an even count) and the extremes."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2], ordered[0], ordered[-1]


def paired(stack: Stack, direct: Path_, full: Path_, seconds: float, rate: float,
           connections: int, tail_seconds: float) -> Paired:
    """PAIRED_ROUNDS alternations of direct and full path: throughput for ``seconds``,
    then the fixed rate for ``tail_seconds``."""
    rest, _ = bodies(1)
    out = Paired()

    def both(path: Path_) -> tuple[tuple[Run, Run], list[float]]:
        headers = _auth_headers(path)
        busy = wrk(path, rest, headers, connections, seconds, stack.workdir)
        lat, err = asyncio.run(_rate_loop(path, "rest", rest, b"", headers, rate,
                                          tail_seconds))
        rated = _summarise(Run(path.name, "rest", 1, "rate"), lat, err, tail_seconds)
        return (busy, rated), [s * 1000 for s in lat]

    for i in range(PAIRED_ROUNDS):
        (d, d_ms), (f, f_ms) = both(direct), both(full)
        out.add(d, f, d_ms, f_ms)
        print(f"paired round {i + 1}: full/direct {out.ratios[-1]:.1%}, added p50 "
              f"{out.added_p50_ms[-1]:.2f} ms, p99 {out.added_p99_ms[-1]:.2f} ms", flush=True)
    return out


@dataclass
class Swap:
    """One transport against the library it replaces: paired rounds (batch 1)."""

    label: str
    ours_rps: list[float] = field(default_factory=list)
    theirs_rps: list[float] = field(default_factory=list)
    ours_cpu_us: list[float] = field(default_factory=list)  # the path's processes, summed
    theirs_cpu_us: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        """The library's req/s over ours, per round."""
        return [t / o if o else 0.0 for o, t in zip(self.ours_rps, self.theirs_rps,
                                                    strict=True)]

    def verdict(self) -> str:
        """Who wins beyond the run-to-run range: only what every round agrees on counts."""
        _, low, high = median_and_range(self.ratios())
        if high < 1:
            return "ours: faster in every round"
        if low > 1:
            return "the library: faster in every round"
        return "within the run-to-run range"


def transports_ab(stack: Stack, swaps: list[tuple[str, str, Path_, Path_]], seconds: float,
                  connections: int) -> list[Swap]:
    """PAIRED_ROUNDS alternations of each path with ours and with the library's transport."""
    rest, payload = bodies(1)
    out = []
    for label, protocol, ours, theirs in swaps:
        swap = Swap(label)
        for i in range(PAIRED_ROUNDS):
            for path, rps, cpu in ((ours, swap.ours_rps, swap.ours_cpu_us),
                                   (theirs, swap.theirs_rps, swap.theirs_cpu_us)):
                before = sum(stack.cpu_seconds(p) for p in path.processes)
                headers = _auth_headers(path)
                if protocol == "rest":
                    run = wrk(path, rest, headers, connections, seconds, stack.workdir)
                else:
                    lat, err = asyncio.run(_grpc_loop(
                        path, payload, tuple(headers.items()), connections, seconds))
                    run = _summarise(Run(path.name, protocol, 0, "throughput"), lat, err,
                                     seconds)
                used = sum(stack.cpu_seconds(p) for p in path.processes) - before
                rps.append(run.rps)
                cpu.append(used / max(run.requests, 1) * 1e6)
            print(f"{label[:40]}: round {i + 1}: ours {swap.ours_rps[-1]:.0f}, library "
                  f"{swap.theirs_rps[-1]:.0f} req/s", flush=True)
        out.append(swap)
    return out


def swaps_markdown(swaps: list[Swap]) -> str:
    """The A/B table of the transports."""
    lines = ["", f"Transports, each against the library it replaces ({PAIRED_ROUNDS} paired "
             "rounds, batch 1, REST unless named gRPC; CPU is the path's processes):", "",
             "| swapped | ours req/s | library req/s | library / ours (median, range) "
             "| CPU µs/req ours / library | who wins |", "|---|---|---|---|---|---|"]
    for s in swaps:
        mid, low, high = median_and_range(s.ratios())
        lines.append(f"| {s.label} | {median_and_range(s.ours_rps)[0]:.0f} | "
                     f"{median_and_range(s.theirs_rps)[0]:.0f} | {mid:.0%} ({low:.0%}-"
                     f"{high:.0%}) | {median_and_range(s.ours_cpu_us)[0]:.0f} / "
                     f"{median_and_range(s.theirs_cpu_us)[0]:.0f} | {s.verdict()} |")
    return "\n".join(lines) + "\n"


def _find(runs: list[Run], path: str, protocol: str, batch: int, mode: str) -> Run | None:
    for r in runs:
        if (r.path, r.protocol, r.batch, r.mode) == (path, protocol, batch, mode):
            return r
    return None


def tracing_off_us(calls: int = 100_000) -> float:
    """Microseconds per request of the tracing calls one request makes through gateway
    and sidecar with tracing off, timed in this process: the gateway's server span, its
    four steps and one inject; the sidecar's merged path (the one its CPU figure is
    measured on) makes one span per group of calls, counted here as one per request."""
    tracing = Tracing()
    headers = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]

    def one_request() -> None:
        with tracing.server("gateway infer", headers, model="m"):
            for step in ("auth", "quota", "route", "forward"):
                with tracing.span(step):
                    pass
            tracing.inject()
        with tracing.span("decision-log write"):
            pass

    return timeit.timeit(one_request, number=calls) / calls * 1e6


NOT_MEASURABLE = "not measurable here"


def verdict(mid: float, low: float, high: float, goal: float) -> bool | str:
    """Whether an added latency meets ``goal``: NOT_MEASURABLE when the rounds do not
    even agree on its sign (the noise is larger than what is measured)."""
    if low < 0 < high:
        return NOT_MEASURABLE
    return mid <= goal


def targets(runs: list[Run], rss: dict[str, float], pairs: Paired | None,
            ) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met; the
    headline ones from the paired rounds when there are any."""
    out = []
    t_full = _find(runs, FULL, "rest", 1, "throughput")
    r_full = _find(runs, FULL, "rest", 1, "rate")
    if pairs is not None and pairs.ratios:
        rounds = f"median of {len(pairs.ratios)} alternations"
        ratio, low, high = median_and_range(pairs.ratios)
        out.append({"target": "full path throughput vs direct (REST, batch 1, 16 conns)",
                    "goal": ">= 50% (resolves at >= 30%)",
                    "value": f"{ratio:.0%} ({rounds}: {low:.0%}-{high:.0%})",
                    "met": ratio >= 0.5})
        pooled = f"pooled {len(pairs.full_ms)} / {len(pairs.direct_ms)} samples"
        for name, q, values, goal in (("p50", 50, pairs.added_p50_ms, 1.0),
                                      ("p99", 99, pairs.added_p99_ms, 3.0)):
            mid, low, high = median_and_range(values)
            out.append({"target": f"added {name} at fixed rate (gateway + sidecar)",
                        "goal": f"<= {goal:g} ms",
                        "value": f"{mid:.2f} ms ({rounds}: {low:.2f}-{high:.2f}; "
                                 f"{pooled}: {pairs.pooled_added_ms(q):.2f})",
                        "met": verdict(mid, low, high, goal)})
    if t_full:
        for process in ("gateway_full_async", "sidecar_async"):
            cpu = t_full.cpu_us_per_request.get(process, 0.0)
            out.append({"target": f"CPU per request, {process}", "goal": "<= 150 us",
                        "value": f"{cpu:.0f} us", "met": cpu <= 150})
    out.extend(_relative_targets(runs, t_full))
    for process in ("gateway_full_async", "sidecar_async"):
        out.append({"target": f"peak RSS, {process}", "goal": "<= 150 MiB",
                    "value": f"{rss[process]:.0f} MiB", "met": rss[process] <= 150})
    t_sync = _find(runs, "full: gateway -> sidecar (sync log)", "rest", 1, "throughput")
    r_sync = _find(runs, "full: gateway -> sidecar (sync log)", "rest", 1, "rate")
    if t_sync and r_sync and r_full:
        out.append({"target": "sync decision log: records/s (group commit, full path)",
                    "goal": "reported", "value": f"{t_sync.rps:.0f} records/s", "met": True})
        out.append({"target": "sync decision log: added p50 / p99 vs async at fixed rate",
                    "goal": "reported", "value": f"{r_sync.p50_ms - r_full.p50_ms:.2f} / "
                                                 f"{r_sync.p99_ms - r_full.p99_ms:.2f} ms "
                                                 f"(one {r_sync.seconds:g} s window each: "
                                                 "indicative)",
                    "met": True})
    off = tracing_off_us()
    ours = sum(t_full.cpu_us_per_request.values()) if t_full else 0.0
    out.append({"target": "tracing off: its calls per request (gateway + sidecar)",
                "goal": "< 1% of their CPU",
                "value": f"{off:.1f} us ({off / ours:.2%})" if ours else f"{off:.1f} us",
                "met": bool(ours) and off / ours < 0.01})
    a_off = _find(runs, "gateway -> triton", "rest", 1, "rate")
    a_on = _find(runs, "gateway +auth +redis quota -> triton", "rest", 1, "rate")
    if a_off and a_on:
        out.append({"target": "added p50 of auth + Redis quota (on vs off)", "goal": "reported",
                    "value": f"{a_on.p50_ms - a_off.p50_ms:.2f} ms", "met": True})
    return out


def _relative_targets(runs: list[Run], t_full: Run | None) -> list[dict[str, Any]]:
    """The sync log's and gRPC's full path against direct Triton (one measurement each),
    and our CPU per request against Triton's own on the full path."""
    out = []
    for label, path, protocol, goal in (
            ("full path, sync log, vs direct (REST, batch 1, 16 conns)",
             "full: gateway -> sidecar (sync log)", "rest", 0.42),
            ("full path vs direct, gRPC (batch 1, 16 calls)", FULL, "grpc", 0.40)):
        run, base = (_find(runs, p, protocol, 1, "throughput") for p in (path, DIRECT))
        if run and base and base.rps:
            out.append({"target": label, "goal": f">= {goal:.0%}",
                        "value": f"{run.rps / base.rps:.0%} (one run)",
                        "met": run.rps / base.rps >= goal})
    if t_full and t_full.triton_cpu_us:
        ours = sum(t_full.cpu_us_per_request.values())
        out.append({"target": "our CPU per request vs Triton's own (full path, REST batch 1)",
                    "goal": "<= 1.0x",
                    "value": f"{ours / t_full.triton_cpu_us:.2f}x ({ours:.0f} / "
                             f"{t_full.triton_cpu_us:.0f} us)",
                    "met": ours <= t_full.triton_cpu_us})
    return out


def markdown(runs: list[Run], goals: list[dict[str, Any]], machine: str) -> str:
    lines = [f"Machine: {machine}", "",
             "| path | proto | batch | mode | req/s | vs direct | p50 ms | p95 ms | p99 ms "
             "| errors | our CPU µs/req | Triton CPU µs/req |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        base = _find(runs, DIRECT, r.protocol, r.batch, r.mode)
        ratio = f"{r.rps / base.rps:.0%}" if base and base.rps else "-"
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in r.cpu_us_per_request.items()) or "-"
        lines.append(f"| {r.path} | {r.protocol} | {r.batch} | {r.mode} | {r.rps:.0f} | "
                     f"{ratio} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{r.errors} | {cpu} | {r.triton_cpu_us:.0f} |")
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {g['target']} | {g['goal']} | {g['value']} | {_met(g['met'])} |"
              for g in goals]
    return "\n".join(lines) + "\n"


def _met(met: bool | str) -> str:
    return met if isinstance(met, str) else ("yes" if met else "no")


def plot(runs: list[Run], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(16, 11))
    for ax, (protocol, batch) in zip(axes.flat, [("rest", 1), ("rest", 32), ("grpc", 1),
                                                 ("grpc", 32)], strict=True):
        chosen = [r for r in runs if (r.protocol, r.batch, r.mode) == (protocol, batch, "rate")]
        x = np.arange(len(chosen))
        for i, (q, label) in enumerate([("p50_ms", "p50"), ("p95_ms", "p95"),
                                        ("p99_ms", "p99")]):
            ax.bar(x + (i - 1) * 0.27, [getattr(r, q) for r in chosen], 0.27, label=label)
        # Slanted, one line each: the path names are long and would overlap side by side.
        ax.set_xticks(x, [r.path for r in chosen], fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{protocol.upper()} batch {batch} at a fixed offered rate")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


@contextlib.contextmanager
def redis(workdir: Path) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    port = free_ports(1)[0]
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                               stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


def source_tree(text: str) -> Path:
    """A source tree to run our programs from (`--tree`, a variant's ``=TREE``)."""
    path = Path(text).resolve()
    if not (path / "aios_cli").is_dir():
        raise argparse.ArgumentTypeError(f"{path} holds no aios_cli (for the compiled "
                                         "build, run `make compiled` first)")
    return path


def _tree_label(tree: Path) -> str:
    """Which build the services ran: this tree, or another, compiled or not."""
    if tree == REPO:
        return "this tree (pure Python)"
    compiled = any(tree.joinpath("sidecar").glob("plane.*.so"))
    return f"{tree} ({'mypyc-compiled' if compiled else 'pure Python'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get(
        "BENCH_SECONDS", "5")), help="duration of each measurement")
    parser.add_argument("--rate", type=float, default=200, help="fixed offered rate, req/s")
    parser.add_argument("--transports", action="store_true",
                        help="also run each of our transports against the library it "
                        "replaces (uvicorn, aiohttp, redis-py), paired")
    parser.add_argument("--review", type=int, nargs="?", const=PAIRED_ROUNDS, default=0,
                        metavar="ROUNDS", help="also run one sidecar without and with "
                        f"review gates, in ROUNDS pairs (default {PAIRED_ROUNDS})")
    parser.add_argument("--tail-seconds", type=float, default=15.0,
                        help="each paired round's fixed-rate window (the headline tails)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tree", type=source_tree, default=REPO,
                        help="the source tree the gateways and sidecars run from (default: "
                        "this one; `make compiled` builds build/compiled, the mypyc build "
                        "`make wheel` ships)")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    # For profiling one path: the report then covers only what was measured.
    parser.add_argument("--only", action="append", default=[],
                        help="measure only paths whose name contains this (repeatable)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1, 32)")
    parser.add_argument("--protocol", action="append", choices=("rest", "grpc"),
                        help="protocols (default both)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk (REST throughput falls back to nothing)")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="aios-bench-"))
    stack = Stack(workdir, args.tree)
    try:
        with redis(workdir) as redis_url:
            every = build(stack, redis_url)
            paths = [p for p in every if not args.only or p.name.startswith("triton") or any(
                o in p.name for o in args.only)]
            runs = measure(stack, paths, args.seconds, args.rate, args.connections,
                           tuple(args.batch or (1, 32)), tuple(args.protocol or ("rest", "grpc")))
            by_name = {p.name: p for p in paths}
            pairs = None
            if DIRECT in by_name and FULL in by_name and 1 in (args.batch or (1,)) and \
                    "rest" in (args.protocol or ("rest",)):
                pairs = paired(stack, by_name[DIRECT], by_name[FULL], args.seconds,
                               args.rate, args.connections, args.tail_seconds)
            swaps = transports_ab(stack, build_transports(stack, redis_url, every),
                                  args.seconds, args.connections) if args.transports else []
            reviews = review_ab(stack, args.seconds, args.connections, args.review) \
                if args.review else []
            rss = {name: stack.peak_rss_mib(name) for name, s in stack.services.items()
                   if s.ours}
    finally:
        stack.stop()
    machine = (f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; "
               f"gateways and sidecars from {_tree_label(args.tree)}")
    goals = targets(runs, rss, pairs)
    (args.out / "bench.json").write_text(json.dumps({
        "machine": machine, "seconds": args.seconds, "rate": args.rate,
        "connections": args.connections, "runs": [asdict(r) for r in runs],
        "peak_rss_mib": rss, "paired": {
            k: v for k, v in asdict(pairs).items() if k not in ("direct_ms", "full_ms")
        } if pairs else None,
        "targets": goals, "transports": [asdict(s) for s in swaps],
        "review": [asdict(s) for s in reviews]}, indent=1))
    (args.out / "bench.md").write_text(markdown(runs, goals, machine)
                                       + (swaps_markdown(swaps) if swaps else "")
                                       + (review_markdown(reviews) if reviews else ""))
    plot(runs, args.out / "bench.png")
    print((args.out / "bench.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
