"""Live routing changes by ops: validated, optimistic, recorded. Protocol-agnostic.

`RoutingAdmin` is what the REST (`gateway.admin_rest`) and gRPC (`gateway.admin_grpc`)
adapters call. Every change names the revision it is based on, is validated against the
configured backends and the versions those backends serve, and is recorded with who
(the token's subject), when, why, and the table before and after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aios.config import GatewaySettings, ModelRoute, ShadowConfig, describe_validation
from aios.errors import AiosError, Conflict, InvalidInput, NotFound
from aios.ids import new_ulid
from aios.signedlog import SignedLog
from gateway.breaker import Breaker
from gateway.changelog import change_record
from gateway.proposals import STATES, Proposal, applied, approved, failed, governed, rejected
from gateway.routestore import Change, RouteStore, new_change, route_of, table_from_route
from gateway.routing import ModelTable, Router
from gateway.versions import VersionLookup

ModelT = TypeVar("ModelT", bound=BaseModel)


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


class ResolveBody(BaseModel):
    """POST /admin/proposals/{id}/approve|reject, /admin/routes/{model}/rollback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = Field("", max_length=1000)


BODIES: dict[str, type[_Body]] = {"replace": ReplaceBody, "set_weights": WeightsBody,
                                  "set_shadow": ShadowBody, "clear_shadow": ShadowBody}
# What a rollback can undo: a change of weights or shadow (and a rollback itself).
ROLLBACK_ACTIONS = frozenset({"set_weights", "set_shadow", "clear_shadow", "rollback",
                              "rollout_step", "rollout_end"})
# Pending proposals per model, at most.
MAX_PENDING = 20


