"""`aios models build`: deterministic, honest versions, profiles the sidecar can use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aios.profile import FEATURES, bin_index
from tests.helpers import MODEL_REPO, REPO


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    subprocess.run([sys.executable, "-m", "aios_cli", "models", "build", "--model-repo", str(repo)],
                   cwd=REPO, check=True, capture_output=True)
    return repo


def load(repo: Path, version: int, name: str) -> Any:
    return json.loads((repo / "claims_risk" / str(version) / name).read_text())


def same(fresh: Any, kept: Any, where: str = "") -> None:
    """Equal structure and values, floats to 1e-3: training accumulates the rounding by
    which torch's kernels for different CPU instruction sets (AVX2, AVX-512) differ."""
    if isinstance(kept, float):
        assert fresh == pytest.approx(kept, rel=1e-3, abs=1e-6), where
    elif isinstance(kept, dict):
        assert isinstance(fresh, dict) and fresh.keys() == kept.keys(), where
        for key in kept:
            same(fresh[key], kept[key], f"{where}.{key}")
    elif isinstance(kept, list):
        assert isinstance(fresh, list) and len(fresh) == len(kept), where
        for i, (a, b) in enumerate(zip(fresh, kept, strict=True)):
            same(a, b, f"{where}[{i}]")
    else:
        assert fresh == kept, where


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("name", ["golden.json", "profile.json"])
def test_rebuild_reproduces_the_repository(rebuilt: Path, version: int, name: str) -> None:
    same(load(rebuilt, version, name), load(MODEL_REPO, version, name), name)


def test_version_two_fits_better() -> None:
    v1, v2 = (load(MODEL_REPO, v, "profile.json")["metrics"] for v in (1, 2))
    assert v2["holdout_auc"] > v1["holdout_auc"] + 0.02
    assert v2["holdout_logloss"] < v1["holdout_logloss"]


@pytest.mark.parametrize("version", [1, 2])
def test_profile_describes_every_feature(version: int) -> None:
    profile = load(MODEL_REPO, version, "profile.json")
    assert [f["name"] for f in profile["features"]] == [f.name for f in FEATURES]
    for feature in profile["features"]:
        edges, freqs = feature["bin_edges"], feature["frequencies"]
        assert edges == sorted(set(edges))
        assert len(freqs) == len(edges) + 1
        assert sum(freqs) == pytest.approx(1.0, abs=1e-4)
        assert feature["min"] <= feature["mean"] <= feature["max"]
        assert feature["dtype"] == "FP32"
    used = [f["name"] for f in profile["features"] if f["used"]]
    assert len(used) == (6 if version == 1 else 8)


def test_bin_index_puts_edges_in_the_upper_bin() -> None:
    assert bin_index([1.0, 2.0], np.array([0.5, 1.0, 1.5, 2.0, 9.0])).tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("version", [1, 2])
def test_golden_set_covers_a_batch_and_the_edges(version: int) -> None:
    gold = load(MODEL_REPO, version, "golden.json")
    profile = load(MODEL_REPO, version, "profile.json")
    assert len(gold["inputs"]) == len(gold["outputs"]) == 64  # max_batch_size: one request
    assert all(len(row) == 8 for row in gold["inputs"])
    assert all(0.0 < out[0] < 1.0 for out in gold["outputs"])
    x = np.asarray(gold["inputs"], dtype=np.float64)
    for j, feature in enumerate(profile["features"]):
        column = x[:, j].tolist()
        assert min(column) == pytest.approx(feature["min"], rel=1e-6), feature["name"]
        assert max(column) == pytest.approx(feature["max"], rel=1e-6), feature["name"]
    assert max(x[:, 0]) > 100_000, "a tail-only change to large claims shows"
    scores = [out[0] for out in gold["outputs"]]
    threshold = profile["decision_threshold"]
    near = [s for s in scores if abs(s - threshold) < 0.02]
    assert any(s < threshold for s in near) and any(s >= threshold for s in near)
    assert 0 < gold["measured_noise"] < 1e-5
    assert gold["tolerance"] == max(1e-6, 10 * gold["measured_noise"])
