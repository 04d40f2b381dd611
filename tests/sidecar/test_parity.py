"""Schema checks, PSI/KS, drift windows and golden-set judgement against the real profiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aios.config import ParitySettings
from aios.errors import Unprocessable
from aios.profile import FEATURES, bin_index
from aios_cli.claims import synthesize_claims
from sidecar.parity import Parity, Window, ks, load_profiles, psi, schema_violations
from tests.helpers import MODEL_REPO

PROFILES = load_profiles(MODEL_REPO)
V2 = PROFILES[("claims_risk", "2")]
# Documented: drift is evaluated every `drift_every` (250) rows over the last
# `drift_window` (1000) rows, so a shift is flagged within 1,000 served rows.
WINDOW, EVERY = 1000, 250


def test_profiles_of_both_versions_load() -> None:
    assert set(PROFILES) == {("claims_risk", "1"), ("claims_risk", "2")}
    assert [f.name for f in V2.features] == [f.name for f in FEATURES]


def test_psi_and_ks() -> None:
    expected = np.full(10, 0.1)
    assert psi(expected, np.full(10, 100)) == pytest.approx(0.0)
    assert ks(expected, np.full(10, 100)) == pytest.approx(0.0)
    skewed = np.array([300, 300, 100, 100, 50, 50, 50, 25, 15, 10])
    assert psi(expected, skewed) > 0.3
    assert ks(expected, skewed) == pytest.approx(0.6 - 0.2)


def claims(n: int, seed: int) -> np.ndarray:
    x, _ = synthesize_claims(n, seed=seed)
    return x


def row(**changes: float) -> np.ndarray:
    x = claims(1, 1).copy()
    for name, value in changes.items():
        x[0, [f.name for f in FEATURES].index(name)] = value
    return x


@pytest.mark.parametrize(("tensors", "flags", "message"), [
    ({"features": row()}, [], ""),
    ({}, ["missing_input:features"], "input 'features' is missing"),
    ({"features": row().astype(np.float64)}, ["dtype:features"], "must be FP32"),
    ({"features": row()[:, :7]}, ["shape:features"], "must have shape [-1, 8], got [1, 7]"),
    ({"features": row(claimant_age=np.nan)}, ["nonfinite:claimant_age"], "NaN or infinite"),
    ({"features": row(claimant_age=140)}, ["out_of_range:claimant_age"],
     "feature 'claimant_age' = 140 is above the training maximum 90"),
    ({"features": row(claim_amount=-5, prior_claims=99)},
     ["out_of_range:claim_amount", "out_of_range:prior_claims"],
     "feature 'claim_amount' = -5 is below the training minimum"),
])
def test_schema(tensors: dict[str, Any], flags: list[str], message: str) -> None:
    found = schema_violations(V2, tensors)
    assert [v.flag for v in found] == flags
    if message:
        assert message in found[0].message


def test_enforce_mode_refuses_with_422_and_observe_only_flags() -> None:
    bad = {"features": row(claimant_age=140)}
    observe = Parity(ParitySettings(), PROFILES, CollectorRegistry())
    assert observe.check(V2, bad) == ["out_of_range:claimant_age"]
    registry = CollectorRegistry()
    enforce = Parity(ParitySettings(mode={"claims_risk": "enforce"}), PROFILES, registry)
    with pytest.raises(Unprocessable, match="claimant_age' = 140 is above") as info:
        enforce.check(V2, bad)
    assert info.value.http_status == 422
    assert registry.get_sample_value("aios_sidecar_schema_violations_total", {
        "model": "claims_risk", "version": "2", "feature": "claimant_age",
        "check": "out_of_range"}) == 1


def test_window_slides() -> None:
    w = Window(V2.features[:1], size=4)
    w.add(np.array([[100.0], [100.0], [1e6], [1e6], [1e6]]))
    assert w.full
    assert int(w.counts(0).sum()) == 4
    assert int(w.counts(0)[-1]) == 3


def serve(parity: Parity, x: np.ndarray, batch: int = 16) -> None:
    for i in range(0, len(x), batch):
        parity.observe(V2, x[i:i + batch], None)


@pytest.mark.parametrize("batches", [[1] * 30, [7, 1, 12, 3, 25], [40], [3, 50, 2]])
def test_window_counts_equal_a_recount_of_its_last_rows(batches: list[int]) -> None:
    """The ring's running counts (batched adds, eviction) match counting from scratch."""
    profile = load_profiles(MODEL_REPO)[("claims_risk", "2")]
    window = Window(profile.features, 20)
    rows, _ = synthesize_claims(sum(batches), seed=3)
    start = 0
    for n in batches:
        window.add(rows[start:start + n])
        start += n
        last = rows[max(0, start - 20):start]
        for j, column in enumerate(profile.features):
            expected = np.bincount(bin_index(column.edges, last[:, j]),
                                   minlength=len(column.edges) + 1)
            np.testing.assert_array_equal(window.counts(j), expected)
    assert window.full == (start >= 20)


def test_training_like_traffic_raises_no_drift() -> None:
    parity = Parity(ParitySettings(drift_window=WINDOW, drift_every=EVERY), PROFILES,
                    CollectorRegistry())
    serve(parity, claims(4000, seed=99))
    assert parity.drifted("claims_risk", "2") == []


CONTINUOUS = ["claim_amount", "policy_tenure_months", "days_to_report", "claimant_age",
              "vehicle_age_years"]


@pytest.mark.parametrize("feature", CONTINUOUS)
def test_a_half_std_shift_is_flagged_on_that_feature_only(feature: str) -> None:
    registry = CollectorRegistry()
    parity = Parity(ParitySettings(drift_window=WINDOW, drift_every=EVERY), PROFILES, registry)
    x = claims(WINDOW, seed=7)
    column = [f.name for f in V2.features].index(feature)
    x[:, column] += 0.5 * float(x[:, column].std())
    serve(parity, x)
    assert parity.drifted("claims_risk", "2") == [feature]
    labels = {"model": "claims_risk", "version": "2", "feature": feature}
    assert registry.get_sample_value("aios_sidecar_drift_flag", labels) == 1
    psi_value = registry.get_sample_value("aios_sidecar_drift_psi", labels)
    ks_value = registry.get_sample_value("aios_sidecar_drift_ks", labels)
    assert psi_value is not None and ks_value is not None
    assert psi_value > 0.2 or ks_value > 0.12


def test_golden_judgement() -> None:
    parity = Parity(ParitySettings(), PROFILES, CollectorRegistry())
    assert parity.record_golden(V2, V2.golden_outputs.copy())
    off = V2.golden_outputs.copy()
    off[17, 0] += 1e-3
    assert not parity.record_golden(V2, off)
    assert parity.golden_ok[("claims_risk", "2")] is False
    assert not parity.record_golden(V2, None, "Triton answered 500")
