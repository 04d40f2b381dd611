"""`aios up` as `make run` uses it: the printed curl scores a claim; Ctrl-C stops it all."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from tests.helpers import (
    STARTUP_TIMEOUT_S,
    StackPorts,
    aios,
    alive,
    descendants,
    interrupt_and_wait,
    stack_config,
    wait_until,
    write_config,
)


def test_printed_curl_scores_a_claim_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    ports = StackPorts.allocate()
    config = write_config(tmp_path / "stack.yaml", stack_config(ports, tmp_path))
    log = tmp_path / "up.log"
    process = aios("up", "--config", str(config), "--log-dir", str(tmp_path / "logs"), log=log)
    try:
        wait_until(lambda: "Ctrl-C stops everything." in log.read_text(), STARTUP_TIMEOUT_S,
                   "banner", process, log)
        text = log.read_text()
        # The first minute: a line per service, each service's own output in its log.
        for name in ("triton", "sidecar", "gateway"):
            assert re.search(rf"^starting {name} +\(log: {tmp_path}/logs/{name}\.log\) \.\.\. "
                             r"ready in [0-9.]+ s$", text, re.M), text[-3000:]
        assert "NVML" not in text and "CudaDriverHelper" not in text
        assert "Started HTTPService" in (tmp_path / "logs" / "triton.log").read_text()
        match = re.search(r"^  (curl .*?)\n\n", text, re.S | re.M)
        assert match, text[-3000:]
        command = match.group(1).replace("\\\n", " ")
        out = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True)
        reply = json.loads(out.stdout)
        assert reply["model_name"] == "claims_risk"
        score = reply["outputs"][0]["data"][0]
        assert 0.0 < score < 1.0
        tree = descendants(process.pid)
        assert len(tree) >= 4, "aios up runs triton, its stubs, a sidecar and a gateway"
    finally:
        code = interrupt_and_wait(process)
    assert code == 0
    assert not [pid for pid in tree if alive(pid)]
    assert "triton stopped (exit code 0)" in log.read_text()