def parse(model: type[ModelT], data: Any) -> ModelT:
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
        self._four_eyes = frozenset(settings.routing.four_eyes)

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

    async def replace(self, model: str, body: ReplaceBody, who: str) -> ModelTable | Proposal:
        """Replace a model's table (or create one, from base revision 0)."""
        return await self._change(model, "replace", body, who)

    async def set_weights(self, model: str, body: WeightsBody,
                          who: str) -> ModelTable | Proposal:
        """Change the weights of existing targets; the others keep theirs."""
        return await self._change(model, "set_weights", body, who)

    async def set_shadow(self, model: str, body: ShadowBody, who: str) -> ModelTable | Proposal:
        """Set or clear a model's shadow."""
        return await self._change(model, "clear_shadow" if body.shadow is None
                                  else "set_shadow", body, who)

    def _route(self, model: str, action: str, body: _Body) -> ModelRoute:
        """The table ``body`` asks for."""
        if isinstance(body, ReplaceBody):
            whole: ModelRoute = parse(ModelRoute, body.model_dump(
                include={"targets", "sticky", "shadow"}))
            return whole
        current = self._router.table(model)
        doc = route_of(current)
        if isinstance(body, WeightsBody):
            names = {t.name for t in current.targets}
            for name, weight in body.weights.items():
                if name not in names:
                    raise InvalidInput(f"weights.{name}: model '{model}' has no target "
                                       f"'{name}'")
                if weight < 0:
                    raise InvalidInput(f"weights.{name}: must be >= 0, got {weight}")
                doc["targets"][name]["weight"] = weight
        else:
            assert isinstance(body, ShadowBody)
            doc["shadow"] = None if body.shadow is None else parse(ShadowConfig, body.shadow)
        route: ModelRoute = parse(ModelRoute, doc)
        return route

    async def _change(self, model: str, action: str, body: _Body,
                      who: str) -> ModelTable | Proposal:
        """Apply the change, or for a four-eyes model keep it as a proposal (checked now,
        so that a change that cannot apply is refused at once)."""
        route = self._route(model, action, body)
        if not governed(model, self._four_eyes):
            return await self._commit(model, route, body.base_revision, who, action,
                                      body.reason, create=action == "replace")
        await self._validate(model, route)
        current = self._router.tables().get(model)
        stored = current.revision if current is not None else 0
        if stored != body.base_revision:
            raise Conflict(f"routing table of '{model}' is at revision {stored}, not "
                           f"{body.base_revision}")
        if sum(p.model == model and p.state == "pending"
               for p in await self._store.proposals()) >= MAX_PENDING:
            raise Conflict(f"'{model}' has {MAX_PENDING} pending proposals: approve or "
                           "reject some first")
        proposal = Proposal(new_ulid(), model, action, body.model_dump(), body.base_revision,
                            who, body.reason, time.time())
        await self._store.propose(proposal)
        return proposal

    # -- four-eyes ------------------------------------------------------------------------

    async def proposals(self, model: str | None, state: str | None) -> list[Proposal]:
        """Kept proposals, newest first."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"state: one of {', '.join(STATES)}, got {state!r}")
        return [p for p in await self._store.proposals()
                if (model is None or p.model == model) and (state is None or p.state == state)]

    async def _proposal(self, ident: str) -> Proposal:
        for proposal in await self._store.proposals():
            if proposal.id == ident:
                return proposal
        raise NotFound(f"no proposal {ident!r}")

    async def approve(self, ident: str, who: str, reason: str) -> tuple[Proposal, ModelTable]:
        """A second subject's approval: the change is applied as its proposer asked, and
        recorded with both. A change that no longer fits (the table moved on) fails."""
        proposal = approved(await self._proposal(ident), who, reason, time.time())
        await self._store.resolve(proposal, "pending")
        body = parse(BODIES[proposal.action], proposal.body)
        try:
            route = self._route(proposal.model, proposal.action, body)
            table = await self._commit(proposal.model, route, body.base_revision,
                                       proposal.proposer, proposal.action, body.reason,
                                       create=proposal.action == "replace",
                                       approval=(who, reason, proposal.id))
        except AiosError as exc:
            await self._store.resolve(failed(proposal, exc.message), "approved")
            raise
        done = applied(proposal, table.revision)
        await self._store.resolve(done, "approved")
        return done, table

    async def reject(self, ident: str, who: str, reason: str) -> Proposal:
        proposal = rejected(await self._proposal(ident), who, reason, time.time())
        await self._store.resolve(proposal, "pending")
        return proposal

    async def rollback(self, model: str, who: str, reason: str) -> ModelTable:
        """Undo the model's last change (weights or shadow), without waiting for anyone:
        an emergency. The table goes back to what it was before that change, which was
        itself applied (approved, for a four-eyes model)."""
        current = self._router.table(model)
        history = await self._store.history(model, 1)
        if not history or history[0].revision != current.revision:
            raise Conflict(f"'{model}' has no recorded change to roll back to")
        last = history[0]
        if last.action not in ROLLBACK_ACTIONS or last.before is None:
            raise Conflict(f"the last change of '{model}' was a {last.action}: roll it back "
                           "with a change of its own")
        doc = route_of(current)
        for name, target in (last.before.get("targets") or {}).items():
            if name in doc["targets"] and "weight" in target:
                doc["targets"][name]["weight"] = target["weight"]
        if "shadow" in last.before:
            doc["shadow"] = last.before["shadow"]
        return await self._commit(model, parse(ModelRoute, doc), current.revision, who,
                                  "rollback", reason)

    async def apply_rollout(self, model: str, weights: dict[str, int],
                            shadow: dict[str, Any] | None, base: int, who: str, action: str,
                            reason: str, evidence: dict[str, Any]) -> ModelTable:
        """A rollout's change of weights and shadow (its start, or its promote, was
        approved already), committed on ``base`` and recorded with the gates' figures."""
        doc = route_of(self._router.table(model))
        for name, weight in weights.items():
            doc["targets"][name]["weight"] = weight
        doc["shadow"] = shadow
        return await self._commit(model, parse(ModelRoute, doc), base, who, action, reason,
                                  evidence=evidence)

    def would_hold(self, table: ModelTable, weights: dict[str, int],
                   shadow: dict[str, Any] | None) -> bool:
        """Whether ``table`` already holds these weights and this shadow."""
        doc = route_of(table)
        for name, weight in weights.items():
            doc["targets"][name]["weight"] = weight
        doc["shadow"] = shadow
        wanted = table_from_route(table.model, parse(ModelRoute, doc), table.revision, table)
        return route_of(wanted) == route_of(table)

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
                      reason: str, create: bool = False,
                      approval: tuple[str, str, str] = ("", "", ""),
                      evidence: dict[str, Any] | None = None) -> ModelTable:
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
            change = dataclasses.replace(change, approved_by=approval[0],
                                         approval_reason=approval[1], proposal_id=approval[2],
                                         evidence=evidence)
            await self._store.commit(table, base, change)
            self._router.install(table)
            if self._changes is not None:
                await self._changes.append(
                    change_record(change),
                    f"the routing change {model} r{table.revision}, applied,")
            return table
