"""An example for every `aios` command's `--help` (argparse shows it under the options)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

EXAMPLES = {
    "up": "aios up --config deploy/local/stack.yaml --log-dir var/log",
    "gateway": "aios gateway --config deploy/local/stack.yaml",
    "sidecar": "aios sidecar --config deploy/local/stack.yaml",
    "triton": "aios triton --model-repo model_repo",
    "models build": "aios models build --model-repo model_repo",
    "token": "aios token --sub ann --tenant acme --scope 'infer:claims_risk' --ttl 3600",
    "routes list": "aios routes list",
    "routes get": "aios routes get claims_risk --json",
    "routes set": "aios routes set claims_risk stable=80 canary=20 --reason 'canary healthy'",
    "routes shadow": "aios routes shadow claims_risk --version 1 --fraction 0.1 "
                     "--output risk_score --threshold 0.5",
    "routes history": "aios routes history claims_risk --limit 20",
    "routes proposals": "aios routes proposals --model claims_risk --state pending",
    "routes approve": "aios routes approve 01M8SA1Q1NSF5PJ565MCJWENYS --reason 'replay agrees'",
    "routes reject": "aios routes reject 01M8SA1Q1NSF5PJ565MCJWENYS --reason 'too early'",
    "routes rollback": "aios routes rollback claims_risk --reason 'canary errors'",
    "rollout start": "aios rollout start claims_risk --candidate 2 --steps 0,5,25,50,100 "
                     "--dwell 600 --min-requests 500 --threshold 0.35 --output risk_score "
                     "--reason 'v2: replay agrees 97%'",
    "rollout status": "aios rollout status claims_risk",
    "rollout pause": "aios rollout pause claims_risk --reason 'claims backlog review'",
    "rollout resume": "aios rollout resume claims_risk --reason 'backlog cleared'",
    "rollout abort": "aios rollout abort claims_risk --reason 'complaints from adjusters'",
    "rollout promote": "aios rollout promote claims_risk --reason 'committee signed off'",
    "rollout approve": "aios rollout approve claims_risk --reason 'replay report read'",
    "rollout reject": "aios rollout reject claims_risk --reason 'wait for month end'",
    "envoy export": "aios envoy export --out envoy.yaml --ratelimit-out ratelimit.yaml",
    "envoy serve": "aios envoy serve --xds 127.0.0.1:18000",
    "audit verify": "aios audit verify --dir var/decisions",
    "audit show": "aios audit show 01M8SA1Q1KJ45MJZ4ASCTBM0AC",
    "audit search": "aios audit search --key CLM-2026-00028 --since 2026-12-01",
    "audit export": "aios audit export --from 2026-11-01 --to 2026-12-01 --format parquet "
                    "--out november.parquet",
    "audit prove": "aios audit prove 01M8SA1Q1KJ45MJZ4ASCTBM0AC --out proof.json",
    "audit check-proof": "aios audit check-proof proof.json "
                         "--public-key var/audit-signing.pub.pem",
    "audit keygen": "aios audit keygen --private var/audit-signing.pem "
                    "--public var/audit-signing.pub.pem",
    "replay": "aios replay --model claims_risk --candidate 2 --from 2026-11-01 "
              "--to 2026-12-01 --out results/replay",
    "review list": "aios review list --state pending --gate unsure",
    "review show": "aios review show 01M8SA1Q1NSF5PJ565MCJWENYS",
    "review claim": "aios review claim 01M8SA1Q1NSF5PJ565MCJWENYS --lease-s 900",
    "review release": "aios review release 01M8SA1Q1NSF5PJ565MCJWENYS",
    "review decide": "aios review decide 01M8SA1Q1NSF5PJ565MCJWENYS override "
                     "--value risk_score=0.82 --reason 'repair invoice predates the accident'",
    "review stats": "aios review stats",
    "review simulate": "aios review simulate --rule 'claim_amount > 15000' --from 2026-11-01",
}


def commands(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command of ``parser`` that runs something (no subcommands of its own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Put each command's example in its `--help`; KeyError for a command without one."""
    for name, command in commands(parser):
        command.epilog = f"example:\n  {EXAMPLES[name]}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter
