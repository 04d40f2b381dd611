"""`python -m loadtests.h1_bench`: the REST front door (`aios.h1server`) alone, per request.

A trivial ASGI app behind the server on loopback; one client connection sends requests
pipelined 64 at a time (so the client's own cost is small and the same for every build)
and reads the responses. Printed: the best of five rounds, µs per request. Run it on two
builds of the same tree (`PYTHONPATH=DIR`, e.g. a mypyc one) in one sitting to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

from starlette.types import Receive, Scope, Send

from aios.config import ServerSettings
from aios.h1server import H1Server

PIPELINE = 64
BODY = (b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,8],'
        b'"data":[[4200.0,18,1,9,41,6,0,1]]}]}')
REQUEST = (b"POST /v2/models/claims_risk/infer HTTP/1.1\r\nHost: bench\r\n"
           b"Content-Type: application/json\r\nAuthorization: Bearer x.y.z\r\n"
           b"X-Claim-Id: C-1\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
ANSWER = b'{"outputs":[{"name":"risk_score","datatype":"FP32","shape":[1,1],"data":[0.1]}]}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()  # the small body arrives whole, in one message
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


async def rounds(requests: int) -> list[float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = H1Server(app, ServerSettings(http_port=port, grpc_port=1))
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    per_request = []
    try:
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(requests // PIPELINE):
                writer.write(REQUEST * PIPELINE)
                for _ in range(PIPELINE):
                    await reader.readuntil(b"\r\n\r\n")
                    await reader.readexactly(len(ANSWER))
            per_request.append((time.perf_counter() - start) / requests)
    finally:
        writer.close()
        await server.shutdown()
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    import aios.h1server as built

    times = asyncio.run(rounds(args.requests))
    print(f"{built.__file__}\nbest of 5 rounds of {args.requests:,} requests: "
          f"{min(times) * 1e6:.1f} µs per request (rounds: "
          f"{', '.join(f'{t * 1e6:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
