"""`python -m loadtests.grpc_front_bench`: the gRPC front doors alone, CPU per unary call.

A server process answers ModelInfer with a canned response, from ``aios.h2server`` or
from grpc.aio (the same handler), and a grpc.aio client in this process keeps 16 calls
in flight for a few seconds. Printed per round: calls/s and the server process's CPU
(utime+stime from /proc) per call, alternating the two servers so that the machine's
drift weighs on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import grpc
import grpc.aio
import uvloop
from tritonclient.grpc import service_pb2

from aios.config import ServerSettings
from aios.h2server import GrpcFront
from aios.limits import InFlight
from loadtests.ports import free_ports

INFER = "/inference.GRPCInferenceService/ModelInfer"
REQUEST: bytes = service_pb2.ModelInferRequest(model_name="claims_risk").SerializeToString()
REPLY: bytes = service_pb2.ModelInferResponse(model_name="claims_risk",
                                       raw_output_contents=[b"\x00" * 4]).SerializeToString()
CONCURRENCY = 16


async def answer(request: bytes, context: Any) -> bytes:
    return REPLY


async def serve(kind: str, port: int) -> None:
    relay = grpc.aio.server()
    relay.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(answer)}),))
    if kind == "grpcio":
        relay.add_insecure_port(f"127.0.0.1:{port}")
        await relay.start()
    else:
        relay_port = relay.add_insecure_port("127.0.0.1:0")
        await relay.start()
        front = GrpcFront({INFER: answer}, ("127.0.0.1", relay_port),
                          ServerSettings(http_port=1, grpc_port=port), InFlight(1024))
        await front.start()
    await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, pid: int, seconds: float) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(INFER)
        await call(REQUEST, timeout=10)
        calls = 0
        stop = time.monotonic() + seconds
        before = cpu_seconds(pid)

        async def worker() -> None:
            nonlocal calls
            while time.monotonic() < stop:
                await call(REQUEST, timeout=10)
                calls += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return calls / seconds, (cpu_seconds(pid) - before) / calls * 1e6


def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=("h2", "grpcio"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.serve, args.port))
        return 0
    print(f"{'server':8s} {'calls/s':>8s} {'server CPU µs/call':>19s}")
    for _ in range(args.rounds):
        for kind in ("h2", "grpcio"):
            [port] = free_ports(1)
            server = subprocess.Popen([sys.executable, "-m", "loadtests.grpc_front_bench",
                                       "--serve", kind, "--port", str(port)])
            try:
                wait_listening(port)
                rate, cpu = asyncio.run(drive(port, server.pid, args.seconds))
            finally:
                server.terminate()
                server.wait(10)
            print(f"{kind:8s} {rate:8.0f} {cpu:19.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
