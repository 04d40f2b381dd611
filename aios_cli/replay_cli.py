"""`aios replay`: score recorded decisions again with a candidate version, through a
sidecar (and so its Triton) at a bounded rate, and report how the candidate would have
decided (`aios.replay`). The calls carry `x-aios-replay: 1`: the sidecar records them as
kind "replay" and counts them under protocol "replay", never as decisions.

Reads the decision log folder itself (the config's, or --dir); writes the report as JSON,
every row as CSV and a PNG plot under --out; prints a summary for people (or the JSON with --json).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from aios.auditindex import parse_time_ns
from aios.auditlog import records
from aios.config import StackConfig
from aios.plane import REPLAY_HEADER, model_path
from aios.readable import load_names
from aios.replay import Recorded, collect, infer_body, report, scores_of
from aios_cli.audit_cli import Bar, table

DEFAULT_RATE = 500.0  # rows per second
DEFAULT_BATCH = 64
DEFAULT_THRESHOLD = 0.5


def score(url: str, model: str, version: str, input_name: str, output_name: str,
          x: NDArray[Any], batch: int, rate: float, progress: Bar) -> NDArray[Any]:
    """The candidate's scores of ``x`` (rows of features), ``batch`` rows per call, at most
    ``rate`` rows per second."""
    path = model_path(model, version, "/infer")
    out = np.zeros(x.shape[0], np.float64)
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, x.shape[0], batch):
            rows = x[start:start + batch]
            resp = client.post(path, content=infer_body(input_name, output_name, rows),
                               headers={REPLAY_HEADER: "1", "content-type": "application/json"})
            if resp.status_code != 200:
                raise RuntimeError(f"the sidecar answered {resp.status_code} for rows "
                                   f"{start}-{start + len(rows) - 1}: {resp.text[:300]}")
            out[start:start + len(rows)] = scores_of(resp.content, output_name, len(rows))
            done = start + len(rows)
            progress(done)
            ahead = done / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return out


def summary_text(doc: dict[str, Any], model: str, candidate: str) -> str:
    a = doc["agreement"]
    c = doc["confusion"]
    q = doc["score_delta"]["quantiles"]
    lines = [
        f"replay of {doc['rows']:,} recorded decisions of {model} against version {candidate}",
        f"  agreement at threshold {doc['threshold']:g}: {a['agreed']:,} of {a['rows']:,} "
        f"= {100 * (a['rate'] or 0):.2f}% (95% CI {100 * a['ci95'][0]:.2f}-"
        f"{100 * a['ci95'][1]:.2f}%)",
        "",
        table([["below", str(c["recorded_below_candidate_below"]),
                str(c["recorded_below_candidate_at_or_above"])],
               ["at or above", str(c["recorded_at_or_above_candidate_below"]),
                str(c["recorded_at_or_above_candidate_at_or_above"])]],
              ["RECORDED \\ CANDIDATE", "below", "at or above"]),
        "",
        "  score delta (candidate - recorded): " + ", ".join(
            f"{k} {v:+.4f}" for k, v in q.items() if v is not None),
        "",
        table([[t["tenant"] or "-", str(t["rows"]), f"{100 * (t['rate'] or 0):.2f}%"]
               for t in doc["by_tenant"]], ["TENANT", "ROWS", "AGREEMENT"]),
        "",
        table([[r["decision_id"], r["business_key"] or "-", f"{r['recorded']:.4f}",
                f"{r['candidate']:.4f}", f"{r['delta']:+.4f}"]
               for r in doc["largest_disagreements"][:5]],
              ["DECISION", "KEY", "RECORDED", "CANDIDATE", "DELTA"]),
    ]
    if doc["skipped"]:
        lines.append("  left out: " + ", ".join(f"{n} {why}" for why, n in
                                                doc["skipped"].items()))
    return "\n".join(lines)


def write_rows(path: Path, recorded: Recorded, candidate: NDArray[Any],
               threshold: float) -> None:
    """Every replayed row: which decision it is, the two scores, whether they agree."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["decision_id", "business_key", "tenant", "recorded_version",
                      "recorded", "candidate", "agree"])
        for i, (was, now) in enumerate(zip(recorded.y, candidate, strict=True)):
            out.writerow([recorded.decision_ids[i], recorded.keys[i], recorded.tenants[i],
                          recorded.versions[i], repr(float(was)), repr(float(now)),
                          (was >= threshold) == (now >= threshold)])


