"""`aios_cli.process.stop_group` across a launcher and its own child, with real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from aios_cli.process import LAUNCHER_STOP_TIMEOUT_S, STOP_TIMEOUT_S, child_preexec, stop_group
from tests.helpers import REPO, alive

# A launcher (as `aios triton`): starts a grandchild in its own group that takes SLOW_S to
# stop (as a tritonserver unloading models), and stops it with stop_group(INNER_S).
LAUNCHER = textwrap.dedent("""
    import signal, subprocess, sys
    from aios_cli.process import Stop, child_preexec, raise_stop, stop_group
    slow = ("import signal, time; signal.signal(signal.SIGTERM, lambda *a: None); "
            "print(flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", slow], start_new_session=True,
                             preexec_fn=child_preexec, stdout=subprocess.PIPE)
    child.stdout.readline()
    signal.signal(signal.SIGTERM, raise_stop)  # before the parent can send it
    try:
        print(child.pid, flush=True)
        signal.pause()
    except Stop:
        stop_group("grandchild", child, float(sys.argv[1]))
""")
INNER_S = 1.5


def stop_launcher(outer_s: float, tmp_path: Path) -> int:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    launcher = subprocess.Popen([sys.executable, str(script), str(INNER_S)], cwd=REPO,
                                start_new_session=True, preexec_fn=child_preexec,
                                stdout=subprocess.PIPE, env={"PYTHONPATH": str(REPO)})
    assert launcher.stdout is not None
    grandchild = int(launcher.stdout.readline())
    stop_group("launcher", launcher, outer_s)
    return grandchild


def test_a_launcher_given_longer_than_its_own_stop_leaves_nothing_behind(
        tmp_path: Path) -> None:
    grandchild = stop_launcher(INNER_S + 3, tmp_path)
    assert not alive(grandchild)


def test_a_launcher_killed_before_its_own_stop_ends_leaves_its_child_running(
        tmp_path: Path) -> None:
    """Why `aios up` waits LAUNCHER_STOP_TIMEOUT_S: shorter, and this is what happens."""
    grandchild = stop_launcher(0.3, tmp_path)
    try:
        assert alive(grandchild)
    finally:
        subprocess.run(["kill", "-9", str(grandchild)], check=False)
        time.sleep(0.1)


def test_aios_up_waits_past_its_childrens_own_stop() -> None:
    assert LAUNCHER_STOP_TIMEOUT_S > STOP_TIMEOUT_S
