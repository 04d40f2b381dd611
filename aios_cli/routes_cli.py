"""`aios routes …`: the routing admin API from the command line (REST, stdlib only)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from aios.config import StackConfig
from aios_cli.audit_cli import table
from aios_cli.tokens import mint_token

TIMEOUT_S = 10.0


class AdminError(Exception):
    """The gateway refused the call; the message is its error."""


def admin_call(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise AdminError(f"{exc.code}: {message}") from exc
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach the gateway at {url}: {exc.reason}") from exc


def parse_weights(pairs: list[str]) -> dict[str, int]:
    """``["stable=90", "canary=10"]`` → ``{"stable": 90, "canary": 10}``."""
    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not re.fullmatch(r"-?[0-9]+", value):
            raise AdminError(f"weights are NAME=INTEGER, got {pair!r}")
        weights[name] = int(value)
    return weights


def ago(at: float, now: float) -> str:
    """How long before ``now`` ``at`` was, for people ("3m ago")."""
    seconds = max(0, int(now - at))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"
    return f"{seconds // 86400}d ago"


def _shadow(shadow: dict[str, Any] | None) -> str:
    if not shadow:
        return "-"
    return (f"{shadow.get('backend')}/{shadow.get('model') or '-'} v{shadow.get('version') or '-'}"
            f" {shadow.get('fraction', 0):.0%}")


def tables_text(routes: list[dict[str, Any]]) -> str:
    """Routing tables as one aligned table: a row per target."""
    rows = [[r["model"], str(r["revision"]), name, t["backend"], t.get("version") or "-",
             str(t["weight"]), "EJECTED" if t.get("ejected") else "-", r["sticky"],
             _shadow(r.get("shadow"))]
            for r in routes for name, t in r["targets"].items()]
    return table(rows, ["MODEL", "REV", "TARGET", "BACKEND", "VERSION", "WEIGHT", "STATE",
                        "STICKY", "SHADOW"]) if rows else "no routing tables"


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """What a change did, briefly: weights moved, targets added or removed, shadow."""
    if before is None:
        return "created: " + ", ".join(f"{n}={t['weight']}" for n, t in after["targets"].items())
    parts = []
    old, new = before.get("targets", {}), after.get("targets", {})
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            parts.append(f"-{name}")
        elif name not in old:
            parts.append(f"+{name}={new[name]['weight']}")
        else:
            for key in ("weight", "version", "backend"):
                if old[name].get(key) != new[name].get(key):
                    parts.append(f"{name} {key} {old[name].get(key)}->{new[name].get(key)}")
    if before.get("shadow") != after.get("shadow"):
        parts.append(f"shadow {_shadow(before.get('shadow'))}->{_shadow(after.get('shadow'))}")
    if before.get("sticky") != after.get("sticky"):
        parts.append(f"sticky {before.get('sticky')}->{after.get('sticky')}")
    return ", ".join(parts) or "no change"


def history_text(changes: list[dict[str, Any]], now: float) -> str:
    rows = [[ago(c["at"], now), c["model"], str(c["revision"]), (c["who"] or "-") + (
        f", approved by {c['approved_by']}" if c.get("approved_by") else ""), c["action"],
             diff(c["before"], c["after"]), c["reason"] or "-"] for c in changes]
    return table(rows, ["WHEN", "MODEL", "REV", "WHO", "ACTION", "CHANGE", "REASON"]) \
        if rows else "no changes"


def proposals_text(proposals: list[dict[str, Any]], now: float) -> str:
    rows = [[p["id"], ago(p["at"], now), p["model"], p["action"], p["proposer"],
             p["state"] + (f" by {p['resolver']}" if p["resolver"] else ""),
             p["reason"] or "-", p["resolution"] or p["error"] or "-"] for p in proposals]
    return table(rows, ["PROPOSAL", "WHEN", "MODEL", "ACTION", "PROPOSER", "STATE", "REASON",
                        "ANSWER"]) if rows else "no proposals"


def run_routes(args: argparse.Namespace, config: StackConfig) -> int:
    """Run one `aios routes` subcommand; print the answer as a table (``--json``: the
    gateway's JSON answer)."""
    server = config.gateway.server
    url = args.url or f"http://{server.host}:{server.http_port}"
    token = args.token or mint_token(config.gateway.auth, "aios-cli", "ops",
                                     "routes:read routes:write routes:approve", 300)
    try:
        if args.routes_command == "list":
            result = admin_call(url, token, "GET", "/admin/routes")
        elif args.routes_command == "proposals":
            query = "&".join(f"{k}={v}" for k, v in (("model", args.model),
                                                     ("state", args.state)) if v)
            result = admin_call(url, token, "GET", f"/admin/proposals?{query}")
        elif args.routes_command in ("approve", "reject"):
            result = admin_call(url, token, "POST",
                                f"/admin/proposals/{args.id}/{args.routes_command}",
                                {"reason": args.reason})
        elif args.routes_command == "rollback":
            result = admin_call(url, token, "POST", f"/admin/routes/{args.model}/rollback",
                                {"reason": args.reason})
        elif args.routes_command == "get":
            result = admin_call(url, token, "GET", f"/admin/routes/{args.model}")
        elif args.routes_command == "history":
            path = f"/admin/routes/{args.model}/history" if args.model else "/admin/history"
            result = admin_call(url, token, "GET", f"{path}?limit={args.limit}")
        else:
            current = admin_call(url, token, "GET", f"/admin/routes/{args.model}")
            base = {"base_revision": current["revision"], "reason": args.reason}
            if args.routes_command == "set":
                result = admin_call(url, token, "PUT", f"/admin/routes/{args.model}/weights",
                               {**base, "weights": parse_weights(args.weights)})
            else:
                shadow = None if args.clear else {
                    "backend": args.backend, "version": args.version,
                    "fraction": args.fraction, "output": args.output,
                    "threshold": args.threshold}
                result = admin_call(url, token, "PUT", f"/admin/routes/{args.model}/shadow",
                               {**base, "shadow": shadow})
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.routes_command == "history":
        print(history_text(result["changes"], time.time()))
    elif args.routes_command == "proposals":
        print(proposals_text(result["proposals"], time.time()))
    elif "proposal" in result:  # proposed, approved (and applied) or rejected
        print(proposals_text([result["proposal"]], time.time()))
        if "note" in result:
            print(result["note"])
        if "route" in result:
            print(tables_text([result["route"]]))
    else:
        print(tables_text(result["routes"] if args.routes_command == "list" else [result]))
    return 0


def admin_client(common: argparse.ArgumentParser, scopes: str) -> argparse.ArgumentParser:
    """The options of a command that calls the gateway's admin API."""
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument("--url", help="gateway REST URL (default: from the config)")
    client.add_argument("--token", help=f"bearer token with {scopes} (default: $AIOS_TOKEN, "
                        "else a dev token from the config's secret)")
    return client


def add_routes_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `aios routes …` to the CLI."""
    routes = sub.add_parser("routes", help="read and change routing tables (admin API)",
                            description="read and change routing tables (admin API)")
    routes.set_defaults(handler=run_routes)
    rsub = routes.add_subparsers(dest="routes_command", required=True, metavar="COMMAND")
    client = admin_client(common, "routes:read/routes:write")
    client.add_argument("--json", action="store_true", help="the API's JSON answer")
    rsub.add_parser("list", parents=[client], help="every model's routing table")
    get = rsub.add_parser("get", parents=[client], help="one model's routing table")
    get.add_argument("model")
    set_ = rsub.add_parser("set", parents=[client], help="set target weights, e.g. "
                           "`aios routes set claims_risk stable=90 canary=10`")
    set_.add_argument("model")
    set_.add_argument("weights", nargs="+", metavar="TARGET=WEIGHT")
    set_.add_argument("--reason", default="", help="why (kept in the history)")
    shadow = rsub.add_parser("shadow", parents=[client], help="set or clear a shadow target")
    shadow.add_argument("model")
    shadow.add_argument("--backend", default="local")
    shadow.add_argument("--version", default="")
    shadow.add_argument("--fraction", type=float, default=0.1)
    shadow.add_argument("--output", default="", help="output to compare decisions on")
    shadow.add_argument("--threshold", type=float, help="decision threshold")
    shadow.add_argument("--clear", action="store_true", help="remove the shadow")
    shadow.add_argument("--reason", default="")
    proposals = rsub.add_parser("proposals", parents=[client],
                                help="four-eyes changes waiting for (or given) an answer")
    proposals.add_argument("--model")
    proposals.add_argument("--state", choices=("pending", "approved", "applied", "rejected",
                                               "failed"))
    for name, text in (("approve", "approve another subject's change (routes:approve)"),
                       ("reject", "reject a proposed change (routes:approve)")):
        resolve = rsub.add_parser(name, parents=[client], help=text)
        resolve.add_argument("id")
        resolve.add_argument("--reason", default="", help="why (kept with the change)")
    rollback = rsub.add_parser("rollback", parents=[client],
                               help="undo a model's last weights or shadow change at once "
                                    "(no approval: an emergency)")
    rollback.add_argument("model")
    rollback.add_argument("--reason", default="")
    history = rsub.add_parser("history", parents=[client], help="recorded changes, newest first")
    history.add_argument("model", nargs="?")
    history.add_argument("--limit", type=int, default=20)
