"""The benchmark's report logic (the measuring itself is `make bench`, not a test)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

from loadtests.bench import (
    DIRECT,
    FULL,
    NOT_MEASURABLE,
    REPO,
    Paired,
    Run,
    Stack,
    Swap,
    _merged,
    _tree_label,
    markdown,
    median_and_range,
    source_tree,
    swaps_markdown,
    targets,
    verdict,
)


@pytest.mark.parametrize(("extra", "expected"), [
    (None, {"log": {"mode": "async", "dir": "d"}, "port": 1}),
    ({"log": {"mode": "sync"}}, {"log": {"mode": "sync", "dir": "d"}, "port": 1}),
    ({"port": 2, "batching": {"max_in_flight": 4}},
     {"log": {"mode": "async", "dir": "d"}, "port": 2, "batching": {"max_in_flight": 4}}),
    ({"log": "off"}, {"log": "off", "port": 1}),  # a section replaced by a value
])
def test_a_variants_settings_merge_section_by_section(extra: dict[str, object] | None,
                                                       expected: dict[str, object]) -> None:
    base = {"log": {"mode": "async", "dir": "d"}, "port": 1}
    assert _merged(base, extra) == expected
    assert base == {"log": {"mode": "async", "dir": "d"}, "port": 1}


@pytest.mark.parametrize(("values", "expected"), [
    ([0.19, 0.25, 0.15], (0.19, 0.15, 0.25)),
    ([3.0], (3.0, 3.0, 3.0)),
    ([4.0, 1.0, 2.0, 3.0], (2.0, 1.0, 4.0)),  # an even count takes the lower middle
])
def test_median_and_range(values: list[float], expected: tuple[float, float, float]) -> None:
    assert median_and_range(values) == expected


def _run(path: str, mode: str, rps: float = 0.0, p50: float = 0.0, p99: float = 0.0) -> Run:
    return Run(path, "rest", 1, mode, rps=rps, p50_ms=p50, p99_ms=p99)


def test_headline_targets_come_from_the_median_of_the_pairs() -> None:
    pairs = Paired()
    for direct_rps, full_rps, p50s, p99s in [(10000, 1900, (1.5, 2.8), (2.6, 5.0)),
                                             (8000, 2000, (1.6, 3.0), (2.5, 6.0)),
                                             (12000, 1800, (1.4, 2.6), (2.7, 4.0))]:
        pairs.add((_run(DIRECT, "throughput", direct_rps),
                   _run(DIRECT, "rate", p50=p50s[0], p99=p99s[0])),
                  (_run(FULL, "throughput", full_rps),
                   _run(FULL, "rate", p50=p50s[1], p99=p99s[1])),
                  [p50s[0]] * 98 + [p99s[0]] * 2, [p50s[1]] * 98 + [p99s[1]] * 2)
    goals = {g["target"]: g for g in targets(
        [], {"gateway_full_async": 100.0, "sidecar_async": 100.0}, pairs)}
    ratio = goals["full path throughput vs direct (REST, batch 1, 16 conns)"]
    assert (ratio["value"], ratio["met"]) == ("19% (median of 3 alternations: 15%-25%)", False)
    p50 = goals["added p50 at fixed rate (gateway + sidecar)"]
    assert (p50["value"], p50["met"]) == (
        "1.30 ms (median of 3 alternations: 1.20-1.40; pooled 300 / 300 samples: 1.30)", False)
    p99 = goals["added p99 at fixed rate (gateway + sidecar)"]
    assert p99["value"].startswith("2.40 ms (median of 3 alternations: 1.30-3.50; pooled ")
    assert p99["met"] is True


@pytest.mark.parametrize(("mid", "low", "high", "met"), [
    (0.8, 0.5, 1.2, True),
    (1.3, 1.1, 1.5, False),
    (-6.76, -119.0, 15.0, NOT_MEASURABLE),  # a round of the issue: its sign is noise
    (0.2, -0.1, 0.6, NOT_MEASURABLE),
    (0.0, 0.0, 0.4, True),
])
def test_an_added_latency_whose_rounds_disagree_on_its_sign_is_not_measurable(
        mid: float, low: float, high: float, met: bool | str) -> None:
    assert verdict(mid, low, high, 1.0) == met


def test_the_report_says_not_measurable() -> None:
    text = markdown([], [{"target": "added p99", "goal": "<= 3 ms", "value": "x",
                          "met": NOT_MEASURABLE}], "m")
    assert "| added p99 | <= 3 ms | x | not measurable here |" in text


@pytest.mark.parametrize(("ours", "theirs", "verdict"), [
    ([100, 110, 90], [80, 85, 70], "ours: faster in every round"),
    ([100, 110, 90], [120, 130, 100], "the library: faster in every round"),
    ([100, 110, 90], [95, 115, 92], "within the run-to-run range"),
])
def test_a_transport_wins_only_when_every_round_says_so(ours: list[float],
                                                        theirs: list[float],
                                                        verdict: str) -> None:
    swap = Swap("x", ours, theirs, [100.0] * 3, [120.0] * 3)
    assert swap.verdict() == verdict
    row = swaps_markdown([swap]).splitlines()[-1]
    assert row.startswith("| x | 100 | ") and row.endswith(f"| 100 / 120 | {verdict} |")


SYNC = "full: gateway -> sidecar (sync log)"


@pytest.mark.parametrize(("sync_rps", "grpc_rps", "ours", "triton", "expected"), [
    (4300, 2000, (150.0, 140.0), 300.0,
     {"full path, sync log, vs direct (REST, batch 1, 16 conns)": ("43% (one run)", True),
      "full path vs direct, gRPC (batch 1, 16 calls)": ("40% (one run)", True),
      "our CPU per request vs Triton's own (full path, REST batch 1)":
          ("0.97x (290 / 300 us)", True)}),
    (2000, 1500, (150.0, 140.0), 100.0,
     {"full path, sync log, vs direct (REST, batch 1, 16 conns)": ("20% (one run)", False),
      "full path vs direct, gRPC (batch 1, 16 calls)": ("30% (one run)", False),
      "our CPU per request vs Triton's own (full path, REST batch 1)":
          ("2.90x (290 / 100 us)", False)}),
])
def test_the_sync_grpc_and_cpu_targets_are_measured_against_direct_triton(
        sync_rps: float, grpc_rps: float, ours: tuple[float, float], triton: float,
        expected: dict[str, tuple[str, bool]]) -> None:
    full = _run(FULL, "throughput", 3000)
    full.cpu_us_per_request = {"gateway_full_async": ours[0], "sidecar_async": ours[1]}
    full.triton_cpu_us = triton
    runs = [_run(DIRECT, "throughput", 10000), full, _run(SYNC, "throughput", sync_rps),
            Run(DIRECT, "grpc", 1, "throughput", rps=5000),
            Run(FULL, "grpc", 1, "throughput", rps=grpc_rps)]
    goals = {g["target"]: (g["value"], g["met"]) for g in targets(
        runs, {"gateway_full_async": 100.0, "sidecar_async": 100.0}, None)}
    assert {k: goals[k] for k in expected} == expected


def test_a_service_tree_counts_the_cpu_of_its_children(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    # A parent that waits while its child burns CPU: the launcher and Triton's server.
    child = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n" \
            "time.sleep(30)"
    stack.start("parent", [sys.executable, "-c",
                           f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                           f"{child!r}])"], False, None)
    try:
        deadline = time.monotonic() + 20
        while stack.tree_cpu_seconds("parent") < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stack.tree_cpu_seconds("parent") >= 0.3
        assert stack.cpu_seconds("parent") < 0.3
    finally:
        stack.stop()


def test_the_report_names_the_build_the_services_ran(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError,
                       match=f"{tmp_path} holds no aios_cli .for the compiled build, run "
                             "`make compiled` first"):
        source_tree(str(tmp_path))
    (tmp_path / "aios_cli").mkdir()
    (tmp_path / "sidecar").mkdir()
    assert source_tree(str(tmp_path)) == tmp_path.resolve()
    assert _tree_label(REPO) == "this tree (pure Python)"
    assert _tree_label(tmp_path) == f"{tmp_path} (pure Python)"
    (tmp_path / "sidecar" / "plane.cpython-311-x86_64-linux-gnu.so").touch()
    assert _tree_label(tmp_path) == f"{tmp_path} (mypyc-compiled)"
