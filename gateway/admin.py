"""Live routing changes by ops: validated, optimistic, recorded. Protocol-agnostic.

`RoutingAdmin` is what the REST (`gateway.admin_rest`) and gRPC (`gateway.admin_grpc`)
adapters call. Every change names the revision it is based on, is validated against the
configured backends and the versions those backends serve, and is recorded with who
(the token's subject), when, why, and the table before and after.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aios.config import GatewaySettings, ModelRoute, ShadowConfig, describe_validation
from aios.errors import InvalidInput, NotFound
from aios.signedlog import SignedLog
from gateway.breaker import Breaker
from gateway.changelog import change_record
from gateway.routestore import Change, RouteStore, new_change, route_of, table_from_route
from gateway.routing import ModelTable, Router
from gateway.versions import VersionLookup


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_revision: int = Field(ge=0)
    reason: str = Field("", max_length=1000)


class ReplaceBody(_Body):
    """PUT /admin/routes/{model}: a whole new table."""

    targets: dict[str, Any]
    sticky: str = "none"
    shadow: dict[str, Any] | None = None


class WeightsBody(_Body):
    """PUT /admin/routes/{model}/weights: new weights for existing targets."""

    weights: dict[str, int]


class ShadowBody(_Body):
    """PUT /admin/routes/{model}/shadow: set (or, with null, clear) the shadow."""

    shadow: dict[str, Any] | None


def parse(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data`` into ``model`` strictly (``"5"`` is no weight); InvalidInput
    naming the bad field."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise InvalidInput(describe_validation(exc)) from exc


class RoutingAdmin:
    """Reads and changes the routing tables, for both admin protocols."""

    def __init__(self, settings: GatewaySettings, router: Router, store: RouteStore,
                 versions: VersionLookup, breaker: Breaker,
                 changes: SignedLog | None = None) -> None:
        self._backends = settings.backends
        self._changes = changes
        self._history_default = 100
        self._router = router
        self._store = store
        self._versions = versions
        self._breaker = breaker
        self._lock = asyncio.Lock()

    def view(self, table: ModelTable) -> dict[str, Any]:
        """A table as the API shows it: the route, its revision, ejected targets."""
        doc = route_of(table)
        ejected = self._breaker.ejected(table.model)
        for name, target in doc["targets"].items():
            target["ejected"] = name in ejected
        return {"model": table.model, "revision": table.revision, **doc}

    def tables(self) -> list[ModelTable]:
        """Every model's current table."""
        return sorted(self._router.tables().values(), key=lambda t: t.model)

    def get(self, model: str) -> ModelTable:
        """One model's current table."""
        return self._router.table(model)

    async def history(self, model: str | None, limit: int | None) -> list[Change]:
        """Recorded changes, newest first."""
        if model is not None:
            self._router.table(model)
        return await self._store.history(model, limit or self._history_default)

    async def replace(self, model: str, body: ReplaceBody, who: str) -> ModelTable:
        """Replace a model's table (or create one, from base revision 0)."""
        route = parse(ModelRoute, body.model_dump(include={"targets", "sticky", "shadow"}))
        return await self._commit(model, route, body.base_revision, who, "replace",
                                  body.reason, create=True)

    async def set_weights(self, model: str, body: WeightsBody, who: str) -> ModelTable:
        """Change the weights of existing targets; the others keep theirs."""
        current = self._router.table(model)
        names = {t.name for t in current.targets}
        for name, weight in body.weights.items():
            if name not in names:
                raise InvalidInput(f"weights.{name}: model '{model}' has no target '{name}'")
            if weight < 0:
                raise InvalidInput(f"weights.{name}: must be >= 0, got {weight}")
        doc = route_of(current)
        for name, weight in body.weights.items():
            doc["targets"][name]["weight"] = weight
        route = parse(ModelRoute, doc)
        return await self._commit(model, route, body.base_revision, who, "set_weights",
                                  body.reason)

    async def set_shadow(self, model: str, body: ShadowBody, who: str) -> ModelTable:
        """Set or clear a model's shadow."""
        doc = route_of(self._router.table(model))
        doc["shadow"] = None if body.shadow is None else parse(ShadowConfig, body.shadow)
        route = parse(ModelRoute, doc)
        action = "clear_shadow" if body.shadow is None else "set_shadow"
        return await self._commit(model, route, body.base_revision, who, action, body.reason)

    async def _validate(self, model: str, route: ModelRoute) -> None:
        try:
            route.check_backends(self._backends, "route")
        except ValueError as exc:
            raise InvalidInput(str(exc).removeprefix("route.")) from exc
        wanted = [(f"targets.{n}", t.backend, model, t.version)
                  for n, t in route.targets.items() if t.version]
        if route.shadow is not None and route.shadow.version:
            wanted.append(("shadow", route.shadow.backend, route.shadow.model or model,
                           route.shadow.version))
        for where, backend, name, version in wanted:
            if version not in await self._versions.versions(backend, name):
                raise InvalidInput(f"{where}.version: backend '{backend}' serves no version "
                                   f"'{version}' of model '{name}'")

    async def _commit(self, model: str, route: ModelRoute, base: int, who: str, action: str,
                      reason: str, create: bool = False) -> ModelTable:
        await self._validate(model, route)
        async with self._lock:
            try:
                previous: ModelTable | None = self._router.table(model)
            except NotFound:
                if not create:
                    raise
                previous = None
            # The store accepts it only if it is still at `base`: so the new one is base + 1.
            table = table_from_route(model, route, base + 1, previous)
            change = new_change(model, table.revision, who, action, reason, previous, table)
            await self._store.commit(table, base, change)
            self._router.install(table)
            if self._changes is not None:
                await self._changes.append(
                    change_record(change),
                    f"the routing change {model} r{table.revision}, applied,")
            return table
