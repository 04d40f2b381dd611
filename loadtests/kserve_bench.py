"""`python -m loadtests.kserve_bench [--module PATH]`: the front door's per-call parsing
items in `aios.kserve` (gRPC message peeks, the REST infer header check), per call.

With ``--module`` pointing at a directory holding another build of `aios` (a mypyc one:
`cp -r aios proto pyproject.toml DIR && cd DIR && mypyc aios/kserve.py`), that build is
measured instead, so the two can be compared in one sitting.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc.service_pb2 as pb


def best_of(fn: Callable[[], Any], n: int) -> float:
    """The fastest of three runs of ``n`` calls, seconds per call."""
    for _ in range(1000):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", help="a directory holding the build of aios to measure")
    args = parser.parse_args()
    if args.module:
        sys.path.insert(0, args.module)
    kserve = importlib.import_module("aios.kserve")
    request = pb.ModelInferRequest(model_name="claims_risk", model_version="2", id="req-1")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "features", "FP32"
    tensor.shape.extend([1, 8])
    request.raw_input_contents.append(np.ones((1, 8), np.float32).tobytes())
    request.parameters["priority"].int64_param = 1
    message = request.SerializeToString()
    row = [4200.0, 18, 1, 9, 41, 6, 0, 1]
    bodies = {n: json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                         "shape": [n, 8], "data": [row] * n}]}).encode()
              for n in (1, 32)}
    items: list[tuple[str, Callable[[], Any], int]] = [
        ("peek_model (gRPC)", lambda: kserve.peek_model(message), 100_000),
        ("peek_batch (gRPC)", lambda: kserve.peek_batch(message), 100_000),
        ("peek_parameters (gRPC)", lambda: kserve.peek_parameters(message), 100_000),
        ("with_model (gRPC)", lambda: kserve.with_model(message, "claims_risk", "1"), 100_000),
        *((f"validate_infer_request batch {n}",
           (lambda b=body: kserve.validate_infer_request(b, len(b))), 20_000)
          for n, body in bodies.items()),
    ]
    print(f"{kserve.__file__}")
    for name, fn, n in items:
        print(f"{name:34} {best_of(fn, n) * 1e6:8.2f} µs")


if __name__ == "__main__":
    main()
