"""How well the sidecar's drift monitor (`sidecar.drift`, through `sidecar.parity.Parity`)
tells real drift from noise, on synthetic claims drawn like the training book.

Each scenario runs ``--seeds`` times (seeded, reproducible): a stationary stream of
20,000 rows, or 1,000 training-like rows (the window fills) and then 6,000 shifted ones.
The rows go through `Parity.observe` in requests of 25 rows, with the scores the served
model version gives them (its TorchScript module from model_repo, as Triton runs it).
Reported per scenario: the share of runs flagged within 2,000 and 5,000 rows of the
shift, the median delay, and how often the first input flag named the shifted feature
alone (flags on the output, which follows its inputs, do not count against that); for
the stationary stream, the share of 20,000-row runs and of evaluations with any flag.

``--calibrate`` runs the stationary stream only, with no alarm possible, and prints the
CUSUM level that a stated share of runs never reached: the settings' ``cusum_h`` is read
off it (loadtests/README.md, "Drift").

    python -m loadtests.drift_bench [--seeds 200] [--only NAME ...] [--json] [--calibrate]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from aios.config import ParitySettings
from aios.profile import FEATURES
from aios_cli.claims import synthesize_claims
from sidecar.parity import Parity, VersionProfile, load_profiles

REPO = Path(__file__).resolve().parent.parent / "model_repo"
MODEL = "claims_risk"
WARMUP = 1_000
SHIFTED = 6_000
STATIONARY = 20_000
REQUEST_ROWS = 25
NAMES = [f.name for f in FEATURES]
OUTPUT = "risk_score"
OUTPUT_FLAGS = {OUTPUT, "decision_rate"}

Shift = Callable[[NDArray[np.float64], np.random.Generator, NDArray[np.float64]],
                 NDArray[np.float64]]


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str  # the feature that should be flagged ("joint", or the output)
    shift: Shift | None = None  # inputs after WARMUP -> shifted inputs
    output: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None  # scores
    swap: bool = False  # scored by the other version's model


def _col(name: str) -> int:
    return NAMES.index(name)


# Each feature's grid: what a shifted value is rounded back to (the book's own rounding).
GRID = {"policy_tenure_months": 1.0, "days_to_report": 1.0, "claimant_age": 1.0,
        "vehicle_age_years": 0.1}


ColumnChange = Callable[[NDArray[np.float64], np.random.Generator, float], NDArray[np.float64]]


def on_column(name: str, change: ColumnChange) -> Shift:
    """A shift of one column: ``change(values, rng, training std)``."""
    def shift(x: NDArray[np.float64], rng: np.random.Generator,
              std: NDArray[np.float64]) -> NDArray[np.float64]:
        j = _col(name)
        y = x.copy()
        y[:, j] = change(x[:, j], rng, float(std[j]))
        return y
    return shift


def mean_shift(name: str, sigmas: float) -> Shift:
    def change(col: NDArray[np.float64], rng: np.random.Generator,
               sd: float) -> NDArray[np.float64]:
        if name == "prior_claims":  # a count: a higher Poisson rate, by sigmas * std
            return np.clip(rng.poisson(0.5 + sigmas * sd, len(col)), 0, 12).astype(np.float64)
        moved = col + sigmas * sd
        return np.round(moved / GRID[name]) * GRID[name] if name in GRID else moved
    return on_column(name, change)


def scale(name: str, factor: float) -> Shift:
    return on_column(name, lambda col, rng, sd: col * factor)


def spread(name: str, factor: float) -> Shift:
    def change(col: NDArray[np.float64], rng: np.random.Generator,
               sd: float) -> NDArray[np.float64]:
        centre = float(np.median(col))
        return np.round(centre + (col - centre) * factor)
    return on_column(name, change)


def rate(name: str, points: float) -> Shift:
    return on_column(name, lambda col, rng, sd: (
        rng.random(len(col)) < float(col.mean()) + points / 100).astype(np.float64))


def correlated(a: str, b: str, rho: float) -> Shift:
    """Make ``a`` and ``b`` correlated (a Gaussian copula on their ranks) and leave each
    one's own distribution exactly as it was: the rows' values are only re-paired."""
    def shift(x: NDArray[np.float64], rng: np.random.Generator,
              std: NDArray[np.float64]) -> NDArray[np.float64]:
        i, j = _col(a), _col(b)
        n = len(x)
        z = rng.standard_normal((n, 2))
        z[:, 1] = rho * z[:, 0] + np.sqrt(1 - rho * rho) * z[:, 1]
        y = x.copy()
        y[np.argsort(z[:, 0]), i] = np.sort(x[:, i])
        y[np.argsort(z[:, 1]), j] = np.sort(x[:, j])
        return y
    return shift


def ramp(name: str, sigmas: float, over: int) -> Shift:
    def change(col: NDArray[np.float64], rng: np.random.Generator,
               sd: float) -> NDArray[np.float64]:
        steps = np.minimum(np.arange(len(col), dtype=np.float64) / over, 1.0)
        out: NDArray[np.float64] = np.asarray(np.round(col + sigmas * sd * steps), np.float64)
        return out
    return on_column(name, change)


def logit_bias(bias: float) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    def output(scores: NDArray[np.float64]) -> NDArray[np.float64]:
        p = np.clip(scores, 1e-7, 1 - 1e-7)
        out: NDArray[np.float64] = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + bias)))
        return out
    return output


SCENARIOS = [
    Scenario("stationary", ""),
    *(Scenario(f"mean +0.25 sd {n}", n, mean_shift(n, 0.25)) for n in NAMES[:6]),
    *(Scenario(f"mean -0.25 sd {n}", n, mean_shift(n, -0.25)) for n in ("claim_amount",
                                                                         "claimant_age")),
    Scenario("mean +0.5 sd claimant_age", "claimant_age", mean_shift("claimant_age", 0.5)),
    Scenario("mean +1 sd claimant_age", "claimant_age", mean_shift("claimant_age", 1.0)),
    Scenario("scale x1.5 claimant_age", "claimant_age", spread("claimant_age", 1.5)),
    *(Scenario(f"rate {sign}{pts} pts {n}", n, rate(n, float(f"{sign}{pts}")))
      for n in ("police_report", "witness_present") for pts in (5, 10) for sign in "+-"),
    Scenario("correlation only amount~tenure", "joint",
             correlated("claim_amount", "policy_tenure_months", -0.2)),
    Scenario("inflation x1.10 claim_amount", "claim_amount", scale("claim_amount", 1.10)),
    Scenario("inflation x1.25 claim_amount", "claim_amount", scale("claim_amount", 1.25)),
    Scenario("ramp 0->1 sd over 10k claimant_age", "claimant_age",
             ramp("claimant_age", 1.0, 10_000)),
    Scenario("output logit bias +0.25", OUTPUT, output=logit_bias(0.25)),
    Scenario("swapped weights (v1 serving as v2)", OUTPUT, swap=True),
]


def _models() -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    return {v: torch.jit.load(str(REPO / MODEL / v / "model.pt"))  # type: ignore[no-untyped-call]
            for v in ("1", "2")}


def _score(model: Any, x: NDArray[np.float64]) -> NDArray[np.float64]:
    import torch

    with torch.no_grad():
        out: NDArray[np.float64] = model(torch.from_numpy(x.astype(np.float32))).numpy()[
            :, 0].astype(np.float64)
    return out


_STATE: dict[str, Any] = {}


def _setup() -> None:
    logging.getLogger("sidecar.parity").setLevel(logging.ERROR)  # a flag per run is the point
    _STATE["models"] = _models()
    _STATE["profiles"] = load_profiles(REPO)
    train, _ = synthesize_claims(16_000)
    _STATE["std"] = train.astype(np.float64).std(axis=0)


def one_run(scenario: Scenario, seed: int, settings: ParitySettings) -> dict[str, Any]:
    """One seeded run: when (in rows after the shift) flags came, which, and the extremes
    the stationary calibration reads."""
    profile: VersionProfile = _STATE["profiles"][(MODEL, "2")]
    rng = np.random.default_rng(seed + 1_000_003 * SCENARIOS.index(scenario))
    n = STATIONARY if scenario.shift is None and scenario.output is None and \
        not scenario.swap else WARMUP + SHIFTED
    x, _ = synthesize_claims(n, seed=int(rng.integers(1 << 31)) + 20_000)
    x = x.astype(np.float64)
    start = 0 if n == STATIONARY else WARMUP
    if scenario.shift is not None:
        x[start:] = scenario.shift(x[start:], rng, _STATE["std"])
    scores = _score(_STATE["models"]["2"], x)
    if scenario.swap:
        scores[start:] = _score(_STATE["models"]["1"], x[start:])
    if scenario.output is not None:
        scores[start:] = scenario.output(scores[start:])
    parity = Parity(settings, _STATE["profiles"], CollectorRegistry())
    monitor = parity.monitor(profile)
    first: int | None = None
    first_flags: list[str] = []
    windows = flagged_windows = 0
    for lo in range(0, n, REQUEST_ROWS):
        hi = min(n, lo + REQUEST_ROWS)
        before = monitor.since_eval
        parity.observe(profile, x[lo:hi].astype(np.float32), scores[lo:hi, None])
        evaluated = monitor.since_eval < before + (hi - lo)
        if evaluated:
            windows += 1
            flagged_windows += bool(monitor.flags)
        if monitor.flags and first is None and hi > start:
            first = hi - start
            first_flags = sorted(monitor.flags)
    return {"first": first, "flags": first_flags, "windows": windows,
            "flagged_windows": flagged_windows, "max_cusum": monitor.highest_cusum}


def _attributed(scenario: Scenario, flags: list[str]) -> bool:
    inputs = [f for f in flags if f not in OUTPUT_FLAGS]
    if scenario.target == OUTPUT:
        return not inputs and bool(set(flags) & OUTPUT_FLAGS)
    return inputs == [scenario.target]


def _job(args: tuple[int, int, ParitySettings]) -> dict[str, Any]:
    """One run in a worker process (a scenario by its index: its functions do not pickle)."""
    if not _STATE:
        _setup()
    index, seed, settings = args
    return one_run(SCENARIOS[index], seed, settings)


def run(scenarios: list[Scenario], seeds: int, settings: ParitySettings,
        workers: int = 2) -> list[dict[str, Any]]:
    """Every scenario's summary (see the module docstring)."""
    jobs = [(SCENARIOS.index(s), seed, settings) for s in scenarios for seed in range(seeds)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_job, jobs, chunksize=4))
    else:
        results = [_job(j) for j in jobs]
    out = []
    for i, scenario in enumerate(scenarios):
        runs = results[i * seeds:(i + 1) * seeds]
        delays = [r["first"] for r in runs if r["first"] is not None]
        summary: dict[str, Any] = {"scenario": scenario.name, "runs": seeds}
        if scenario.target == "":
            windows = sum(r["windows"] for r in runs)
            summary.update(
                runs_flagged=sum(r["first"] is not None for r in runs) / seeds,
                windows_flagged=sum(r["flagged_windows"] for r in runs) / max(windows, 1),
                flags=sorted({f for r in runs for f in r["flags"]}))
        else:
            summary.update(
                within_2000=sum(d <= 2000 for d in delays) / seeds,
                within_5000=sum(d <= 5000 for d in delays) / seeds,
                median_delay=statistics.median(delays) if delays else None,
                attributed=sum(_attributed(scenario, r["flags"]) for r in runs
                               if r["first"] is not None) / seeds)
        out.append(summary)
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | runs | flagged within 2,000 / 5,000 rows | median delay (rows) | "
             "first flag on that feature alone |", "|---|---|---|---|---|"]
    for r in results:
        if "runs_flagged" in r:
            lines.append(f"| {r['scenario']} | {r['runs']} | any flag in "
                         f"{r['runs_flagged']:.1%} of 20,000-row runs, "
                         f"{r['windows_flagged']:.2%} of evaluations | - | - |")
        else:
            delay = "-" if r["median_delay"] is None else f"{r['median_delay']:,.0f}"
            lines.append(f"| {r['scenario']} | {r['runs']} | {r['within_2000']:.1%} / "
                         f"{r['within_5000']:.1%} | {delay} | {r['attributed']:.1%} |")
    return "\n".join(lines)


def calibrate(seeds: int, settings: ParitySettings) -> str:
    """The stationary runs' highest CUSUM levels: the level a share of runs stays under."""
    huge = settings.model_copy(update={"cusum_h": 1e9, "drift_alpha": 1e-300})
    jobs = [(0, seed, huge) for seed in range(seeds)]
    with ProcessPoolExecutor(2) as pool:
        runs = list(pool.map(_job, jobs, chunksize=4))
    levels = np.asarray([r["max_cusum"] for r in runs])
    return "\n".join(f"cusum_h for {share:.0%} of 20,000-row runs without a CUSUM alarm: "
                     f"{float(np.quantile(levels, share)):.1f}" for share in (0.95, 0.975, 0.99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--only", nargs="*", help="scenarios whose name contains any of these")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args(argv)
    settings = ParitySettings()
    if args.calibrate:
        print(calibrate(args.seeds, settings))
        return 0
    chosen = [s for s in SCENARIOS if not args.only or any(o in s.name for o in args.only)]
    results = run(chosen, args.seeds, settings)
    print(json.dumps(results, indent=2) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
