"""`aios review …`: the review queue from the command line (the gateway's REST admin
API), and `simulate`, which reads the decision log itself."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from aios.config import ReviewGateConfig, StackConfig
from aios_cli.audit_cli import Bar, table
from aios_cli.routes_cli import AdminError, admin_call, admin_client
from aios_cli.tokens import mint_token

SCOPES = "review:read review:decide review:all-tenants"


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")


def _age(ns: int, now_ns: int) -> str:
    seconds = max(0, (now_ns - ns) // 1_000_000_000)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        flat = [_short(v) for v in value[:4]]
        return "[" + ", ".join(flat) + (" …" if len(value) > 4 else "") + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def listing_text(doc: dict[str, Any], now_ns: int) -> str:
    rows = [[r["id"], r["state"] + (" (overdue)" if r["overdue"] else ""), r["gate"],
             str(r["priority"]), _age(r["queued_ns"], now_ns), r["model"] + " v" + r["version"],
             r["business_key"] or "-", _short(r["outputs"]), r["claimed_by"] or "-"]
            for r in doc["reviews"]]
    if not rows:
        return "no reviews match"
    return table(rows, ["REVIEW", "STATE", "GATE", "PRIO", "AGE", "MODEL", "KEY",
                        "MODEL SAID", "CLAIMED BY"]) + f"\n{doc['count']} review(s)"


def item_text(r: dict[str, Any]) -> str:
    lines = [
        f"review {r['id']}  ({r['state']}{', overdue' if r['overdue'] else ''})",
        f"  decision      {r['decision_id']}  (aios audit show {r['decision_id']})",
        f"  model         {r['model']} version {r['version']}",
        f"  business key  {r['business_key'] or '-'}   tenant {r['tenant'] or '-'}",
        f"  gate          {r['gate']}  (priority {r['priority']})",
        f"  queued        {_when(r['queued_ns'])}   due {_when(r['due_ns'])}",
        f"  model said    {_short(r['outputs'])}",
    ]
    for tensor in r["inputs"].values():
        for i, row in enumerate(tensor.get("rows", [])):
            if len(tensor["rows"]) > 1:
                lines.append(f"  row {i + 1}")
            for name, cell in row.items():
                shown = f"({cell['redacted']})" if "redacted" in cell else \
                    f"{_short(cell['value'])} {cell.get('unit', '')}".rstrip()
                lines.append(f"    {name:<24}{shown}")
        if "values" in tensor:
            lines.append(f"  input {tensor['name']}  {_short(tensor['values'])}")
    if r["state"] == "claimed":
        lines.append(f"  claimed by    {r['claimed_by']} until {_when(r['lease_until_ns'])}")
    if r["state"] == "decided":
        lines += [f"  decided       {r['action']} by {r['decided_by']} at "
                  f"{_when(r['decided_ns'])}: {r['reason'] or '-'}",
                  f"  final         {_short(r['final'])}",
                  f"  in the chain  {'yes' if r['chained'] else 'not yet'}"]
    lines.append("  history")
    for step in r["history"]:
        lines.append(f"    {_when(step['at_ns'])}  {step['action']:<10} {step['who']}"
                     + (f": {step['reason']}" if step["reason"] else ""))
    return "\n".join(lines)


def stats_text(doc: dict[str, Any]) -> str:
    gates = sorted(set(doc["open"]) | set(doc["oldest_open_s"]))
    rows = [[g, str(doc["open"].get(g, 0)), f"{doc['oldest_open_s'].get(g, 0):.0f}s"]
            for g in gates]
    out = [table(rows, ["GATE", "OPEN", "OLDEST"]) if rows else "queue empty"]
    decided = doc["decided"]
    out.append("decided: " + (", ".join(f"{a} {n}" for a, n in decided.items()) or "none"))
    rate = doc["override_rate"]
    out.append("override rate: " + ("-" if rate is None else f"{rate:.1%}"))
    ttd = doc["time_to_decision_s"]
    if ttd:
        out.append(f"time to decision: p50 {ttd['p50']:.0f}s, p95 {ttd['p95']:.0f}s "
                   f"(last {ttd['decisions']})")
    return "\n".join(out)


def run_review(args: argparse.Namespace, config: StackConfig) -> int:
    """Run one `aios review` subcommand."""
    if args.review_command == "simulate":
        return cmd_simulate(args, config)
    server = config.gateway.server
    url = args.url or f"http://{server.host}:{server.http_port}"
    token = args.token or mint_token(config.gateway.auth, args.as_, "ops", SCOPES, 300)
    command = args.review_command
    try:
        if command == "list":
            query = "&".join(f"{k}={v}" for k, v in (("state", args.state), ("gate", args.gate),
                                                      ("model", args.model),
                                                      ("limit", args.limit)) if v)
            doc = admin_call(url, token, "GET", "/admin/reviews" + (f"?{query}" if query
                                                                     else ""))
        elif command == "show":
            doc = admin_call(url, token, "GET", f"/admin/reviews/{args.id}")
        elif command == "claim":
            body = {"lease_s": args.lease_s} if args.lease_s else None
            doc = admin_call(url, token, "POST", f"/admin/reviews/{args.id}/claim", body)
        elif command == "release":
            doc = admin_call(url, token, "POST", f"/admin/reviews/{args.id}/release")
        elif command == "decide":
            decision: dict[str, Any] = {"action": args.action, "reason": args.reason}
            if args.value:
                decision["value"] = parse_value(args.value)
            doc = admin_call(url, token, "POST", f"/admin/reviews/{args.id}/decision",
                             decision)
        else:
            doc = admin_call(url, token, "GET", "/admin/reviews/stats")
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    now = int(datetime.datetime.now(datetime.UTC).timestamp() * 1e9)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif command == "list":
        print(listing_text(doc, now))
    elif command == "stats":
        print(stats_text(doc))
    else:
        print(item_text(doc))
    return 0


def parse_value(pairs: list[str]) -> dict[str, list[float]]:
    """``["risk_score=0.9"]`` → ``{"risk_score": [0.9]}`` (commas for several rows)."""
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        try:
            out[name] = [float(v) for v in text.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name:
            raise AdminError(f"--value is OUTPUT=NUMBER[,NUMBER…], got {pair!r}")
    return out


def _gates(args: argparse.Namespace, config: StackConfig) -> list[Any]:
    """The gates to simulate: those given on the command line, else the model's
    configured ones (``--gate NAME`` picks some)."""
    given: list[dict[str, Any]] = []
    if args.band:
        output, low, high = [*args.band.split(":"), "", ""][:3]
        given.append({"name": "band", "band": {"output": output, "low": low, "high": high}})
    if args.rule:
        given.append({"name": "rule", "rule": args.rule})
    if args.flags:
        given.append({"name": "flags", "flags": args.flags.split(",")})
    if given:
        return [ReviewGateConfig.model_validate(g).gate() for g in given]
    configured = config.sidecar.review.models.get(args.model)
    gates = [g for g in configured.gates if not args.gate or g.name in args.gate] \
        if configured else []
    if not gates:
        raise ValueError(f"no gates to simulate: give --band, --rule or --flags, or configure "
                         f"sidecar.review.models.{args.model}.gates")
    return [g.gate() for g in gates]


def cmd_simulate(args: argparse.Namespace, config: StackConfig) -> int:
    from pydantic import ValidationError

    from aios.auditindex import parse_time_ns
    from aios.auditlog import records
    from aios.readable import load_names
    from aios.reviewsim import simulate

    try:
        gates = _gates(args, config)
        since = parse_time_ns(args.from_, "--from")
        until = parse_time_ns(args.to, "--to")
    except (ValueError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    directory = args.dir or config.sidecar.decision_log.directory
    if not directory.is_dir():
        print(f"error: no decision log at {directory} (give --dir)", file=sys.stderr)
        return 1
    names = load_names(args.model_repo or config.sidecar.parity.model_repository)
    bar = Bar("reading")

    def counted() -> Any:
        for i, record in enumerate(records(directory), 1):
            if i % 5000 == 0:
                bar(i)
            yield record

    try:
        result = simulate(counted(), args.model, gates, names, since, until)
    finally:
        bar.close()
    doc = {"model": args.model, "gates": [g.name for g in gates], **result.to_json()}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.model}: {doc['decisions']:,} decisions read in {directory}")
    rows = [[gate, f"{n:,}", f"{n / doc['decisions']:.2%}" if doc["decisions"] else "-"]
            for gate, n in doc["by_gate"].items()]
    if rows:
        print(table(rows, ["GATE", "WOULD QUEUE", "SHARE"]))
    print(f"would send {doc['would_queue']:,} to review ({doc['share']:.2%}); the live gates "
          f"sent {doc['queued_live']:,} ({doc['live_share']:.2%})")
    if doc["unreadable"]:
        print(f"note: {doc['unreadable']:,} decisions had a feature the rules read redacted")
    return 0


def add_review_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `aios review …` to the CLI."""
    review = sub.add_parser("review", help="the human review queue",
                            description="the human review queue (admin API), and gate "
                                        "simulation over the decision log")
    review.set_defaults(handler=run_review)
    rsub = review.add_subparsers(dest="review_command", required=True, metavar="COMMAND")
    client = admin_client(common, "review:read/review:decide")
    client.add_argument("--as", dest="as_", default="reviewer",
                        help="subject of the dev token (default: reviewer)")
    client.add_argument("--json", action="store_true", help="the API's JSON answer")
    listing = rsub.add_parser("list", parents=[client], help="review items, most urgent first")
    listing.add_argument("--state", choices=("pending", "claimed", "decided"))
    listing.add_argument("--gate")
    listing.add_argument("--model")
    listing.add_argument("--limit", type=int)
    for name, text in (("show", "one review item (or the review of a decision id)"),
                       ("release", "give a claimed item back")):
        rsub.add_parser(name, parents=[client], help=text).add_argument("id")
    claim = rsub.add_parser("claim", parents=[client], help="take an item for review")
    claim.add_argument("id")
    claim.add_argument("--lease-s", type=float, help="how long it is yours (default: config)")
    decide = rsub.add_parser("decide", parents=[client], help="approve, override or escalate")
    decide.add_argument("id")
    decide.add_argument("action", choices=("approve", "override", "escalate"))
    decide.add_argument("--reason", default="", help="why (needed to override or escalate)")
    decide.add_argument("--value", action="append", metavar="OUTPUT=NUMBER[,…]",
                        help="override: the reviewer's outputs, e.g. risk_score=0.9")
    rsub.add_parser("stats", parents=[client], help="queue depth, age, override rate")
    sim = rsub.add_parser("simulate", parents=[common],
                          help="what share of logged decisions gates would have queued")
    sim.add_argument("--model", default="claims_risk")
    sim.add_argument("--gate", action="append", help="a configured gate's name (repeatable)")
    sim.add_argument("--band", metavar="OUTPUT:LOW:HIGH", help="an ad-hoc band gate")
    sim.add_argument("--rule", help="an ad-hoc rule, e.g. 'claim_amount > 10000'")
    sim.add_argument("--flags", metavar="PREFIX,…", help="an ad-hoc parity-flag gate")
    sim.add_argument("--from", dest="from_", help="ISO 8601 start (UTC unless it says)")
    sim.add_argument("--to", help="ISO 8601 end")
    sim.add_argument("--dir", type=Path,
                     help="decision log folder (default: the config's)")
    sim.add_argument("--model-repo", type=Path)
    sim.add_argument("--json", action="store_true")
