"""The build. By default a pure-Python install (`make setup`, what the tests run first).
With AIOS_COMPILE=1, mypyc compiles the request path's modules into C extensions
(`make wheel`, `make compiled`): the same code, typed with `mypy --strict`, less CPU per
call (loadtests/README.md, rounds 9 and 10)."""

from __future__ import annotations

import os

from setuptools import setup

# The modules every call passes through, front door to decision record. Left out: the
# stream relays (mypyc does not compile async generators: aios/streaming.py and the
# services' streams), the planes' lifespans (async generators too: gateway/service.py,
# sidecar/service.py), and http1's errors (they inherit OSError, which a compiled class
# cannot: aios/http1errors.py).
COMPILED = [
    "aios/batching.py", "aios/chain.py", "aios/compare.py", "aios/envelope.py",
    "aios/grpcjson.py", "aios/h1server.py", "aios/h2frames.py", "aios/h2server.py",
    "aios/http1.py", "aios/ids.py", "aios/kserve.py", "aios/limits.py", "aios/merkle.py",
    "aios/metrics.py", "aios/plane.py", "aios/profile.py", "aios/rest.py", "aios/tasks.py",
    "aios/tensors.py", "aios/tracing.py", "aios/upstream.py", "aios/worker.py",
    "gateway/admission.py", "gateway/auth.py", "gateway/batching.py", "gateway/breaker.py",
    "gateway/plane.py", "gateway/quota.py", "gateway/routing.py", "gateway/scheduling.py",
    "gateway/sequences.py", "gateway/shadow.py", "gateway/targets.py", "gateway/versions.py",
    "sidecar/batching.py", "sidecar/decisionlog.py", "sidecar/drift.py", "sidecar/parity.py",
    "sidecar/pipeline.py", "sidecar/plane.py", "sidecar/records.py", "sidecar/redaction.py",
]

if __name__ == "__main__":  # setuptools runs this file as a script; `make compiled` imports it
    if os.environ.get("AIOS_COMPILE") == "1":
        from mypyc.build import mypycify

        setup(ext_modules=mypycify(COMPILED, opt_level="3"))
    else:
        setup()
