"""Faults caused for real: a hanging backend, a full disk, SIGTERM under load."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
from tritonclient.grpc import service_pb2

from aios.auditlog import records, verify
from aios.checkpoint import load_public_key, write_key_pair
from aios.witness import DirectoryWitness
from tests.conftest import Stack
from tests.helpers import (
    MODEL_REPO,
    aios,
    bearer,
    descendants,
    free_ports,
    gateway_config,
    infer_json,
    listening,
    repo_with_test_models,
    running,
    wait_until,
)

CLAIM = [5255.7, 46.0, 1.0, 14.0, 19.0, 5.6, 1.0, 0.0]
INFER = "/inference.GRPCInferenceService/ModelInfer"


def slow_request() -> bytes:
    req = service_pb2.ModelInferRequest(model_name="slow")
    tensor = req.inputs.add(name="features", datatype="FP32")
    tensor.shape.extend([1, 8])
    req.raw_input_contents.append(bytes(32))
    req.parameters["delay_ms"].int64_param = 3000
    return bytes(req.SerializeToString())


def test_a_hanging_backend_times_out_at_the_route_timeout(stack: Stack, tmp_path: Path) -> None:
    models = {"slow": {"targets": {"only": {"backend": "local", "timeout_s": 0.5}}}}
    config, http_port, grpc_port = gateway_config(stack.sidecar_http, stack.sidecar_grpc,
                                                  models)
    with running("gateway", config, http_port, tmp_path):
        start = time.monotonic()
        resp = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/slow/infer",
                          content=infer_json([CLAIM], {"delay_ms": 3000}), headers=bearer(),
                          timeout=30)
        took = time.monotonic() - start
        assert (resp.status_code, resp.json()) == (
            504, {"error": "backend 'local' did not answer in time"})
        assert took < 1.5
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            start = time.monotonic()
            try:
                channel.unary_unary(INFER)(slow_request(), metadata=tuple(bearer().items()),
                                           timeout=30)
                raise AssertionError("the call should time out")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - start < 1.5


def test_sync_log_on_a_full_disk_answers_503_never_200(stack: Stack, tmp_path: Path) -> None:
    decisions = tmp_path / "full"
    decisions.mkdir()
    (decisions / "segment-0000000000000001.log").symlink_to("/dev/full")
    http_port, grpc_port = free_ports(2)
    config = {"sidecar": {"server": {"http_port": http_port, "grpc_port": grpc_port},
                          "triton": {"http": stack.triton_http, "grpc": stack.triton_grpc},
                          "decision_log": {"directory": str(decisions), "mode": "sync"}}}
    with running("sidecar", config, http_port, tmp_path):
        resp = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                          content=infer_json([CLAIM]))
        assert resp.status_code == 503
        assert resp.json() == {"error": "decision log unavailable (No space left on device); "
                                        "the decision was not recorded"}


def test_sigterm_finishes_in_flight_calls_then_exits_0(stack: Stack, tmp_path: Path) -> None:
    config, http_port, _ = gateway_config(stack.sidecar_http, stack.sidecar_grpc,
                                          {"slow": {"backend": "local"}})
    results: list[int] = []
    with running("gateway", config, http_port, tmp_path) as gateway:
        def call() -> None:
            resp = httpx.post(f"http://127.0.0.1:{http_port}/v2/models/slow/infer",
                              content=infer_json([CLAIM], {"delay_ms": 1500}),
                              headers=bearer(), timeout=30)
            results.append(resp.status_code)

        callers = [threading.Thread(target=call) for _ in range(3)]
        for t in callers:
            t.start()

        def in_flight() -> float:
            text = httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("aios_gateway_in_flight_requests"))

        # All three are being answered (a fixed sleep raced slow thread starts).
        wait_until(lambda: in_flight() == 3, 10, "3 calls in flight", gateway)
        gateway.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert not listening(http_port), "no new calls once stopping"
        for t in callers:
            t.join(30)
        assert gateway.wait(30) == 0
    assert results == [200, 200, 200]


def test_failing_calls_leak_no_connections(stack: Stack, tmp_path: Path) -> None:
    dead_http, dead_grpc = free_ports(2)
    models = {"claims_risk": {"backend": "dead"}}
    config, http_port, _ = gateway_config(stack.sidecar_http, stack.sidecar_grpc, models)
    config["gateway"]["backends"] = {  # type: ignore[index]
        "dead": {"http": f"127.0.0.1:{dead_http}", "grpc": f"127.0.0.1:{dead_grpc}"}}
    with running("gateway", config, http_port, tmp_path) as gateway, httpx.Client() as client:
        def fds() -> int:
            return len(list(Path(f"/proc/{gateway.pid}/fd").iterdir()))

        def burst() -> None:
            for _ in range(50):
                resp = client.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                                   content=infer_json([CLAIM]), headers=bearer())
                assert resp.status_code in (502, 503)

        burst()
        before = fds()
        burst()
        burst()
        assert fds() <= before + 2


def test_sigterm_flushes_an_async_decision_log(stack: Stack, tmp_path: Path) -> None:
    http_port, grpc_port = free_ports(2)
    directory = tmp_path / "async-log"
    key = tmp_path / "signing.pem"
    write_key_pair(key, tmp_path / "signing.pub.pem")
    config = {"sidecar": {"server": {"http_port": http_port, "grpc_port": grpc_port},
                          "triton": {"http": stack.triton_http, "grpc": stack.triton_grpc},
                          "decision_log": {"directory": str(directory), "mode": "async",
                                           "signing_key_file": str(key),
                                           "checkpoint_every_s": 3600}}}
    acknowledged = []
    with running("sidecar", config, http_port, tmp_path) as sidecar, httpx.Client() as client:
        for i in range(100):
            resp = client.post(f"http://127.0.0.1:{http_port}/v2/models/claims_risk/infer",
                               content=infer_json([CLAIM]), headers={"x-request-id": f"a{i}"})
            assert resp.status_code == 200
            acknowledged.append(f"a{i}")
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(30) == 0
    witness = DirectoryWitness(tmp_path / "async-log-checkpoints")
    report = verify(directory, witness, load_public_key(key))
    assert report.intact and report.warnings == [], report
    assert report.covered == 100, "a checkpoint at shutdown covers every record"
    assert {r.request_id for r in records(directory)} == set(acknowledged)


def test_triton_killed_mid_request(tmp_path: Path) -> None:
    t_http, t_grpc, t_metrics, s_http, s_grpc = free_ports(5)
    triton_config = tmp_path / "triton.yaml"
    triton_config.write_text(json.dumps({"triton": {
        "model_repository": str(repo_with_test_models(tmp_path)), "http_port": t_http,
        "grpc_port": t_grpc, "metrics_port": t_metrics}}))
    log = tmp_path / "triton.log"
    triton = aios("triton", "--config", str(triton_config), log=log)
    try:
        wait_until(lambda: "Triton ready" in log.read_text(), 180, "triton", triton, log)
        server = next(p for p in descendants(triton.pid)
                      if "tritonserver" in Path(f"/proc/{p}/cmdline").read_text())
        sidecar = {"sidecar": {
            "server": {"http_port": s_http, "grpc_port": s_grpc},
            "triton": {"http": f"127.0.0.1:{t_http}", "grpc": f"127.0.0.1:{t_grpc}"},
            "decision_log": {"directory": str(tmp_path / "decisions")},
            "parity": {"model_repository": str(MODEL_REPO)}}}
        with running("sidecar", sidecar, s_http, tmp_path) as side:
            fds_before = len(list(Path(f"/proc/{side.pid}/fd").iterdir()))
            tasks_before = _tasks(s_http)
            codes: list[int] = []

            def call(i: int) -> None:
                resp = httpx.post(f"http://127.0.0.1:{s_http}/v2/models/slow/infer",
                                  content=infer_json([CLAIM], {"delay_ms": 3000}),
                                  headers={"x-request-id": f"k{i}"}, timeout=30)
                codes.append(resp.status_code)

            callers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
            for t in callers:
                t.start()
            time.sleep(1.0)
            os.kill(server, signal.SIGKILL)
            for t in callers:
                t.join(30)
            assert codes == [502] * 4
            found = {r.request_id: r for r in records(tmp_path / "decisions")}
            assert all(found[f"k{i}"].outcome == "502" for i in range(4))
            assert all("unreachable" in found[f"k{i}"].error or "triton" in found[f"k{i}"].error
                       for i in range(4))
            time.sleep(0.5)
            assert len(list(Path(f"/proc/{side.pid}/fd").iterdir())) <= fds_before + 2
            assert _tasks(s_http) <= tasks_before
    finally:
        triton.send_signal(signal.SIGINT)
        triton.wait(60)


def _tasks(port: int) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith("aios_sidecar_asyncio_tasks "):
            return float(line.split()[1])
    raise AssertionError("no task gauge")
