"""Child processes of the launchers: started so none outlives its parent, stopped cleanly."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 30.0
# A launcher whose child launches in turn (`aios up` → `aios triton` → tritonserver) waits
# past the child's own STOP_TIMEOUT_S: else it SIGKILLs the child while the child is still
# stopping its grandchild, and the grandchild (in its own group) outlives both for a moment.
LAUNCHER_STOP_TIMEOUT_S = STOP_TIMEOUT_S + 15.0
READY_POLL_S = 0.25


class StartupError(Exception):
    """A child process exited or did not become ready in time."""


class Stop(Exception):
    """Raised from a signal handler to leave a blocking wait."""


def child_preexec() -> None:
    """Run in a forked child before exec: SIGTERM it when its parent dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_stop(signum: int, _: object) -> None:
    """A signal handler that turns SIGINT/SIGTERM into `Stop`."""
    raise Stop(signum)


def is_ready(http_address: str, timeout_s: float = 1.0) -> bool:
    """Whether the KServe v2 server at ``host:port`` answers ready."""
    try:
        with urllib.request.urlopen(f"http://{http_address}/v2/health/ready",
                                    timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(name: str, http_address: str, timeout_s: float,
               process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``http_address`` is ready; StartupError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StartupError(f"{name} exited with code {process.returncode}")
        if is_ready(http_address):
            return
        time.sleep(READY_POLL_S)
    raise StartupError(f"{name} at {http_address} not ready after {timeout_s:.0f}s")


def stop_group(name: str, process: subprocess.Popen[bytes],
               timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM the child's process group, SIGKILL what is left of it past the timeout."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", name, timeout_s)
    # Grandchildren (Triton's python stubs) can outlive their parent by a moment.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()
