"""Replay: what a candidate model version would have decided on recorded decisions.

Pure: `collect` gathers the rows of recorded decisions (inputs kept) from decision
records, and `report` compares the candidate's scores on them with the recorded ones: the
agreement of the decisions at a threshold (with its 95% Wilson interval: a rate without
its sample size says little), the confusion matrix, the score deltas' quantiles, the rows
that disagree most, and the agreement per tenant and per decile of each feature. Scoring
the rows is the caller's (`aios_cli.replay_cli`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from aios.readable import array
from proto.decision_record_pb2 import DecisionRecord

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
Z95 = 1.959963984540054


@dataclass
class Recorded:
    """The rows of the recorded decisions a replay scores again (one row per claim)."""

    decision_ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    inputs: list[NDArray[Any]] = field(default_factory=list)  # one (rows, features) block each
    scores: list[NDArray[Any]] = field(default_factory=list)  # one (rows,) block each
    skipped: dict[str, int] = field(default_factory=dict)  # why records were left out

    @property
    def x(self) -> NDArray[Any]:
        return np.concatenate(self.inputs) if self.inputs else np.zeros((0, 0), np.float32)

    @property
    def y(self) -> NDArray[Any]:
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.decision_ids)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def collect(records: Iterable[DecisionRecord], model: str, input_name: str,
            output_name: str, since_ns: int = 0, until_ns: int = 0,
            limit: int = 0) -> Recorded:
    """The rows of ``model``'s recorded decisions from ``since_ns`` to ``until_ns`` (0: no
    bound), at most ``limit`` rows (0: all). Shadow copies, replays and calls that failed
    are not decisions; a decision whose inputs were not kept (redaction hash or drop)
    cannot be replayed and is counted in ``skipped``."""
    out = Recorded()
    for record in records:
        if record.kind or record.model != model:
            continue
        if (since_ns and record.time_unix_nanos < since_ns) or \
                (until_ns and record.time_unix_nanos > until_ns):
            continue
        if record.shadow or record.outcome != "ok":
            continue
        x = next((array(t) for t in record.inputs if t.name == input_name), None)
        y = next((array(t) for t in record.outputs if t.name == output_name), None)
        if x is None or x.ndim != 2:
            out.skip("inputs not kept (redacted)")
            continue
        if y is None or y.shape[0] != x.shape[0]:
            out.skip("no recorded score")
            continue
        rows = x.shape[0]
        if limit and len(out) + rows > limit:
            rows = limit - len(out)
        out.inputs.append(x[:rows].astype(np.float32))
        out.scores.append(y.reshape(y.shape[0], -1)[:rows, 0].astype(np.float64))
        for _ in range(rows):
            out.decision_ids.append(record.decision_id)
            out.keys.append(record.business_key)
            out.tenants.append(record.tenant)
            out.versions.append(record.version)
        if limit and len(out) >= limit:
            break
    return out


def infer_body(input_name: str, output_name: str, rows: NDArray[Any]) -> bytes:
    """A KServe v2 JSON infer request for ``rows`` (FP32 values exactly as recorded)."""
    return orjson.dumps({"inputs": [{"name": input_name, "datatype": "FP32",
                                     "shape": list(rows.shape),
                                     "data": rows.astype(np.float32).ravel().tolist()}],
                         "outputs": [{"name": output_name}]})


def scores_of(body: bytes, output_name: str, rows: int) -> NDArray[Any]:
    """The first column of ``output_name`` in a JSON infer response; ValueError if the
    response has no such output for ``rows`` rows."""
    try:
        doc = orjson.loads(body)
        output = next(o for o in doc["outputs"] if o["name"] == output_name)
        scores = np.asarray(output["data"], np.float64).reshape(rows, -1)[:, 0]
    except (orjson.JSONDecodeError, KeyError, StopIteration, TypeError, ValueError) as exc:
        raise ValueError(f"the answer has no {output_name!r} for {rows} rows") from exc
    return scores


def wilson(agreed: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``agreed`` / ``n``."""
    if n == 0:
        return 0.0, 1.0
    p = agreed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _agreement(agree: NDArray[Any]) -> dict[str, Any]:
    n, agreed = int(agree.size), int(agree.sum())
    low, high = wilson(agreed, n)
    return {"rows": n, "agreed": agreed, "rate": agreed / n if n else None,
            "ci95": [low, high]}


def report(recorded: Recorded, candidate: NDArray[Any], threshold: float,
           features: Sequence[str], top: int = 10) -> dict[str, Any]:
    """How ``candidate`` (one score per recorded row) compares with the recorded scores."""
    y, c = recorded.y, np.asarray(candidate, np.float64).reshape(-1)
    if c.shape != y.shape:
        raise ValueError(f"{c.size} candidate scores for {y.size} recorded rows")
    was, now = y >= threshold, c >= threshold
    agree = was == now
    delta = c - y
    order = np.argsort(-np.abs(delta), kind="stable")[:top]
    x = recorded.x
    by_feature: dict[str, list[dict[str, Any]]] = {}
    for j, name in enumerate(features[:x.shape[1]] if x.size else ()):
        edges = np.unique(np.quantile(x[:, j], np.linspace(0, 1, 11)))
        bins = np.clip(np.searchsorted(edges, x[:, j], side="right") - 1, 0,
                       max(len(edges) - 2, 0))
        by_feature[name] = [{"low": float(edges[b]), "high": float(edges[min(b + 1,
                                                                             len(edges) - 1)]),
                             **_agreement(agree[bins == b])}
                            for b in range(max(len(edges) - 1, 1)) if (bins == b).any()]
    tenants = np.asarray(recorded.tenants)
    return {
        "rows": int(y.size), "threshold": threshold,
        "agreement": _agreement(agree),
        "confusion": {
            "recorded_below_candidate_below": int((~was & ~now).sum()),
            "recorded_below_candidate_at_or_above": int((~was & now).sum()),
            "recorded_at_or_above_candidate_below": int((was & ~now).sum()),
            "recorded_at_or_above_candidate_at_or_above": int((was & now).sum()),
        },
        "score_delta": {
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(delta, q)) if delta.size
                          else None for q in QUANTILES},
            "mean": float(delta.mean()) if delta.size else None,
            "max_abs": float(np.abs(delta).max()) if delta.size else None},
        "largest_disagreements": [
            {"decision_id": recorded.decision_ids[i], "business_key": recorded.keys[i],
             "tenant": recorded.tenants[i], "recorded": float(y[i]),
             "candidate": float(c[i]), "delta": float(delta[i]),
             "decisions_agree": bool(agree[i])} for i in order],
        "by_tenant": [{"tenant": t, **_agreement(agree[tenants == t])}
                      for t in sorted(set(recorded.tenants))],
        "by_feature_decile": by_feature,
        "skipped": dict(recorded.skipped),
    }
