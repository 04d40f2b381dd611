"""Weighted, sticky, minimal-movement routing; version pins; ejected targets."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from aios.errors import InvalidInput, NotFound, NotReady
from gateway.routing import (
    SLOTS,
    ModelTable,
    Router,
    TargetSpec,
    rebalance,
    slot_quotas,
    sticky_slot,
)

KEYS = [f"claim-{i}" for i in range(5000)]


def table(weights: dict[str, int], previous: ModelTable | None = None,
          versions: dict[str, str] | None = None) -> ModelTable:
    versions = versions or {"stable": "1", "canary": "2"}
    targets = tuple(TargetSpec(n, "local", versions.get(n, ""), w) for n, w in weights.items())
    return ModelTable("claims_risk", (previous.revision + 1) if previous else 1, targets,
                      "header:x-claim-id", None,
                      rebalance(previous.segments if previous else (), targets))


def assign(t: ModelTable, keys: list[str] = KEYS) -> dict[str, str]:
    router = Router({t.model: t})
    return {k: router.resolve(t.model, "", k).target for k in keys}


def test_split_is_within_two_points_and_sticky() -> None:
    t = table({"stable": 90, "canary": 10})
    first = assign(t)
    share = Counter(first.values())["canary"] / len(KEYS)
    assert abs(share - 0.10) <= 0.02
    assert assign(t) == first, "every key repeated gets the same target"


def test_moving_weight_moves_only_keys_to_the_gainer() -> None:
    before_table = table({"stable": 90, "canary": 10})
    after_table = table({"stable": 80, "canary": 20}, before_table)
    before, after = assign(before_table), assign(after_table)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == "stable" and after[k] == "canary" for k in moved)
    assert abs(len(moved) / len(KEYS) - 0.10) <= 0.02


def test_three_targets_no_reshuffle_of_the_bystander() -> None:
    weights = {"a": 50, "b": 30, "c": 20}
    versions = {"a": "1", "b": "2", "c": "3"}
    t1 = table(weights, versions=versions)
    t2 = table({"a": 30, "b": 30, "c": 40}, t1, versions)
    before, after = assign(t1), assign(t2)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all((before[k], after[k]) == ("a", "c") for k in moved)
    assert all(before[k] == after[k] == "b" for k in KEYS if before[k] == "b")


@pytest.mark.parametrize("weights", [{"a": 1}, {"a": 1, "b": 2}, {"a": 7, "b": 0, "c": 3},
                                     {"a": 999_999, "b": 1}])
def test_slot_quotas_cover_the_line(weights: dict[str, int]) -> None:
    targets = [TargetSpec(n, "x", "", w) for n, w in weights.items()]
    quotas = slot_quotas(targets)
    assert sum(quotas.values()) == SLOTS
    segments = rebalance((), targets)
    assert segments[0][0] == 0 and segments[-1][1] == SLOTS
    assert all(a[1] == b[0] for a, b in itertools.pairwise(segments))


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(InvalidInput, match="at least one weight must be positive"):
        slot_quotas([TargetSpec("a", "x", "", 0)])


def test_weighted_random_without_a_key() -> None:
    t = table({"stable": 75, "canary": 25})
    rng = random.Random(7)
    router = Router({t.model: t}, rng=rng.random)
    picks = Counter(router.resolve(t.model, "", None).target for _ in range(20_000))
    assert abs(picks["canary"] / 20_000 - 0.25) <= 0.02


def test_pinned_version_bypasses_the_split() -> None:
    t = table({"stable": 100, "canary": 0})
    router = Router({t.model: t})
    route = router.resolve(t.model, "2", "claim-1")
    assert (route.target, route.version) == ("canary", "2")
    # A version no target serves goes to the main target's backend, pinned as asked.
    other = router.resolve(t.model, "7", None)
    assert (other.target, other.version) == ("stable", "7")


def test_ejected_target_share_goes_to_the_rest() -> None:
    t = table({"stable": 90, "canary": 10})
    router = Router({t.model: t})
    routes = {router.resolve(t.model, "", k, frozenset({"canary"})).target for k in KEYS}
    assert routes == {"stable"}
    with pytest.raises(NotReady, match="every target of model 'claims_risk' is ejected"):
        router.resolve(t.model, "", "k", frozenset({"stable", "canary"}))


def test_unknown_model() -> None:
    with pytest.raises(NotFound, match="Request for unknown model: 'other' is not found"):
        Router({}).resolve("other", "", None)


def test_sticky_slot_is_stable_and_model_scoped() -> None:
    assert sticky_slot("m", "k") == sticky_slot("m", "k")
    assert sticky_slot("m", "k") != sticky_slot("n", "k")
    assert 0 <= sticky_slot("m", "k") < SLOTS


def test_stored_tables_naming_unknown_backends_fall_back_to_the_config() -> None:
    from gateway.routestore import usable_tables

    stored = {"claims_risk": table({"stable": 1}), "gone": table({"stable": 1})}
    seed = {"claims_risk": ModelTable("claims_risk", 1, (TargetSpec("d", "new", "", 1),),
                                      "none", None, rebalance((), [TargetSpec("d", "new", "",
                                                                              1)]))}
    assert usable_tables(stored, seed, {"new": {}}) == {"claims_risk": seed["claims_risk"]}
    assert usable_tables(stored, seed, {"local": {}}) == stored


@pytest.mark.parametrize(("pinned", "key", "ejected", "target", "reason"), [
    ("", None, frozenset(), None, "weights"),
    ("", "claim-1", frozenset(), None, "sticky"),
    ("2", "claim-1", frozenset(), "canary", "pinned"),
    ("", "claim-1", frozenset({"canary"}), "stable", None),  # sticky, or breaker if moved
])
def test_a_route_says_why_it_went_there_and_what_the_weights_were(
        pinned: str, key: str | None, ejected: frozenset[str], target: str | None,
        reason: str | None) -> None:
    t = table({"stable": 90, "canary": 10})
    route = Router({t.model: t}, rng=lambda: 0.5).resolve(t.model, pinned, key, ejected)
    assert route.weights == "stable=90,canary=10"
    if target is not None:
        assert route.target == target
    if reason is not None:
        assert route.reason == reason


def test_a_key_moved_off_an_ejected_target_says_breaker() -> None:
    t = table({"stable": 90, "canary": 10})
    router = Router({t.model: t})
    on_canary = [k for k in KEYS if router.resolve(t.model, "", k).target == "canary"]
    moved = router.resolve(t.model, "", on_canary[0], frozenset({"canary"}))
    assert (moved.target, moved.reason) == ("stable", "breaker")
    stayed = next(k for k in KEYS if k not in on_canary)
    assert router.resolve(t.model, "", stayed, frozenset({"canary"})).reason == "sticky"
