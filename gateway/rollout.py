"""Governed rollouts (pure): a plan moves a model's traffic from its stable target to a
candidate in steps, each held for a dwell time and a number of requests, and advanced
only when every gate passes on the step's window; a failing gate rolls it back at once.

The figures a gate reads are the window's: per-target counters summed over every
replica (`Counters`), minus the same sums when the step began. Agreement comes from the
shadow, which mirrors the stable arm's traffic to the candidate for the whole rollout and
compares decisions at the model's threshold; it passes on the Wilson interval's lower
bound and fails on its upper bound, so a gate never decides on a bare rate. Drift flags
and golden parity come from the candidate's sidecar. `evaluate` says what to do;
`gateway.rollouts` does it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aios.errors import Conflict, Forbidden
from aios.metrics import LATENCY_BUCKETS
from aios.replay import wilson
from gateway.proposals import APPROVE_SCOPE

State = Literal["awaiting_approval", "running", "paused", "completed", "rolled_back",
                "aborted", "rejected"]
STATES: tuple[State, ...] = ("awaiting_approval", "running", "paused", "completed",
                             "rolled_back", "aborted", "rejected")
ACTIVE: frozenset[str] = frozenset({"awaiting_approval", "running", "paused"})
DEFAULT_STEPS = (0, 5, 25, 50, 100)
Action = Literal["wait", "advance", "rollback"]


class Gates(BaseModel):
    """The bounds a step's window must meet (a gate is off when its bound is null)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_error_rate: float | None = Field(0.02, ge=0, le=1)
    # The candidate's error rate may exceed the stable arm's by at most this.
    max_error_rate_increase: float | None = Field(0.01, ge=0, le=1)
    max_p99_ms: float | None = Field(1000.0, gt=0)
    min_agreement: float | None = Field(0.9, ge=0, le=1)
    drift: bool = True  # no drift flag on the candidate's inputs or output
    parity: bool = True  # the candidate's golden parity passing


class Plan(BaseModel):
    """POST /admin/rollouts/{model}: what to roll out, how, and the gates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The candidate: a target of the model's table, by name or by the version it serves.
    candidate: str = Field(min_length=1, max_length=100)
    # The stable arm: by default the target serving all traffic now.
    stable: str = Field("", max_length=100)
    # Percent of traffic on the candidate, per step; 0: shadow only.
    steps: list[int] = Field(default_factory=lambda: list(DEFAULT_STEPS), min_length=1,
                             max_length=20)
    dwell_s: float = Field(60.0, ge=0, le=86_400)
    min_requests: int = Field(100, ge=1, le=10_000_000)
    # A step whose gates are still undecided this long after it began rolls back.
    max_step_s: float = Field(3600.0, gt=0, le=7 * 86_400)
    # Where a failing gate sends the candidate's traffic: none, or the last step passed.
    rollback_to: Literal["zero", "previous"] = "zero"
    # The stable arm's traffic mirrored to the candidate (agreement's evidence).
    shadow_fraction: float = Field(1.0, gt=0, le=1)
    # The decision agreement is measured on: this output >= this threshold (by default
    # the model's shadow's, if it has one).
    output: str = Field("", max_length=200)
    threshold: float | None = None
    gates: Gates = Gates()
    reason: str = Field("", max_length=1000)

    @model_validator(mode="after")
    def _steps_climb_to_100(self) -> Plan:
        for i, percent in enumerate(self.steps):
            if not 0 <= percent <= 100:
                raise ValueError(f"steps.{i}: a percentage in 0..100, got {percent}")
            if i and percent <= self.steps[i - 1]:
                raise ValueError(f"steps.{i}: steps must rise, got {percent} after "
                                 f"{self.steps[i - 1]}")
        if self.steps[-1] != 100:
            raise ValueError(f"steps: the last step must be 100, got {self.steps[-1]}")
        return self


@dataclass(frozen=True)
class Counters:
    """What the gateways counted for one target (or a shadow), cumulative."""

    requests: int = 0
    errors: int = 0  # 5xx / UNAVAILABLE and failed connections
    # Cumulative latency counts per LATENCY_BUCKETS bound, then +Inf.
    buckets: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    agree: int = 0  # shadow decisions compared with the primary's
    disagree: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.requests + other.requests, self.errors + other.errors,
                        tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
                        self.agree + other.agree, self.disagree + other.disagree)

    def __sub__(self, other: Counters) -> Counters:
        # A replica that restarted counts from zero: never a negative window.
        return Counters(max(0, self.requests - other.requests),
                        max(0, self.errors - other.errors),
                        tuple(max(0, a - b) for a, b in zip(self.buckets, other.buckets,
                                                             strict=True)),
                        max(0, self.agree - other.agree),
                        max(0, self.disagree - other.disagree))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Counters:
        buckets = tuple(int(b) for b in doc.get("buckets", ()))
        if len(buckets) != len(LATENCY_BUCKETS) + 1:
            buckets = Counters().buckets
        return cls(int(doc.get("requests", 0)), int(doc.get("errors", 0)), buckets,
                   int(doc.get("agree", 0)), int(doc.get("disagree", 0)))


def total(parts: Iterable[Mapping[str, Counters]]) -> dict[str, Counters]:
    """Per key, the sum over every replica's counters."""
    out: dict[str, Counters] = {}
    for part in parts:
        for key, counters in part.items():
            out[key] = out.get(key, Counters()) + counters
    return out


