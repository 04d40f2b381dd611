"""What tritonclient gets for the Triton APIs the services do not proxy, through the real
gateway and sidecar: a clear 501 / UNIMPLEMENTED naming the API, or (shared-memory status
and unregister) an empty registry, so programs that clear shared memory at start run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from aios.unsupported import EXTENSIONS, UNSUPPORTED
from tests.conftest import Stack
from tests.helpers import REPO, bearer, gateway_config, running, token

Client = Any


def clients(stack: Stack) -> dict[str, Client]:
    return {"http": httpclient.InferenceServerClient(stack.gateway_http),
            "grpc": grpcclient.InferenceServerClient(stack.gateway_grpc),
            "http-sidecar": httpclient.InferenceServerClient(stack.sidecar_http),
            "grpc-sidecar": grpcclient.InferenceServerClient(stack.sidecar_grpc)}


CLIENTS = ["http", "grpc", "http-sidecar", "grpc-sidecar"]

REFUSED: dict[str, tuple[Callable[[Client], Any], str]] = {
    "load": (lambda c: c.load_model("claims_risk", headers=bearer()),
             "the model repository API is not exposed by this server: models are loaded "
             "and unloaded on the Triton servers behind it"),
    "unload": (lambda c: c.unload_model("claims_risk", headers=bearer()),
               "the model repository API is not exposed by this server"),
    "system shm register": (
        lambda c: c.register_system_shared_memory("r", "/k", 64, headers=bearer()),
        "shared-memory registration is not exposed by this server: its clients are on "
        "other machines than its Triton servers; send tensors in the request"),
    "cuda shm register": (
        lambda c: c.register_cuda_shared_memory("r", "aGFuZGxl", 0, 64, headers=bearer()),
        "shared-memory registration is not exposed by this server"),
    "trace settings": (lambda c: c.get_trace_settings(headers=bearer()),
                       "the trace settings API is not exposed by this server: tracing is set "
                       "in the stack file's tracing section"),
    "model trace settings": (lambda c: c.get_trace_settings("claims_risk", headers=bearer()),
                             "the trace settings API is not exposed by this server"),
    "log settings": (lambda c: c.get_log_settings(headers=bearer()),
                     "the log settings API is not exposed by this server: the log level is "
                     "set at start (--log-level or AIOS_LOG_LEVEL)"),
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("api", REFUSED)
def test_what_is_not_proxied_is_refused_by_name(stack: Stack, client: str, api: str) -> None:
    call, message = REFUSED[api]
    with pytest.raises(InferenceServerException) as info:
        call(clients(stack)[client])
    status = str(info.value.status())
    assert status in ("501", "StatusCode.UNIMPLEMENTED"), status
    assert message in info.value.message(), info.value.message()


@pytest.mark.parametrize("client", CLIENTS)
def test_the_shared_memory_idiom_sees_an_empty_registry(stack: Stack, client: str) -> None:
    c = clients(stack)[client]
    c.unregister_system_shared_memory(headers=bearer())
    c.unregister_cuda_shared_memory(headers=bearer())
    c.unregister_system_shared_memory("region-0", headers=bearer())
    system = c.get_system_shared_memory_status(headers=bearer())
    cuda = c.get_cuda_shared_memory_status(headers=bearer())
    if client.startswith("http"):
        assert system == [] and cuda == []
    else:
        assert len(system.regions) == 0 and len(cuda.regions) == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_server_metadata_lists_the_extensions_served(stack: Stack, client: str) -> None:
    meta = clients(stack)[client].get_server_metadata(headers=bearer())
    extensions = meta["extensions"] if client.startswith("http") else list(meta.extensions)
    assert extensions == list(EXTENSIONS)


def test_the_server_can_present_itself_as_triton(stack: Stack, tmp_path: Path) -> None:
    config, http_port, grpc_port = gateway_config(
        stack.sidecar_http, stack.sidecar_grpc, {"claims_risk": {"backend": "local"}},
        server={"present_as_triton": True})
    with running("gateway", config, http_port, tmp_path):
        assert httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").get_server_metadata(
        )["name"] == "triton"
        assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").get_server_metadata(
        ).name == "triton"
    assert clients(stack)["http"].get_server_metadata()["name"] == "aios-gateway"


def test_the_readme_table_says_what_the_servers_do() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index("### Compatibility"):].split("\n\n")[2]
    rows = [r for r in table.splitlines() if r.startswith("| ") and "---" not in r]
    assert ", ".join(EXTENSIONS) in table
    refused = [r for r in rows if "refused, 501 / UNIMPLEMENTED" in r]
    for api in UNSUPPORTED:
        words = {"Repository": "repository", "Register": "register", "Trace": "trace",
                 "Log": "log settings"}
        kind = next((w for k, w in words.items() if k in api.grpc_method), "")
        if api.empty:
            assert any("empty registry" in r and "shared memory" in r for r in rows)
        elif kind:
            assert any(kind in r for r in refused), (api, kind)
    streaming = next(r for r in rows if r.startswith("| `ModelStreamInfer`"))
    assert "| served" in streaming, "test_streaming.py drives it through both hops"


@pytest.mark.parametrize("client", ["http", "grpc"])
@pytest.mark.parametrize(("scope", "models"), [("infer:*", ["claims_risk", "slow"]),
                                               ("infer:claims_risk", ["claims_risk"]),
                                               ("routes:read", [])])
def test_the_repository_index_lists_what_the_caller_may_call(
        stack: Stack, client: str, scope: str, models: list[str]) -> None:
    index = clients(stack)[client].get_model_repository_index(
        headers={"authorization": f"Bearer {token(scope)}"})
    entries = index if client == "http" else [
        {"name": m.name, "state": m.state} for m in index.models]
    assert [m["name"] for m in entries] == models
    assert {m["state"] for m in entries} <= {"READY"}


@pytest.mark.parametrize("client", ["http", "grpc"])
def test_the_repository_index_needs_a_token(stack: Stack, client: str) -> None:
    with pytest.raises(InferenceServerException, match="missing bearer token"):
        clients(stack)[client].get_model_repository_index()


@pytest.mark.parametrize("client", ["http-sidecar", "grpc-sidecar"])
def test_the_sidecar_answers_with_its_tritons_index(stack: Stack, client: str) -> None:
    index = clients(stack)[client].get_model_repository_index()
    entries = index if client == "http-sidecar" else [
        {"name": m.name, "version": m.version, "state": m.state} for m in index.models]
    ready = {(m["name"], m["version"]) for m in entries if m["state"] == "READY"}
    assert {("claims_risk", "1"), ("claims_risk", "2")} <= ready
