"""`aios rollout …`: governed rollouts from the command line (the REST admin API)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from aios.config import StackConfig
from aios_cli.audit_cli import table
from aios_cli.routes_cli import AdminError, admin_call, admin_client, ago
from aios_cli.tokens import mint_token

ACTIONS = {"pause": "hold the current step (the gates stop moving it)",
           "resume": "apply the current step again and restart its window",
           "abort": "send all traffic back to the stable target at once (no approval)",
           "promote": "go to 100% now, whatever the gates say (four-eyes: needs approval)",
           "approve": "approve another subject's rollout start or promote (routes:approve)",
           "reject": "reject a rollout start or promote waiting for approval (routes:approve)"}


def _figure(gate: dict[str, Any]) -> str:
    value = "-" if gate["value"] is None else f"{gate['value']:.4g}"
    bound = "" if gate["bound"] is None else f" / {gate['bound']:g}"
    return value + bound


def status_text(rollout: dict[str, Any], now: float) -> str:
    """One rollout for people: where it stands, its steps, each gate, its last events."""
    plan = rollout["plan"]
    steps = " → ".join(f"[{p}%]" if i == rollout["step"] else f"{p}%"
                       for i, p in enumerate(plan["steps"]))
    lines = [f"rollout {rollout['id']} of {rollout['model']}: {rollout['state'].upper()}",
             f"  {rollout['stable']} → {rollout['candidate']} (version "
             f"{rollout['candidate_version']}), candidate at {rollout['target_percent']}%",
             f"  steps {steps}; dwell {plan['dwell_s']:g} s, at least {plan['min_requests']} "
             f"requests per step",
             f"  started by {rollout['started_by']} {ago(rollout['at'], now)}"
             + (f", approved by {rollout['approved_by']}" if rollout["approved_by"] else "")]
    if rollout["promote_by"]:
        lines.append(f"  promote asked by {rollout['promote_by']}, waiting for approval")
    last = rollout.get("last")
    if last:
        lines += ["", f"  gates ({last['why']}):"]
        rows = [[g["gate"], {True: "pass", False: "FAIL", None: "…"}[g["passed"]],
                 _figure(g), str(g["n"]), g["detail"]] for g in last["gates"]]
        lines += ["  " + line for line in table(
            rows, ["GATE", "STATE", "VALUE / BOUND", "N", "DETAIL"]).splitlines()]
    events = [[ago(e["at"], now), e["what"], e["who"], f"{e['step']} ({e['percent']}%)",
               e["note"] or "-"] for e in rollout["events"][-10:]]
    lines += ["", *("  " + line for line in table(
        events, ["WHEN", "EVENT", "WHO", "STEP", "NOTE"]).splitlines())]
    return "\n".join(lines)


def list_text(rollouts: list[dict[str, Any]], now: float) -> str:
    rows = [[r["model"], r["id"], r["state"], f"{r['step']} ({r['target_percent']}%)",
             f"{r['stable']} → {r['candidate']}", r["started_by"], ago(r["at"], now)]
            for r in rollouts]
    return table(rows, ["MODEL", "ROLLOUT", "STATE", "STEP", "TRAFFIC", "BY", "STARTED"]) \
        if rows else "no rollouts"


def plan_of(args: argparse.Namespace) -> dict[str, Any]:
    """The plan the flags describe (only what they set: the gateway fills in defaults)."""
    plan: dict[str, Any] = {"candidate": args.candidate, "reason": args.reason}
    for key in ("stable", "dwell_s", "min_requests", "max_step_s", "rollback_to",
                "shadow_fraction", "output", "threshold"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    if args.steps is not None:
        try:
            plan["steps"] = [int(s) for s in args.steps.split(",")]
        except ValueError as exc:
            raise AdminError(f"--steps: comma-separated percentages, got {args.steps!r}") \
                from exc
    gates = {k: getattr(args, k) for k in ("max_error_rate", "max_error_rate_increase",
                                           "max_p99_ms", "min_agreement")
             if getattr(args, k) is not None}
    gates.update({k: False for k in ("drift", "parity") if getattr(args, f"no_{k}")})
    if gates:
        plan["gates"] = gates
    return plan


def run_rollout(args: argparse.Namespace, config: StackConfig) -> int:
    """Run one `aios rollout` subcommand; a readable answer (``--json``: the API's)."""
    server = config.gateway.server
    url = args.url or f"http://{server.host}:{server.http_port}"
    token = args.token or mint_token(config.gateway.auth, "aios-cli", "ops",
                                     "routes:read routes:write routes:approve", 300)
    command = args.rollout_command
    try:
        if command == "start":
            result = admin_call(url, token, "POST", f"/admin/rollouts/{args.model}",
                                plan_of(args))
        elif command == "status" and args.model is None:
            result = admin_call(url, token, "GET", "/admin/rollouts")
        elif command == "status":
            result = admin_call(url, token, "GET", f"/admin/rollouts/{args.model}")
        else:
            result = admin_call(url, token, "POST", f"/admin/rollouts/{args.model}/{command}",
                                {"reason": args.reason})
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif "rollouts" in result:
        print(list_text(result["rollouts"], time.time()))
    else:
        print(status_text(result, time.time()))
        if "note" in result:
            print(result["note"])
    return 0


def add_rollout_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `aios rollout …` to the CLI."""
    rollout = sub.add_parser("rollout", help="governed rollouts of a new model version",
                             description="governed rollouts of a new model version: steps "
                                         "gated on errors, latency, agreement, drift, parity")
    rollout.set_defaults(handler=run_rollout)
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    client = admin_client(common, "routes:read/routes:write/routes:approve")
    client.add_argument("--json", action="store_true", help="the API's JSON answer")
    start = rsub.add_parser("start", parents=[client], help="start rolling out a candidate")
    start.add_argument("model")
    start.add_argument("--candidate", required=True,
                       help="the candidate target, by name or by the version it serves")
    start.add_argument("--stable", help="the stable target (default: the one serving now)")
    start.add_argument("--steps", help="candidate percent per step, e.g. 0,5,25,50,100 "
                                       "(0: shadow only; the default)")
    start.add_argument("--dwell", dest="dwell_s", type=float, help="seconds per step at least")
    start.add_argument("--min-requests", type=int, help="requests per step at least")
    start.add_argument("--max-step", dest="max_step_s", type=float,
                       help="seconds a step may stay undecided before it rolls back")
    start.add_argument("--rollback-to", choices=("zero", "previous"))
    start.add_argument("--shadow-fraction", type=float,
                       help="share of the stable arm's traffic mirrored to the candidate")
    start.add_argument("--output", help="output the decision is taken on")
    start.add_argument("--threshold", type=float, help="decision threshold (output >= it)")
    start.add_argument("--max-error-rate", type=float)
    start.add_argument("--max-error-rate-increase", type=float)
    start.add_argument("--max-p99-ms", type=float)
    start.add_argument("--min-agreement", type=float)
    start.add_argument("--no-drift", action="store_true", help="no drift gate")
    start.add_argument("--no-parity", action="store_true", help="no golden parity gate")
    start.add_argument("--reason", default="", help="why (kept in the history)")
    status = rsub.add_parser("status", parents=[client],
                             help="a model's rollout (or every model's, without MODEL)")
    status.add_argument("model", nargs="?")
    for name, text in ACTIONS.items():
        act = rsub.add_parser(name, parents=[client], help=text)
        act.add_argument("model")
        act.add_argument("--reason", default="", help="why (kept in the history)")