def p99_ms(counters: Counters) -> float | None:
    """The 99th percentile latency as the histogram bounds it (the bucket's upper bound;
    None when it lies above the last bound or nothing was counted)."""
    n = counters.buckets[-1]
    if n == 0:
        return None
    rank = 0.99 * n
    for bound, cumulative in zip(LATENCY_BUCKETS, counters.buckets, strict=False):
        if cumulative >= rank:
            return bound * 1000
    return None


@dataclass(frozen=True)
class Evidence:
    """What the sidecar says of the candidate's version now."""

    drift_flagged: tuple[str, ...] = ()  # features (or the output) flagged
    parity_ok: bool | None = None  # None: no golden parity figure
    parity_max_abs_diff: float | None = None
    sidecar_up: bool = True


@dataclass(frozen=True)
class GateResult:
    """One gate on one window: the figure, its bound, the sample, and the verdict
    (None: not decided yet)."""

    gate: str
    passed: bool | None
    value: float | None
    bound: float | None
    n: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Verdict:
    action: Action
    gates: tuple[GateResult, ...]
    why: str

    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.passed is False]

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "why": self.why,
                "gates": [g.to_json() for g in self.gates]}


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def gate_results(plan: Plan, percent: int, candidate: Counters, stable: Counters,
                 evidence: Evidence) -> list[GateResult]:
    """Each gate on a step's window (``percent``: the candidate's share in it)."""
    g, n = plan.gates, candidate.requests
    enough = n >= plan.min_requests
    out: list[GateResult] = []
    if percent > 0 and g.max_error_rate is not None:
        rate = _rate(candidate.errors, n)
        out.append(GateResult(
            "error_rate", None if not enough else rate is not None and rate <= g.max_error_rate,
            rate, g.max_error_rate, n, f"{candidate.errors} errors in {n} requests"))
    if percent > 0 and g.max_error_rate_increase is not None and percent < 100:
        rate, base = _rate(candidate.errors, n), _rate(stable.errors, stable.requests)
        delta = None if rate is None or base is None else rate - base
        out.append(GateResult(
            "error_rate_increase",
            None if not enough or delta is None else delta <= g.max_error_rate_increase,
            delta, g.max_error_rate_increase, n,
            f"candidate {candidate.errors}/{n}, stable {stable.errors}/{stable.requests}"))
    if percent > 0 and g.max_p99_ms is not None:
        p99 = p99_ms(candidate)
        out.append(GateResult(
            "p99_ms", None if not enough else p99 is not None and p99 <= g.max_p99_ms,
            p99, g.max_p99_ms, n, "99th percentile latency at the gateway (bucket bound)"))
    if percent < 100 and g.min_agreement is not None:
        compared = candidate.agree + candidate.disagree
        low, high = wilson(candidate.agree, compared)
        # Passes once the interval lies above the bound, fails once it lies below.
        verdict = True if compared >= plan.min_requests and low >= g.min_agreement \
            else False if compared and high < g.min_agreement else None
        out.append(GateResult(
            "agreement", verdict, _rate(candidate.agree, compared), g.min_agreement,
            compared, f"{candidate.agree}/{compared} decisions agree at "
                      f"{plan.output} >= {plan.threshold}; 95% CI [{low:.4f}, {high:.4f}]"))
    if g.drift:
        flagged = evidence.drift_flagged
        out.append(GateResult(
            "drift", None if not evidence.sidecar_up else not flagged, float(len(flagged)),
            0.0, n, ("flagged: " + ", ".join(flagged)) if flagged else
            "no drift flag" if evidence.sidecar_up else "the sidecar's metrics did not answer"))
    if g.parity:
        ok = evidence.parity_ok
        out.append(GateResult(
            "parity", ok, evidence.parity_max_abs_diff, None, 0,
            "no golden parity figure from the sidecar yet" if ok is None
            else "golden parity passing" if ok else "golden parity failing"))
    return out


