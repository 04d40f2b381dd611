"""The full path in several variants side by side: other source trees (a mypyc-compiled
copy, an older commit's worktree) or other settings, one Triton and one Redis for all.

    python -m loadtests.variants --variant pure --variant compiled=/tmp/compiled
    python -m loadtests.variants --variant two \\
        --variant 'four:{"gateway": {"batching": {"max_in_flight": 4}}}'

A variant is ``NAME[=TREE][:JSON]``: the tree its gateway and sidecar run from (default
this one) and settings merged into their config sections (``{"gateway": {...},
"sidecar": {...}}``). Each round measures direct Triton, then every variant in an order
that alternates round by round; CPU per request of each process comes from /proc. The
machine drifts during a run, so compare the medians and count the rounds each side won.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.bench import (
    DIRECT,
    MODEL,
    REPO,
    SHADOW,
    Path_,
    Stack,
    _addr,
    _auth_headers,
    _gateway,
    _grpc_loop,
    _path,
    _redis_quota,
    _sidecar,
    bodies,
    redis,
    source_tree,
    start_triton,
    wrk,
)


@dataclass
class Variant:
    name: str
    tree: Path
    settings: dict[str, dict[str, Any]]
    rounds: list[tuple[float, float, list[float]]] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """``NAME[=TREE][:JSON]`` (see the module docstring)."""
    head, _, settings = text.partition(":")
    name, _, tree = head.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r}: a name comes first")
    try:
        parsed = json.loads(settings) if settings else {}
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name!r}: settings are not JSON ({exc})"
                                         ) from None
    if not isinstance(parsed, dict) or set(parsed) - {"gateway", "sidecar"}:
        raise argparse.ArgumentTypeError(
            f"variant {name!r}: settings are {{\"gateway\": {{...}}, \"sidecar\": {{...}}}}")
    try:
        path = source_tree(tree) if tree else REPO
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name!r}: {exc}") from None
    return Variant(name, path, parsed)


def measure(path: Path_, protocol: str, seconds: float, workdir: Path) -> tuple[int, float]:
    """(answers, req/s) at 16 concurrent batch-1 calls."""
    rest, payload = bodies(1)
    headers = _auth_headers(path)
    if protocol == "rest":
        run = wrk(path, rest, headers, 16, seconds, workdir)
        return run.requests, run.rps
    latencies, _ = asyncio.run(_grpc_loop(path, payload, tuple(headers.items()), 16, seconds))
    return len(latencies), len(latencies) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True)
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    variants: list[Variant] = args.variant
    if len({v.name for v in variants}) != len(variants):
        parser.error("variant names must differ")
    with tempfile.TemporaryDirectory(prefix="aios-variants-") as tmp:
        workdir = Path(tmp)
        with redis(workdir) as redis_server:
            stack = Stack(workdir)
            try:
                return _run(stack, redis_server, variants, args.protocol, args.rounds,
                            args.seconds)
            finally:
                stack.stop()


def _run(stack: Stack, redis_server: str, variants: list[Variant], protocol: str,
         rounds: int, seconds: float) -> int:
    triton = start_triton(stack)
    direct = Path_(DIRECT, triton["http"], triton["grpc"], ())
    paths = {}
    for v in variants:
        sidecar, gateway = f"sidecar_{v.name}", f"gateway_{v.name}"
        _sidecar(stack, sidecar, triton, "async", extra=v.settings.get("sidecar"), tree=v.tree)
        _gateway(stack, gateway, _addr(stack, sidecar), SHADOW, True,
                 _redis_quota(redis_server), extra=v.settings.get("gateway"), tree=v.tree)
        paths[v.name] = _path(stack, v.name, gateway, (gateway, sidecar), True)
        measure(paths[v.name], protocol, 2, stack.workdir)  # warm
    for i in range(rounds):
        _, direct_rps = measure(direct, protocol, seconds, stack.workdir)
        for v in variants if i % 2 == 0 else variants[::-1]:
            path = paths[v.name]
            before = [stack.cpu_seconds(p) for p in path.processes]
            answers, rps = measure(path, protocol, seconds, stack.workdir)
            cpu = [(stack.cpu_seconds(p) - b) / max(answers, 1) * 1e6
                   for p, b in zip(path.processes, before, strict=True)]
            v.rounds.append((rps, rps / direct_rps, cpu))
            print(f"round {i + 1}: direct {direct_rps:7.0f}  {v.name:12s} {rps:7.0f} req/s "
                  f"({100 * rps / direct_rps:4.1f}%)  CPU µs/req gateway {cpu[0]:4.0f} "
                  f"sidecar {cpu[1]:4.0f}", flush=True)
    print(f"\n{MODEL}, {protocol} batch 1, 16 connections, {rounds} rounds of {seconds:g} s\n")
    print("| variant | req/s (median) | of direct (median, range) | CPU µs/req gateway / "
          "sidecar | rounds fastest |")
    print("|---|---|---|---|---|")
    for v in variants:
        ratios = [r[1] for r in v.rounds]
        wins = sum(1 for i in range(rounds) if max(variants, key=lambda o: o.rounds[i][0]) is v)
        print(f"| {v.name} | {statistics.median(r[0] for r in v.rounds):.0f} | "
              f"{100 * statistics.median(ratios):.1f}% ({100 * min(ratios):.0f}-"
              f"{100 * max(ratios):.0f}%) | {statistics.median(r[2][0] for r in v.rounds):.0f}"
              f" / {statistics.median(r[2][1] for r in v.rounds):.0f} | {wins} of {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
