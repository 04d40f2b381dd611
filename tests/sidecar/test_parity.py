"""Schema checks, drift flags and golden-set judgement against the real profiles, with
traffic drawn like the training book and scored by the real model."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aios.config import ParitySettings
from aios.errors import Unprocessable
from aios.profile import FEATURES
from aios_cli.claims import synthesize_claims
from sidecar.parity import Parity, load_profiles, psi, schema_violations
from tests.helpers import MODEL_REPO

PROFILES = load_profiles(MODEL_REPO)
V2 = PROFILES[("claims_risk", "2")]


def test_profiles_of_both_versions_load() -> None:
    assert set(PROFILES) == {("claims_risk", "1"), ("claims_risk", "2")}
    assert [f.name for f in V2.features] == [f.name for f in FEATURES]


def test_psi() -> None:
    expected = np.full(10, 0.1)
    assert psi(expected, np.full(10, 100)) == pytest.approx(0.0)
    skewed = np.array([300, 300, 100, 100, 50, 50, 50, 25, 15, 10])
    assert psi(expected, skewed) > 0.3


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


@functools.cache
def module(version: str) -> Any:
    import torch

    return torch.jit.load(str(MODEL_REPO / "claims_risk" / version / "model.pt"))


def scored(x: np.ndarray, version: str = "2") -> np.ndarray:
    """The served version's scores of ``x`` (its TorchScript module, as Triton runs it)."""
    import torch

    model = module(version)
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def serve(parity: Parity, x: np.ndarray, batch: int = 16) -> None:
    y = scored(x)
    for i in range(0, len(x), batch):
        parity.observe(V2, x[i:i + batch], y[i:i + batch])


def test_training_like_traffic_raises_no_drift() -> None:
    registry = CollectorRegistry()
    parity = Parity(ParitySettings(), PROFILES, registry)
    serve(parity, claims(4000, seed=99))
    assert parity.drifted("claims_risk", "2") == []
    assert parity.check(V2, {"features": row()}) == []
    labels = {"model": "claims_risk", "version": "2", "feature": "claim_amount"}
    assert 0 < registry.get_sample_value("aios_sidecar_drift_p_value", labels) <= 1
    assert registry.get_sample_value("aios_sidecar_drift_flag", labels) == 0


FEATURE_NAMES = [f.name for f in FEATURES]
OUTPUTS = {"risk_score", "decision_rate"}


@pytest.mark.parametrize("feature", FEATURE_NAMES[:6])
def test_a_quarter_std_shift_is_flagged_on_that_feature_only(feature: str) -> None:
    registry = CollectorRegistry()
    parity = Parity(ParitySettings(), PROFILES, registry)
    x = claims(3000, seed=7)
    column = FEATURE_NAMES.index(feature)
    serve(parity, x[:1000])
    shifted = x[1000:].copy()
    std = float(x[:, column].std())
    if feature == "prior_claims":  # a count: a higher rate, not fractional claims
        rng = np.random.default_rng(7)
        shifted[:, column] = rng.poisson(0.5 + 0.25 * std, len(shifted))
    else:
        shifted[:, column] += 0.25 * std
        if feature != "claim_amount":  # whole units and tenths stay so
            shifted[:, column] = np.round(shifted[:, column] * 10) / 10
    serve(parity, shifted)
    flagged = parity.drifted("claims_risk", "2")
    assert [f for f in flagged if f not in OUTPUTS] == [feature], flagged
    labels = {"model": "claims_risk", "version": "2", "feature": feature}
    assert registry.get_sample_value("aios_sidecar_drift_flag", labels) == 1
    [flag] = [f for f in parity.check(V2, {"features": row()}) if feature in f]
    assert flag.startswith(f"drift:{feature} (") and ("cusum" in flag or "p=" in flag), flag


def test_a_shift_of_how_features_go_together_is_flagged_as_joint() -> None:
    parity = Parity(ParitySettings(), PROFILES, CollectorRegistry())
    x = claims(4000, seed=8)
    serve(parity, x[:1000])
    rest = x[1000:].copy()  # claim amounts re-paired to run against tenure; marginals kept
    rest[np.argsort(rest[:, 1]), 0] = np.sort(rest[:, 0])[::-1]
    serve(parity, rest)
    assert "joint" in parity.drifted("claims_risk", "2")
    [flag] = [f for f in parity.check(V2, {"features": row()}) if f.startswith("drift:joint")]
    assert "claim_amount~policy_tenure_months" in flag


def test_a_profile_from_before_sketches_still_drives_the_tests(tmp_path: Path) -> None:
    old = tmp_path / "claims_risk" / "2"
    old.mkdir(parents=True)
    doc = json.loads((MODEL_REPO / "claims_risk" / "2" / "profile.json").read_text())
    for column in (*doc["features"], doc["output_profile"]):
        del column["sketch"]
    del doc["score_correlation"], doc["decision_threshold"]
    (old / "profile.json").write_text(json.dumps(doc))
    shutil.copy(MODEL_REPO / "claims_risk" / "2" / "golden.json", old)
    profiles = load_profiles(tmp_path)
    parity = Parity(ParitySettings(), profiles, CollectorRegistry())
    profile = profiles[("claims_risk", "2")]
    x = claims(3000, seed=9)
    y = scored(x)
    for i in range(0, 1000, 50):
        parity.observe(profile, x[i:i + 50], y[i:i + 50])
    assert parity.drifted("claims_risk", "2") == []
    x[1000:, 0] *= 3.0
    y = scored(x)
    for i in range(1000, 3000, 50):
        parity.observe(profile, x[i:i + 50], y[i:i + 50])
    assert "claim_amount" in parity.drifted("claims_risk", "2")


def test_an_artifact_that_clamps_the_tail_fails_the_golden_replay() -> None:
    """The golden set holds each feature's extremes, so a model that clamps claim amounts
    at 25,000 (invisible on ordinary rows) does not reproduce it."""
    parity = Parity(ParitySettings(), PROFILES, CollectorRegistry())
    inputs = V2.golden_inputs.copy()
    assert inputs[:, 0].max() > 100_000
    clamped = inputs.copy()
    clamped[:, 0] = np.minimum(clamped[:, 0], 25_000)
    assert not parity.record_golden(V2, scored(clamped))
    assert parity.record_golden(V2, scored(inputs)), "the real module reproduces it"
    normal_rows = inputs[:, 0] <= 25_000
    assert normal_rows.mean() > 0.9, "on ordinary rows the clamp changes nothing"


def test_golden_judgement() -> None:
    parity = Parity(ParitySettings(), PROFILES, CollectorRegistry())
    assert parity.record_golden(V2, V2.golden_outputs.copy())
    off = V2.golden_outputs.copy()
    off[17, 0] += 1e-3
    assert not parity.record_golden(V2, off)
    assert parity.golden_ok[("claims_risk", "2")] is False
    assert not parity.record_golden(V2, None, "Triton answered 500")
