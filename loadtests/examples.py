"""`make examples CLIENT_REPO=…`: Triton's own client examples, unmodified, against Triton
directly and through the gateway, side by side (the gateway with
`server.present_as_triton: true`: two examples check the server's name).

It runs every script in a checkout of triton-inference-server/client
(`src/python/examples`; a bare git directory is read with `git archive`) against a stack
of its own (`aios up`: Triton, a sidecar, a gateway with auth on) serving python-backend
stand-ins for the examples' models (`loadtests/triton_examples/model_repo`). Through the
gateway each script gets a bearer token the way a tritonclient user adds one, with
tritonclient's plugin hook (a `sitecustomize` registers it on every client), and nothing
else changes. A script passes when it exits 0. Those that need what this harness does not
build (image models and their images, a GPU) are listed as not run, with why.

Writes results/examples.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from aios.config import AuthSettings
from aios_cli.tokens import mint_token
from loadtests.ports import free_ports

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "loadtests" / "triton_examples" / "model_repo"
TIMEOUT_S = 120
# Examples that need what this harness does not build, and why.
NOT_RUN = {
    "grpc_client.py": "needs the densenet_onnx image model",
    "grpc_image_client.py": "needs an image classification model and an image",
    "image_client.py": "needs an image classification model and an image",
    "ensemble_image_client.py": "needs an image ensemble and an image",
    "memory_growth_test.py": "needs custom_identity_int32 and runs for hours",
    "simple_grpc_cudashm_client.py": "needs a GPU (CUDA shared memory)",
    "simple_http_cudashm_client.py": "needs a GPU (CUDA shared memory)",
}
# What the gateway refuses by design (README, "Compatibility"), and so these fail there.
REFUSED = {
    "simple_grpc_model_control.py": "repository load/unload: 501, by design",
    "simple_http_model_control.py": "repository load/unload: 501, by design",
    "simple_grpc_shm_client.py": "shared-memory registration: 501, by design",
    "simple_http_shm_client.py": "shared-memory registration: 501, by design",
    "simple_grpc_shm_string_client.py": "shared-memory registration: 501, by design",
    "simple_http_shm_string_client.py": "shared-memory registration: 501, by design",
    "reuse_infer_objects_client.py": "shared-memory registration: 501, by design",
}

SITECUSTOMIZE = textwrap.dedent('''
    """Adds a bearer token to every tritonclient client with tritonclient's plugin hook,
    and to a plain gRPC channel (the examples that use the generated stubs) with a client
    interceptor, gRPC's own hook."""
    import os

    import grpc
    from tritonclient._plugin import InferenceServerClientPlugin

    TOKEN = ("authorization", "Bearer " + os.environ["EXAMPLES_TOKEN"])


    class Bearer(InferenceServerClientPlugin):
        def __call__(self, request):
            if request.headers is None:
                request.headers = {}
            request.headers[TOKEN[0]] = TOKEN[1]


    class Metadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        def _with_token(self, details):
            metadata = [m for m in (details.metadata or ()) if m[0] != TOKEN[0]]
            return details._replace(metadata=[*metadata, TOKEN])

        def intercept_unary_unary(self, continuation, details, request):
            return continuation(self._with_token(details), request)

        def intercept_stream_stream(self, continuation, details, requests):
            return continuation(self._with_token(details), requests)


    _channel = grpc.insecure_channel
    grpc.insecure_channel = lambda *a, **k: grpc.intercept_channel(_channel(*a, **k),
                                                                   Metadata())


    def _with_token(cls):
        init = cls.__init__

        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.register_plugin(Bearer())

        cls.__init__ = __init__


    import tritonclient.grpc
    import tritonclient.grpc.aio
    import tritonclient.http
    import tritonclient.http.aio

    for module in (tritonclient.grpc, tritonclient.grpc.aio, tritonclient.http,
                   tritonclient.http.aio):
        _with_token(module.InferenceServerClient)
