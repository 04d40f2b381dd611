"""Static model → backend routing."""

from __future__ import annotations

import pytest

from aios.config import ModelRoute
from aios.errors import NotFound
from gateway.routing import StaticRouter, Target

ROUTER = StaticRouter({"claims_risk": ModelRoute(backend="a"),
                       "pinned": ModelRoute(backend="b", version="3")})


@pytest.mark.parametrize(("model", "version", "expected"), [
    ("claims_risk", "", Target("a", "")),
    ("claims_risk", "1", Target("a", "1")),
    ("pinned", "", Target("b", "3")),
    ("pinned", "2", Target("b", "2")),
])
def test_resolve(model: str, version: str, expected: Target) -> None:
    assert ROUTER.resolve(model, version) == expected


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(NotFound, match="unknown model 'other'"):
        ROUTER.resolve("other", "")
