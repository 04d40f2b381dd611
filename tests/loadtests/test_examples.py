"""The Triton-examples harness's own parts (`make examples` runs the examples themselves,
which need a checkout of triton-inference-server/client): its stack config is one the
services accept, it reads the examples from a bare git directory, and its token hook
reaches both a tritonclient client and a plain gRPC channel."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from aios.config import StackConfig
from loadtests.examples import MODELS, SITECUSTOMIZE, examples_dir, stack_config


def test_the_stack_routes_every_example_model_and_presents_itself_as_triton(
        tmp_path: Path) -> None:
    config = StackConfig.model_validate(stack_config(tmp_path, list(range(9001, 9008)),
                                                     "s" * 64))
    assert sorted(config.gateway.models) == sorted(p.name for p in MODELS.iterdir())
    assert {"simple", "simple_sequence", "repeat_int32"} <= set(config.gateway.models)
    assert config.gateway.server.present_as_triton
    assert not config.sidecar.parity.enabled


def test_examples_are_read_from_a_bare_git_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "src" / "python" / "examples").mkdir(parents=True)
    (work / "src" / "python" / "examples" / "simple_http_infer_client.py").write_text("")
    for command in (["init", "-q"], ["add", "."],
                    ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(work), *command], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "bare")],
                   check=True)
    found = examples_dir(tmp_path / "bare", tmp_path / "out")
    assert [p.name for p in found.glob("*.py")] == ["simple_http_infer_client.py"]
    assert examples_dir(work, tmp_path / "unused") == work / "src" / "python" / "examples"


CLIENT = """
import grpc, sys, tritonclient.http as h
h.InferenceServerClient(sys.argv[1]).is_server_live()
with grpc.insecure_channel(sys.argv[2]) as channel:
    channel.unary_unary("/x.Y/Z")(b"", timeout=5)
"""


def test_the_hook_adds_the_token_to_tritonclient_and_to_plain_grpc(tmp_path: Path) -> None:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"http {self.headers.get('authorization')}")
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()

    def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(f"grpc {dict(context.invocation_metadata()).get('authorization')}")
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "x.Y", {"Z": grpc.unary_unary_rpc_method_handler(answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    try:
        subprocess.run([sys.executable, "-c", CLIENT, f"127.0.0.1:{web.server_port}",
                        f"127.0.0.1:{port}"], check=True, timeout=60,
                       env={"PYTHONPATH": str(hook), "EXAMPLES_TOKEN": "tok",
                            "PATH": "/usr/bin:/bin"})
    finally:
        web.shutdown()
        server.stop(0)
    assert seen == ["http Bearer tok", "grpc Bearer tok"]