def evaluate(plan: Plan, step: int, elapsed_s: float, candidate: Counters, stable: Counters,
             evidence: Evidence) -> Verdict:
    """What to do with a step ``elapsed_s`` after it began."""
    percent = plan.steps[step]
    gates = tuple(gate_results(plan, percent, candidate, stable, evidence))
    failed = [g for g in gates if g.passed is False]
    if failed:
        return Verdict("rollback", gates, "; ".join(describe(g) for g in failed))
    sample = candidate.requests if percent > 0 else candidate.agree + candidate.disagree
    pending = [g for g in gates if g.passed is None]
    if elapsed_s >= plan.dwell_s and sample >= plan.min_requests and not pending:
        return Verdict("advance", gates, f"every gate passed on {sample} requests over "
                                         f"{elapsed_s:.0f} s")
    if elapsed_s >= plan.max_step_s:
        return Verdict("rollback", gates, f"undecided after {elapsed_s:.0f} s (max_step_s "
                       f"{plan.max_step_s:g}): " + ("; ".join(describe(g) for g in pending)
                                                    or f"{sample} of {plan.min_requests} "
                                                       "requests"))
    waiting = []
    if elapsed_s < plan.dwell_s:
        waiting.append(f"dwell {elapsed_s:.0f}/{plan.dwell_s:g} s")
    if sample < plan.min_requests:
        waiting.append(f"{sample}/{plan.min_requests} requests")
    waiting.extend(f"{g.gate} undecided" for g in pending)
    return Verdict("wait", gates, "waiting: " + ", ".join(waiting))


def describe(gate: GateResult) -> str:
    """A gate's figures in a sentence (what the history and the console say)."""
    value = "none" if gate.value is None else f"{gate.value:.4g}"
    bound = "" if gate.bound is None else f" (bound {gate.bound:g})"
    return f"{gate.gate} {value}{bound}, n={gate.n}: {gate.detail}"


@dataclass(frozen=True)
class Event:
    """One line of a rollout's own history."""

    at: float
    what: str  # started | approved | rejected | step | rollback | paused | resumed | ...
    who: str
    step: int
    percent: int
    note: str = ""
    gates: tuple[dict[str, Any], ...] = ()
    revision: int = 0  # the routing table's revision the event wrote, if it wrote one


@dataclass(frozen=True)
class Rollout:
    """A rollout as stored: its plan and where it stands. ``seq`` grows with every save
    (the store compares and sets on it: two replicas never both move one rollout)."""

    id: str
    model: str
    plan: dict[str, Any]
    stable: str
    candidate: str
    candidate_backend: str
    candidate_version: str
    state: State
    step: int
    step_started_at: float
    baseline: dict[str, dict[str, Any]]  # counters at the step's start, per key
    started_by: str
    at: float
    seq: int = 0
    # The candidate's share the table is to hold now, and whether it does (a change is
    # saved first and then applied, so a replica that dies between the two leaves it for
    # the next driver to apply, never to repeat).
    target_percent: int = 0
    applied: bool = False
    # The table revision the rollout last wrote: a table at another revision was changed
    # by someone else (fencing: the rollout does not overwrite it).
    revision: int = 0
    # Before the rollout: the table's shadow, put back at the end.
    shadow_before: dict[str, Any] | None = None
    approved_by: str = ""
    # A promote waiting for a second subject: who asked and why.
    promote_by: str = ""
    promote_reason: str = ""
    last: dict[str, Any] | None = None  # the last evaluation (`Verdict.to_json`)
    events: tuple[Event, ...] = ()
    driver: str = ""  # the replica that last drove it
    updated_at: float = 0.0

    @property
    def parsed_plan(self) -> Plan:
        return Plan.model_validate(self.plan)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Rollout:
        fields = {**doc, "events": tuple(Event(**{**e, "gates": tuple(e.get("gates", ()))})
                                         for e in doc.get("events", ()))}
        return cls(**fields)


