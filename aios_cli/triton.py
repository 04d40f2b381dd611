"""Run the real `tritonserver` that `nvidia-pytriton` carries, on a model repository.

pytriton ships the server binary, the python backend and one backend stub per Python
version. The stub must match the running Python, load that Python's own libpython, and see
the site-packages that hold torch; `triton_environment` arranges all three.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from aios.config import TritonSettings
from aios_cli.process import Stop, child_preexec, raise_stop, stop_group, wait_ready

logger = logging.getLogger(__name__)


class TritonError(Exception):
    """Triton could not be found, started, or made ready."""


def pytriton_dir() -> Path:
    """Where the installed `pytriton` package lives (without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise TritonError("nvidia-pytriton is not installed: install the 'triton' extra "
                          "(pip install -e '.[triton]')")
    return Path(spec.origin).parent


def prepare_backends(workdir: Path) -> Path:
    """Lay out ``workdir/backends/python`` with the backend and this Python's stub."""
    dist = pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"nvidia-pytriton has no python backend stub for Python {version}")
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in [*(dist / "backends" / "python").glob("*.*"), stub]:
        dst = target / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return workdir / "backends"


def triton_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The environment the server and its python stubs need."""
    env = dict(base)
    site = str(pytriton_dir().parent)
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(Path(site) / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PYTHONPATH"] = ":".join(p for p in (site, env.get("PYTHONPATH", "")) if p)
    # The stub starts the interpreter found first on PATH: make it this one.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def trace_flags(traces_url: str, service_name: str) -> list[str]:
    """Triton's own OpenTelemetry tracing, exporting to an OTLP/HTTP traces URL. It
    continues the ``traceparent`` the sidecar sends, so its spans join the trace."""
    return [f"--trace-config={option}" for option in (
        "mode=opentelemetry", f"opentelemetry,url={traces_url}", "rate=1",
        "level=TIMESTAMPS", f"opentelemetry,resource=service.name={service_name}")]


def triton_command(settings: TritonSettings, backends: Path,
                   tracing: list[str] | None = None) -> list[str]:
    """The tritonserver command line for ``settings`` (plus `trace_flags`, if tracing)."""
    return [
        str(pytriton_dir() / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={settings.model_repository.resolve()}",
        f"--backend-directory={backends}",
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--log-verbose={settings.log_verbose}",
        *(tracing or ()),
    ]


def run_triton(settings: TritonSettings, workdir: Path,
               tracing: list[str] | None = None) -> int:
    """Start tritonserver, wait until ready, serve until SIGINT/SIGTERM, stop it cleanly."""
    if settings.external_http:
        logger.info("using the external Triton at %s", settings.external_http)
        wait_ready("Triton", settings.external_http, settings.startup_timeout_s)
        logger.info("external Triton at %s is ready", settings.external_http)
        return 0
    if not (settings.model_repository / ".").is_dir():
        raise TritonError(f"model repository {settings.model_repository} does not exist "
                          "(run `aios models build`)")
    command = triton_command(settings, prepare_backends(workdir), tracing)
    logger.info("starting %s", " ".join(command))
    # Its own process group, so stop() reaches the python stubs too; its logs go to ours.
    process = subprocess.Popen(command, env=triton_environment(os.environ),
                               start_new_session=True, preexec_fn=child_preexec)
    previous = {s: signal.signal(s, raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        wait_ready("tritonserver", settings.http_address, settings.startup_timeout_s, process)
        logger.info("Triton ready: HTTP %s, gRPC %s", settings.http_address,
                    settings.grpc_address)
        code = process.wait()
        logger.error("tritonserver exited by itself with code %d", code)
        return code or 1
    except Stop:
        return 0
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        logger.info("tritonserver stopped (exit code %d)", stop_group("tritonserver", process))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
