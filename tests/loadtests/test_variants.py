"""How `loadtests.variants` reads its variants (the measuring is run by hand)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtests.bench import REPO
from loadtests.variants import parse_variant


def test_a_variant_names_its_tree_and_its_settings(tmp_path: Path) -> None:
    (tmp_path / "aios_cli").mkdir()
    settings = '{"gateway": {"batching": {"max_in_flight": 4}}}'
    variant = parse_variant(f"four={tmp_path}:{settings}")
    assert (variant.name, variant.tree) == ("four", tmp_path.resolve())
    assert variant.settings == {"gateway": {"batching": {"max_in_flight": 4}}}
    assert (parse_variant("pure").tree, parse_variant("pure").settings) == (REPO, {})


@pytest.mark.parametrize(("text", "message"), [
    ("=/tmp", "variant '=/tmp': a name comes first"),
    ("x:{nope", "variant 'x': settings are not JSON"),
    ('x:["gateway"]', 'variant \'x\': settings are {"gateway": {...}, "sidecar": {...}}'),
    ('x:{"triton": {}}', 'variant \'x\': settings are {"gateway": {...}, "sidecar": {...}}'),
    ("x=/nonexistent-tree", "variant 'x': /nonexistent-tree holds no aios_cli"),
])
def test_a_bad_variant_is_refused_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse_variant(text)
    assert str(caught.value).startswith(message)