''')


@dataclass
class Outcome:
    example: str
    direct: str  # pass | fail | not run
    gateway: str
    note: str = ""
    gateway_output: str = ""


def examples_dir(client_repo: Path, tmp: Path) -> Path:
    """``src/python/examples`` of a checkout, or of a bare git directory (archived)."""
    checkout = client_repo / "src" / "python" / "examples"
    if checkout.is_dir():
        return checkout
    archive = subprocess.run(["git", "--git-dir", str(client_repo), "archive", "HEAD",
                              "src/python/examples"], check=True, capture_output=True).stdout
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "src" / "python" / "examples"


def stack_config(tmp: Path, ports: list[int], secret: str) -> dict[str, object]:
    h = "127.0.0.1"
    t_http, t_grpc, t_metrics, s_http, s_grpc, g_http, g_grpc = ports
    models = sorted(p.name for p in MODELS.iterdir())
    return {
        "triton": {"model_repository": str(MODELS), "http_port": t_http, "grpc_port": t_grpc,
                   "metrics_port": t_metrics},
        "sidecar": {"server": {"http_port": s_http, "grpc_port": s_grpc},
                    "triton": {"http": f"{h}:{t_http}", "grpc": f"{h}:{t_grpc}"},
                    "decision_log": {"directory": str(tmp / "decisions")},
                    "parity": {"enabled": False}},
        # The health examples check that the server's name is "triton".
        "gateway": {"server": {"http_port": g_http, "grpc_port": g_grpc,
                               "present_as_triton": True},
                    "backends": {"local": {"http": f"{h}:{s_http}", "grpc": f"{h}:{s_grpc}"}},
                    "models": {m: {"backend": "local"} for m in models},
                    "routing": {"state_file": str(tmp / "routes.json")},
                    "change_log": {"directory": str(tmp / "route-changes")},
                    "auth": {"hs256_secret": secret},
                    "quota": {"tenants": {"examples": {"rate_per_s": 1e6, "burst": 100000}}}},
    }


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def running_stack(tmp: Path, config: dict[str, object], gateway_port: int) -> Iterator[None]:
    path = tmp / "stack.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp / "stack.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "aios_cli", "up", "--config", str(path),
                                "--log-dir", str(tmp / "logs")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while not ready(gateway_port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the stack did not start: see {tmp / 'stack.log'}")
            time.sleep(1)
        yield
    finally:
        process.send_signal(2)
        process.wait(60)


def run_example(script: Path, url: str, env: dict[str, str]) -> tuple[bool, str]:
    try:
        done = subprocess.run([sys.executable, str(script), "-u", url], cwd=script.parent,
                              capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TIMEOUT_S} s"
    return done.returncode == 0, (done.stdout + done.stderr)[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client-repo", type=Path, required=True,
                        help="a checkout (or bare git directory) of "
                             "triton-inference-server/client")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="aios-examples-"))
    scripts = sorted(examples_dir(args.client_repo, tmp).glob("*.py"))
    ports = free_ports(7)
    secret = secrets.token_hex(32)
    token = mint_token(AuthSettings(hs256_secret=secret), "examples", "examples", "infer:*",
                       3600)
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    plain = {**os.environ}
    plain.pop("PYTHONPATH", None)
    with_token = {**plain, "PYTHONPATH": str(hook), "EXAMPLES_TOKEN": token}
    outcomes = []
    with running_stack(tmp, stack_config(tmp, ports, secret), ports[5]):
        for script in scripts:
            name = script.name
            if name in NOT_RUN:
                outcomes.append(Outcome(name, "not run", "not run", NOT_RUN[name]))
                continue
            grpc = "grpc" in name
            direct_ok, _ = run_example(script, f"127.0.0.1:{ports[1] if grpc else ports[0]}",
                                       plain)
            gateway_ok, output = run_example(
                script, f"127.0.0.1:{ports[6] if grpc else ports[5]}", with_token)
            outcomes.append(Outcome(name, "pass" if direct_ok else "fail",
                                    "pass" if gateway_ok else "fail", REFUSED.get(name, ""),
                                    "" if gateway_ok else output))
            print(f"{name:<48} direct {outcomes[-1].direct:<5} gateway "
                  f"{outcomes[-1].gateway:<5} {outcomes[-1].note}", flush=True)
    ran = [o for o in outcomes if o.direct != "not run"]
    print(f"\n{sum(o.direct == 'pass' for o in ran)} of {len(ran)} pass against Triton "
          f"directly, {sum(o.gateway == 'pass' for o in ran)} through the gateway "
          f"({len(REFUSED)} refused by design); {len(outcomes) - len(ran)} not run")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "examples.json").write_text(json.dumps([asdict(o) for o in outcomes],
                                                       indent=2))
    unexpected = [o for o in ran if o.gateway != "pass" and o.example not in REFUSED]
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
