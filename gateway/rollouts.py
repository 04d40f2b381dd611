"""Governed rollouts, as a service: the admin calls (start, pause, resume, abort, promote,
approve, reject) and the driver that moves each running rollout through its plan.

Every interval each replica publishes its per-target counters (`gateway.targets`) and the
shadow's decision counts to the rollout store; the replica holding a model's lease sums
every replica's, evaluates the step's gates (`gateway.rollout.evaluate`) on the window
since the step began, and advances or rolls back. A step is saved first (compare-and-set
on the rollout's seq) and then applied to the routing table on the revision the rollout
last wrote, so a driver that dies between the two leaves the step for the next driver to
apply, never to repeat or skip; a table someone else changed meanwhile pauses the rollout
rather than being overwritten. Each change lands in route history with its evidence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from aios.config import RoutingSettings
from aios.errors import AiosError, Conflict, InvalidInput, NotFound
from aios.ids import new_ulid
from gateway.admin import RoutingAdmin
from gateway.health import HealthReader
from gateway.proposals import governed
from gateway.rollout import (
    Counters,
    Event,
    Evidence,
    Plan,
    Rollout,
    Verdict,
    approval,
    desired,
    evaluate,
    pick_targets,
    rollback_percent,
    total,
    with_event,
)
from gateway.rolloutstore import RolloutStore
from gateway.routestore import route_of
from gateway.routing import ModelTable

logger = logging.getLogger(__name__)

GATES = ("error_rate", "error_rate_increase", "p99_ms", "agreement", "drift", "parity")


class RolloutMetrics:
    """What Prometheus sees of each model's rollout (every replica, from the store)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.step = Gauge("aios_rollout_step", "The current rollout's step (0-based)",
                          ("model",), registry=registry)
        self.percent = Gauge("aios_rollout_candidate_percent",
                             "The candidate's share of traffic the rollout holds",
                             ("model",), registry=registry)
        self.active = Gauge("aios_rollout_active", "1 while a rollout is running or paused",
                            ("model",), registry=registry)
        self.value = Gauge("aios_rollout_gate_value", "Each gate's figure on the window",
                           ("model", "gate"), registry=registry)
        self.bound = Gauge("aios_rollout_gate_bound", "Each gate's bound", ("model", "gate"),
                           registry=registry)
        self.passing = Gauge("aios_rollout_gate_passing",
                             "1 passing, 0 failing, -1 not decided yet", ("model", "gate"),
                             registry=registry)
        self.rollbacks = Counter("aios_rollout_rollbacks", "Rollouts rolled back, by gate",
                                 ("model", "gate"), registry=registry)

    def show(self, rollout: Rollout) -> None:
        model = rollout.model
        self.step.labels(model).set(rollout.step)
        self.percent.labels(model).set(rollout.target_percent)
        self.active.labels(model).set(1 if rollout.active else 0)
        for gate in (rollout.last or {}).get("gates", ()):
            name = gate["gate"]
            self.value.labels(model, name).set(float("nan") if gate["value"] is None
                                               else gate["value"])
            self.bound.labels(model, name).set(float("nan") if gate["bound"] is None
                                               else gate["bound"])
            self.passing.labels(model, name).set(
                -1 if gate["passed"] is None else int(gate["passed"]))


