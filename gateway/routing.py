"""Which backend, and which model version, serves a call. Pure logic, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aios.config import ModelRoute
from aios.errors import NotFound


@dataclass(frozen=True, slots=True)
class Target:
    """Where a call goes: a backend and the model version to ask it for ("" = its default)."""

    backend: str
    version: str


class StaticRouter:
    """Routes each configured model to its backend; a version the client pins is kept."""

    def __init__(self, models: Mapping[str, ModelRoute]) -> None:
        self._models = dict(models)

    def resolve(self, model: str, pinned: str) -> Target:
        """The target for ``model``; NotFound if no route names it."""
        route = self._models.get(model)
        if route is None:
            raise NotFound(f"unknown model '{model}'")
        return Target(route.backend, pinned or route.version or "")
