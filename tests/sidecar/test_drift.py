"""The drift statistics against known values and their definitions, and the monitor's
flags: raised with evidence, held, cleared after clean evaluations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aios.profile import build_sketch
from sidecar.drift import (
    Cusum,
    Monitor,
    MonitorSettings,
    chi2_sf,
    chi2_test,
    correlation_test,
    kolmogorov_sf,
    ks_test,
    rate_test,
)

SETTINGS = MonitorSettings(window=500, every=100, alpha=1e-3, cusum_k=0.125, cusum_h=52.0,
                           clear_after=3)


@pytest.mark.parametrize(("lam", "p"), [(1.3581, 0.05), (1.6276, 0.01), (0.8276, 0.5),
                                        (0.1, 1.0)])
def test_kolmogorov_tail(lam: float, p: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(p, abs=2e-4)


@pytest.mark.parametrize(("x", "dof", "p"), [(3.841459, 1, 0.05), (6.634897, 1, 0.01),
                                             (18.307038, 10, 0.05), (124.342113, 100, 0.05),
                                             (0.0, 3, 1.0), (2.0, 2, math.exp(-1.0))])
def test_chi2_tail(x: float, dof: int, p: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(p, rel=1e-5)


def test_a_sample_of_the_same_distribution_passes_and_a_shifted_one_fails() -> None:
    rng = np.random.default_rng(1)
    continuous = build_sketch(rng.lognormal(8, 1, 20_000))
    same = rng.lognormal(8, 1, 1000)
    assert ks_test(continuous, same)[1] > 0.01
    assert ks_test(continuous, same * 1.5)[1] < 1e-6
    discrete = build_sketch(rng.poisson(2.0, 20_000).astype(float))
    assert chi2_test(discrete, rng.poisson(2.0, 1000).astype(float))[1] > 0.01
    assert chi2_test(discrete, rng.poisson(2.6, 1000).astype(float))[1] < 1e-6


def test_the_null_p_values_are_uniform_enough() -> None:
    """Under no drift, p < 0.05 in about 5% of windows: the tests have their stated size."""
    rng = np.random.default_rng(2)
    sketch = build_sketch(rng.normal(0, 1, 50_000))
    ps = [ks_test(sketch, rng.normal(0, 1, 500))[1] for _ in range(400)]
    assert 0.02 < np.mean(np.asarray(ps) < 0.05) < 0.09


def test_the_cusum_is_the_recursion_it_stands_for() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0.1, 1, (300, 2))
    cusum = Cusum(2, 0.125, 1e9)
    peaks = np.maximum(cusum.update(z[:120]), cusum.update(z[120:]))
    up = down = np.zeros(2)
    top = np.zeros(2)
    for row in z:
        up = np.maximum(0, up + row - 0.125)
        down = np.maximum(0, down - row - 0.125)
        top = np.maximum(top, np.maximum(up, down))
    np.testing.assert_allclose(cusum.up, up)
    np.testing.assert_allclose(cusum.down, down)
    np.testing.assert_allclose(peaks, top)


def test_correlation_and_rate_tests() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(1000, 3))
    assert correlation_test(a, np.eye(3))[2] > 0.01
    a[:, 2] = 0.4 * a[:, 0] + math.sqrt(1 - 0.16) * a[:, 2]
    pair, z, p = correlation_test(a, np.eye(3))
    assert pair == (0, 2) and z > 5 and p < 1e-6
    assert rate_test(50, 1000, 0.05) == pytest.approx(1.0)
    assert rate_test(90, 1000, 0.05) < 1e-6


def monitor() -> Monitor:
    rng = np.random.default_rng(5)
    return Monitor(("x", "score"), (build_sketch(rng.normal(0, 1, 20_000)),
                                    build_sketch(rng.uniform(0, 1, 20_000))),
                   None, 0.9, SETTINGS)


def feed(m: Monitor, rows: np.ndarray) -> list[list[str]]:
    """Rows in requests of 20; the flags after each evaluation."""
    seen = []
    for i in range(0, len(rows), 20):
        m.add(rows[i:i + 20])
        if m.since_eval >= SETTINGS.every and m.full:
            m.evaluate()
            seen.append(sorted(m.flags))
    return seen


def test_a_flag_carries_its_evidence_holds_and_clears_after_clean_windows() -> None:
    rng = np.random.default_rng(6)
    m = monitor()
    assert all(f == [] for f in feed(m, np.column_stack([rng.normal(0, 1, 1000),
                                                         rng.uniform(0, 1, 1000)])))
    shifted = np.column_stack([rng.normal(0.6, 1, 600), rng.uniform(0, 1, 600)])
    assert feed(m, shifted)[-1] == ["x"]
    evidence = m.flags["x"].finding.evidence
    assert evidence.startswith(("cusum ", "ks ")), evidence
    rates = np.column_stack([rng.normal(0, 1, 2000), rng.uniform(0, 1, 2000)])
    after = feed(m, rates)
    cleared = after.index([])
    assert cleared >= SETTINGS.clear_after - 1, "not at the first clean window"
    assert all(f == [] for f in after[cleared:])


def test_the_decision_rate_is_watched_at_the_threshold() -> None:
    rng = np.random.default_rng(7)
    m = monitor()
    feed(m, np.column_stack([rng.normal(0, 1, 500), rng.uniform(0, 1, 500)]))
    # Scores above 0.9 three times as often, the rest of the distribution alike.
    scores = np.where(rng.random(600) < 0.3, rng.uniform(0.9, 1, 600), rng.uniform(0, 0.9, 600))
    flags = feed(m, np.column_stack([rng.normal(0, 1, 600), scores]))
    assert "decision_rate" in flags[-1]