class Rollouts:
    """The rollouts of every model: admin calls and the driver loop."""

    def __init__(self, routing: RoutingSettings, admin: RoutingAdmin, store: RolloutStore,
                 counters: Callable[[str], Mapping[str, Counters]], health: HealthReader,
                 registry: CollectorRegistry) -> None:
        self._admin = admin
        self._store = store
        self._counters = counters
        self._health = health
        self._interval_s = routing.rollout_interval_s
        self._lease_s = routing.rollout_lease_s
        self._four_eyes = frozenset(routing.four_eyes)
        self._metrics = RolloutMetrics(registry)
        self.replica = new_ulid()  # a restarted replica is a new one: its counters too
        self._lock = asyncio.Lock()

    # -- reading ----------------------------------------------------------------------

    async def list(self, model: str | None) -> list[Rollout]:
        return [r for r in await self._store.rollouts() if model is None or r.model == model]

    async def current(self, model: str) -> Rollout:
        self._admin.get(model)
        for rollout in await self._store.rollouts():
            if rollout.model == model:
                return rollout
        raise NotFound(f"'{model}' has no rollout: start one with POST /admin/rollouts/{model}")

    # -- admin calls ------------------------------------------------------------------

    async def start(self, model: str, plan: Plan, who: str) -> Rollout:
        """A new rollout of ``model``; for a four-eyes model it waits for approval."""
        table = self._admin.get(model)
        try:
            pick = pick_targets(plan, [(t.name, t.version, t.weight) for t in table.targets])
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        candidate = next(t for t in table.targets if t.name == pick.candidate)
        if not candidate.version:
            raise InvalidInput(f"candidate: target '{candidate.name}' names no version; the "
                               "shadow that measures agreement needs one")
        output = plan.output or (table.shadow.output if table.shadow else "")
        threshold = plan.threshold if plan.threshold is not None else (
            table.shadow.threshold if table.shadow else None)
        if plan.gates.min_agreement is not None and (not output or threshold is None):
            raise InvalidInput("threshold: the agreement gate compares decisions at the "
                               "model's threshold: give output and threshold (or switch the "
                               "gate off with gates.min_agreement null)")
        filled = plan.model_copy(update={"output": output, "threshold": threshold,
                                         "stable": pick.stable, "candidate": pick.candidate})
        waits = governed(model, self._four_eyes)
        now = time.time()
        rollout = Rollout(
            id=new_ulid(), model=model, plan=filled.model_dump(), stable=pick.stable,
            candidate=pick.candidate, candidate_backend=candidate.backend,
            candidate_version=candidate.version,
            state="awaiting_approval" if waits else "running", step=0, step_started_at=now,
            baseline={}, started_by=who, at=now, target_percent=plan.steps[0],
            revision=table.revision, shadow_before=route_of(table)["shadow"],
            events=(Event(now, "proposed" if waits else "started", who, 0, plan.steps[0],
                          plan.reason),))
        saved = await self._store.save(rollout, 0)
        return await self._settle(saved)

    async def act(self, model: str, action: str, who: str, reason: str) -> Rollout:
        """pause | resume | abort | promote | approve | reject on ``model``'s rollout."""
        async with self._lock:
            rollout = await self.current(model)
            saved = await self._store.save(self._acted(rollout, action, who, reason),
                                           rollout.seq)
        return await self._settle(saved)

    def _acted(self, rollout: Rollout, action: str, who: str, reason: str) -> Rollout:
        """``rollout`` once ``action`` is done (or Conflict / Forbidden saying why not)."""
        now, model = time.time(), rollout.model

        def said(what: str, **changes: Any) -> Rollout:
            return with_event(rollout, Event(now, what, who, rollout.step,
                                             rollout.target_percent, reason), **changes)

        finish = {"state": "completed", "step": len(rollout.parsed_plan.steps) - 1,
                  "target_percent": 100, "applied": False}
        if action in ("approve", "reject"):
            what = approval(rollout, who)
            if action == "reject":
                return said(f"rejected {what}", **({"state": "rejected"} if what == "start"
                                                   else {"promote_by": "",
                                                         "promote_reason": ""}))
            if what == "start":
                table = self._admin.get(model)  # as it is now that it is approved
                return said("approved start", state="running", approved_by=who,
                            step_started_at=now, revision=table.revision,
                            shadow_before=route_of(table)["shadow"])
            return said("approved promote", **finish, promote_by="", promote_reason="")
        if action not in ("pause", "resume", "abort", "promote"):
            raise InvalidInput("action: one of pause, resume, abort, promote, approve, "
                               f"reject; got {action!r}")
        if not rollout.active or (rollout.state == "awaiting_approval" and action != "abort"):
            raise Conflict(f"rollout {rollout.id} of '{model}' is {rollout.state}: "
                           f"nothing to {action}")
        if action == "pause":
            return said("paused", state="paused")
        if action == "resume":
            if rollout.state != "paused":
                raise Conflict(f"rollout {rollout.id} of '{model}' is {rollout.state}, "
                               "not paused")
            # The step is applied again, over whatever the table holds now (a pause for a
            # change made outside the rollout ends here), and its window starts again:
            # evidence from before the pause is not the evidence of now.
            return said("resumed", state="running", applied=False,
                        revision=self._admin.get(model).revision)
        if action == "abort":
            return said("aborted", state="aborted", target_percent=0,
                        applied=rollout.state == "awaiting_approval")
        if not governed(model, self._four_eyes):
            return said("promoted", **finish)
        if rollout.promote_by:
            raise Conflict(f"a promote of '{model}' by '{rollout.promote_by}' already waits "
                           "for approval")
        return said("promote proposed", promote_by=who, promote_reason=reason)

    async def _settle(self, rollout: Rollout) -> Rollout:
        """Apply a just-saved rollout's table now, rather than at the driver's next
        interval (a conflict with the driver doing it too is harmless)."""
        try:
            if await self._store.lease(rollout.model, self.replica, self._lease_s):
                return await self._reconcile(rollout)
        except Conflict:
            pass
        return rollout

    # -- the driver -------------------------------------------------------------------

    async def run(self) -> None:
        """Drive every rollout this replica holds the lease of, each interval."""
        while True:
            try:
                await self.tick()
            except AiosError as exc:
                logger.warning("rollouts: %s; retrying", exc.message)
            except Exception:  # one bad interval must not stop every later one
                logger.exception("rollouts: interval failed; retrying")
            await asyncio.sleep(self._interval_s)

    async def tick(self) -> None:
        """One interval: publish this replica's counters; drive what it holds."""
        rollouts = await self._store.rollouts()
        current = {r.model: r for r in rollouts[::-1]}  # the newest of each model wins
        for model, rollout in current.items():
            if not (rollout.active or not rollout.applied):
                self._metrics.show(rollout)
                continue
            await self._store.publish(model, self.replica, self._counters(model))
            if await self._store.lease(model, self.replica, self._lease_s):
                try:
                    async with self._lock:
                        rollout = await self._drive(await self.current(model))
                except Conflict as exc:  # another replica (or call) moved it first
                    logger.info("rollout of %s: %s", model, exc.message)
            self._metrics.show(rollout)

    async def _baseline(self, rollout: Rollout) -> dict[str, dict[str, Any]]:
        await self._store.publish(rollout.model, self.replica, self._counters(rollout.model))
        summed = total(await self._store.gathered(rollout.model))
        return {k: c.to_json() for k, c in summed.items()}

    async def _drive(self, rollout: Rollout) -> Rollout:
        rollout = await self._reconcile(rollout)
        if rollout.state != "running" or not rollout.applied:
            return rollout
        plan = rollout.parsed_plan
        summed = total(await self._store.gathered(rollout.model))
        window = {k: c - Counters.from_json(rollout.baseline.get(k, {}))
                  for k, c in summed.items()}
        label = f"shadow:{rollout.candidate_backend}/{rollout.model}/{rollout.candidate_version}"
        shadowed = window.get(label, Counters())
        candidate = dataclasses.replace(window.get(rollout.candidate, Counters()),
                                        agree=shadowed.agree, disagree=shadowed.disagree)
        verdict = evaluate(plan, rollout.step, time.time() - rollout.step_started_at,
                           candidate, window.get(rollout.stable, Counters()),
                           await self._evidence(rollout))
        return await self._decide(rollout, plan, verdict)

    async def _decide(self, rollout: Rollout, plan: Plan, verdict: Verdict) -> Rollout:
        now, figures = time.time(), tuple(g.to_json() for g in verdict.gates)
        if verdict.action == "wait":
            return await self._store.save(dataclasses.replace(rollout, last=verdict.to_json(),
                                                              driver=self.replica), rollout.seq)
        if verdict.action == "rollback":
            percent = rollback_percent(rollout, plan)
            for name in [g.gate for g in verdict.failed()] or ["undecided"]:
                self._metrics.rollbacks.labels(rollout.model, name).inc()
            changed = with_event(rollout, Event(now, "rollback", "rollout", rollout.step,
                                                percent, verdict.why, figures),
                                 state="rolled_back", target_percent=percent, applied=False,
                                 last=verdict.to_json(), driver=self.replica)
        elif rollout.step == len(plan.steps) - 1:
            changed = with_event(rollout, Event(now, "completed", "rollout", rollout.step,
                                                100, verdict.why, figures),
                                 state="completed", applied=False, last=verdict.to_json(),
                                 driver=self.replica)
        else:
            step = rollout.step + 1
            changed = with_event(rollout, Event(now, "step", "rollout", step, plan.steps[step],
                                                verdict.why, figures),
                                 step=step, target_percent=plan.steps[step], applied=False,
                                 last=verdict.to_json(), driver=self.replica)
        return await self._reconcile(await self._store.save(changed, rollout.seq))

    async def _reconcile(self, rollout: Rollout) -> Rollout:
        """Make the table hold what the rollout says, once: on the revision the rollout
        last wrote (fencing); a table changed by someone else pauses the rollout."""
        if rollout.applied or rollout.state in ("awaiting_approval", "rejected"):
            return rollout
        table = self._admin.get(rollout.model)
        weights, shadow = desired(rollout)
        if not self._admin.would_hold(table, weights, shadow):
            if table.revision != rollout.revision:
                return await self._interfered(rollout, table)
            action = "rollout_step" if rollout.active else "rollout_end"
            last = rollout.events[-1]
            evidence = {"rollout": rollout.id, "step": rollout.step,
                        "percent": rollout.target_percent, "state": rollout.state,
                        "started_by": rollout.started_by, "approved_by": rollout.approved_by,
                        "event": {"what": last.what, "who": last.who, "reason": last.note},
                        "gates": list(last.gates)}
            table = await self._admin.apply_rollout(
                rollout.model, weights, shadow, rollout.revision, f"rollout:{rollout.id}",
                action, f"rollout {rollout.state}, step {rollout.step} "
                        f"({rollout.target_percent}%): {last.note or last.what}", evidence)
        # The step's window begins once its traffic is in place.
        changed = dataclasses.replace(rollout, applied=True, revision=table.revision,
                                      step_started_at=time.time(),
                                      baseline=await self._baseline(rollout))
        return await self._store.save(changed, rollout.seq)

    async def _interfered(self, rollout: Rollout, table: ModelTable) -> Rollout:
        """The table was changed outside the rollout: it is not overwritten. A running
        rollout pauses (resume puts its step back); an ended one leaves the table be."""
        note = (f"the routing table moved to revision {table.revision} outside the rollout "
                f"(which last wrote {rollout.revision}): not overwritten; ")
        if rollout.active:
            changed = with_event(rollout, Event(time.time(), "paused", "rollout", rollout.step,
                                                rollout.target_percent,
                                                note + "resume to put the step back, or abort"),
                                 state="paused", applied=True)
        else:
            changed = with_event(rollout, Event(time.time(), "left", "rollout", rollout.step,
                                                rollout.target_percent,
                                                note + "the table stays as it is"),
                                 applied=True)
        return await self._store.save(changed, rollout.seq)

    async def _evidence(self, rollout: Rollout) -> Evidence:
        """The candidate's drift flags and golden parity, from its sidecar's metrics."""
        doc = (await self._health.health())["backends"].get(rollout.candidate_backend, {})
        if not doc.get("up"):
            return Evidence(sidecar_up=False)
        mine = [e for e in doc.get("drift", ()) if e["model"] == rollout.model
                and e["version"] == rollout.candidate_version]
        parity: dict[str, Any] = next(
            (p for p in doc.get("parity", ()) if p["model"] == rollout.model
             and p["version"] == rollout.candidate_version), {})
        ok = parity.get("ok")
        return Evidence(tuple(sorted(e["feature"] for e in mine if e.get("flagged"))),
                        None if ok is None else bool(ok), parity.get("max_abs_diff"))


def view(rollout: Rollout) -> dict[str, Any]:
    """A rollout as the admin API shows it (without the counters its window started at)."""
    doc = rollout.to_json()
    del doc["baseline"]
    return doc
