"""What the services do not proxy of Triton's API, said plainly: repository control
(load and unload; the index is answered, with what the caller may see),
shared-memory registration, trace and log settings get 501 / UNIMPLEMENTED naming the
API and why; the shared-memory status and unregister calls answer as an empty registry,
so that the common idiom (a client that unregisters everything at start) works. The REST
(`aios.rest`) and gRPC (`aios.grpc_service`) adapters serve this one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from aios.errors import Unimplemented

_REPOSITORY = ("the model repository API", "models are loaded and unloaded on the Triton "
               "servers behind it, by their operators")
_SHM = ("shared-memory registration", "its clients are on other machines than its Triton "
        "servers; send tensors in the request (binary tensor data)")
_TRACE = ("the trace settings API", "tracing is set in the stack file's tracing section")
_LOGGING = ("the log settings API", "the log level is set at start (--log-level or AIOS_LOG_LEVEL)")


@dataclass(frozen=True)
class Unsupported:
    """One API: where it is in each protocol, and either its refusal or ``empty`` (it
    answers as an empty registry would)."""

    rest_method: str
    rest_path: str  # a Starlette path
    grpc_method: str  # "" when the REST path has no gRPC twin of its own
    what: str = ""
    why: str = ""
    empty: bool = False

    def refusal(self) -> Unimplemented:
        return Unimplemented(f"{self.what} is not exposed by this server: {self.why}")


def _shared_memory(kind: str, grpc_kind: str) -> list[Unsupported]:
    out = []
    for region in ("", "/region/{region}"):
        base = f"/v2/{kind}sharedmemory{region}"
        twin = bool(region) is False
        out += [
            Unsupported("GET", f"{base}/status", f"{grpc_kind}SharedMemoryStatus" if twin
                        else "", empty=True),
            Unsupported("POST", f"{base}/register", f"{grpc_kind}SharedMemoryRegister" if twin
                        else "", *_SHM),
            Unsupported("POST", f"{base}/unregister", f"{grpc_kind}SharedMemoryUnregister"
                        if twin else "", empty=True),
        ]
    return out


UNSUPPORTED = (
    Unsupported("POST", "/v2/repository/models/{model}/load", "RepositoryModelLoad",
                *_REPOSITORY),
    Unsupported("POST", "/v2/repository/models/{model}/unload", "RepositoryModelUnload",
                *_REPOSITORY),
    *_shared_memory("system", "System"),
    *_shared_memory("cuda", "Cuda"),
    Unsupported("GET", "/v2/trace/setting", "TraceSetting", *_TRACE),
    Unsupported("POST", "/v2/trace/setting", "", *_TRACE),
    Unsupported("GET", "/v2/logging", "LogSettings", *_LOGGING),
    Unsupported("POST", "/v2/logging", "", *_LOGGING),
)

# A model's own trace settings (/v2/models/<model>/trace/setting): the model-call path.
MODEL_TRACE = Unsupported("GET", "/v2/models/{model}/trace/setting", "", *_TRACE)

# What `GET /v2` and ServerMetadata list: the KServe / Triton extensions served end to end.
EXTENSIONS = ("binary_tensor_data", "classification", "parameters", "statistics",
              "model_configuration")