MAX_EVENTS = 500


def with_event(rollout: Rollout, event: Event, **changes: Any) -> Rollout:
    """``rollout`` changed, with ``event`` appended (the oldest dropped past MAX_EVENTS)."""
    return dataclasses.replace(rollout, **changes,
                               events=(*rollout.events, event)[-MAX_EVENTS:])


def approval(rollout: Rollout, who: str) -> str:
    """What ``who`` approving ``rollout`` would approve (start or promote); Forbidden if
    ``who`` asked for it, Conflict if nothing waits."""
    if rollout.state == "awaiting_approval":
        asked_by, what = rollout.started_by, "start"
    elif rollout.promote_by:
        asked_by, what = rollout.promote_by, "promote"
    else:
        raise Conflict(f"rollout {rollout.id} of '{rollout.model}' is {rollout.state} with "
                       "nothing waiting for approval")
    if who == asked_by:
        raise Forbidden(f"four-eyes: '{who}' asked for this rollout {what} of "
                        f"'{rollout.model}' and cannot approve it; a second subject with "
                        f"{APPROVE_SCOPE} must")
    return what


def desired(rollout: Rollout) -> tuple[dict[str, int], dict[str, Any] | None]:
    """The weights and shadow the table is to hold now: the candidate mirrored while the
    rollout runs and the stable arm still takes traffic, else the shadow of before."""
    percent = rollout.target_percent
    mirrored = rollout.state in ("running", "paused") and percent < 100
    return {rollout.stable: 100 - percent, rollout.candidate: percent}, \
        mirror(rollout, rollout.parsed_plan) if mirrored else rollout.shadow_before


def mirror(rollout: Rollout, plan: Plan) -> dict[str, Any]:
    """The shadow a rollout keeps on the candidate while the stable arm takes traffic."""
    return {"backend": rollout.candidate_backend, "version": rollout.candidate_version,
            "fraction": plan.shadow_fraction, "output": plan.output,
            "threshold": plan.threshold}


def rollback_percent(rollout: Rollout, plan: Plan) -> int:
    """Where a failing gate sends the candidate's traffic: 0%, or the last step passed."""
    if plan.rollback_to == "previous" and rollout.step > 0:
        return plan.steps[rollout.step - 1]
    return 0


@dataclass(frozen=True)
class TargetPick:
    stable: str
    candidate: str


def pick_targets(plan: Plan, targets: Sequence[tuple[str, str, int]]) -> TargetPick:
    """The stable and candidate targets for ``plan`` among ``targets`` (name, version,
    weight); ValueError naming the field when they cannot be told."""
    by_name = {name: (version, weight) for name, version, weight in targets}
    candidate = plan.candidate if plan.candidate in by_name else next(
        (n for n, v, _ in targets if v == plan.candidate), "")
    if not candidate:
        raise ValueError(f"candidate: the table has no target named or serving version "
                         f"{plan.candidate!r} (add one with weight 0 first)")
    if plan.stable:
        if plan.stable not in by_name:
            raise ValueError(f"stable: the table has no target {plan.stable!r}")
        stable = plan.stable
    else:
        live = [n for n, _, w in targets if w > 0 and n != candidate]
        if len(live) != 1:
            raise ValueError("stable: name the stable target (the table has "
                             f"{len(live)} others taking traffic)")
        stable = live[0]
    if stable == candidate:
        raise ValueError("stable: the stable target cannot be the candidate")
    others = [f"{n}={w}" for n, _, w in targets if w > 0 and n not in (stable, candidate)]
    if others:
        raise ValueError(f"targets: a rollout moves traffic between '{stable}' and "
                         f"'{candidate}' only; {', '.join(others)} take traffic too")
    return TargetPick(stable, candidate)