def plot(doc: dict[str, Any], recorded: Recorded, candidate: NDArray[Any], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    t = doc["threshold"]
    left.scatter(recorded.y, candidate, s=4, alpha=0.4)
    left.axvline(t, color="grey", linewidth=0.8)
    left.axhline(t, color="grey", linewidth=0.8)
    left.set_xlabel("recorded score")
    left.set_ylabel("candidate score")
    left.set_title(f"agreement {100 * (doc['agreement']['rate'] or 0):.2f}% at {t:g}")
    right.hist(candidate - recorded.y, bins=60)
    right.set_xlabel("candidate - recorded")
    right.set_ylabel("rows")
    right.set_title("score deltas")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_replay(args: argparse.Namespace, config: StackConfig) -> int:
    try:
        since = parse_time_ns(args.since, "--from") or 0
        until = parse_time_ns(args.until, "--to") or 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = load_names(args.model_repo or config.sidecar.parity.model_repository)
    meaning = names.get((args.model, args.candidate))
    if meaning is None:
        print(f"error: no profile.json for {args.model} version {args.candidate} in the "
              "model repository (--model-repo): its input, output and features are read "
              "there", file=sys.stderr)
        return 2
    directory = args.dir or config.sidecar.decision_log.directory
    recorded = collect(records(directory), args.model, meaning.input, meaning.output, since,
                       until, args.limit)
    if not len(recorded):
        print(f"no recorded decisions of {args.model} to replay in {directory}"
              + (f" ({recorded.skipped})" if recorded.skipped else ""), file=sys.stderr)
        return 1
    url = args.url or f"http://{config.sidecar.server.host}:{config.sidecar.server.http_port}"
    bar = Bar("replaying", total=len(recorded), unit="rows")
    try:
        candidate = score(url, args.model, args.candidate, meaning.input, meaning.output,
                          recorded.x, args.batch, args.rate, bar)
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    doc = {"model": args.model, "candidate": args.candidate,
           **report(recorded, candidate, args.threshold,
                    [name for name, _ in meaning.features], args.top)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay.json").write_text(json.dumps(doc, indent=2))
    write_rows(args.out / "replay_rows.csv", recorded, candidate, args.threshold)
    plot(doc, recorded, candidate, args.out / "replay.png",
         f"{args.model}: version {args.candidate} on {len(recorded):,} recorded decisions")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(summary_text(doc, args.model, args.candidate))
        print(f"\nreport: {args.out / 'replay.json'}, every row: "
              f"{args.out / 'replay_rows.csv'}, plot: {args.out / 'replay.png'}")
    return 0


def add_replay_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `aios replay` to the CLI."""
    replay = sub.add_parser("replay", parents=[common],
                            help="score recorded decisions with a candidate version and "
                                 "report how it would have decided",
                            description="score recorded decisions with a candidate version "
                                        "and report how it would have decided")
    replay.set_defaults(handler=cmd_replay)
    replay.add_argument("--model", required=True)
    replay.add_argument("--candidate", required=True, help="the version to replay against")
    replay.add_argument("--from", dest="since", help="recorded at or after (ISO 8601)")
    replay.add_argument("--to", dest="until", help="recorded at or before (ISO 8601)")
    replay.add_argument("--dir", type=Path, help="the decision log (default: the config's)")
    replay.add_argument("--model-repo", type=Path,
                        help="where the candidate's profile.json is (default: the config's)")
    replay.add_argument("--url", help="the sidecar's REST URL (default: the config's)")
    replay.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"decision threshold on the score (default {DEFAULT_THRESHOLD})")
    replay.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help=f"rows per second at most (default {DEFAULT_RATE:g})")
    replay.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"rows per call (default {DEFAULT_BATCH})")
    replay.add_argument("--limit", type=int, default=0, help="at most this many rows")
    replay.add_argument("--top", type=int, default=10,
                        help="how many of the largest disagreements to list")
    replay.add_argument("--out", type=Path, default=Path("results/replay"),
                        help="where replay.json and replay.png go")
    replay.add_argument("--json", action="store_true", help="the report as JSON")
