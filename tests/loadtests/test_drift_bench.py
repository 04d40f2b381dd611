"""The drift benchmark, small: it runs the real monitor on scenarios that must come out
the way their names say."""

from __future__ import annotations

from aios.config import ParitySettings
from loadtests.drift_bench import SCENARIOS, Scenario, markdown, run


def pick(*names: str) -> list[Scenario]:
    return [s for s in SCENARIOS if s.name in names]


def test_a_shift_is_found_on_its_feature_and_the_stationary_stream_stays_quiet() -> None:
    results = run(pick("stationary", "mean +0.5 sd claimant_age",
                       "output logit bias +0.25"), 4, ParitySettings(), workers=1)
    stationary, shifted, output = results
    assert stationary["runs_flagged"] <= 0.25
    assert shifted["within_2000"] == 1.0 and shifted["attributed"] == 1.0
    assert 0 < shifted["median_delay"] <= 2000
    assert output["within_5000"] == 1.0 and output["attributed"] == 1.0
    table = markdown(results).splitlines()
    assert table[2].startswith("| stationary | 4 | any flag in ")
    assert table[3].startswith("| mean +0.5 sd claimant_age | 4 | 100.0% / 100.0% |")
