"""A decision record as a person reads it: tensors decoded, features named with their
units from the version's profile.json. Pure functions (the profiles are read once)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from proto.decision_record_pb2 import ColumnRedaction, DecisionRecord, TensorRecord

_NUMPY = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT8": "<i1", "INT16": "<i2",
          "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4",
          "UINT64": "<u8", "BOOL": "?"}


@dataclass(frozen=True)
class Names:
    """What a model version's tensors mean."""

    input: str
    features: tuple[tuple[str, str], ...]  # (name, unit) per column
    output: str


def load_names(repo: Path) -> dict[tuple[str, str], Names]:
    """The feature names of every version in ``repo`` that has a profile.json."""
    out = {}
    for path in sorted(repo.glob("*/[0-9]*/profile.json")):
        try:
            doc = json.loads(path.read_text())
            out[(str(doc["model"]), path.parent.name)] = Names(
                str(doc["input"]),
                tuple((str(f["name"]), str(f.get("unit", ""))) for f in doc["features"]),
                str(doc["output"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a profile we cannot read: its tensors are shown unnamed
    return out


def array(tensor: TensorRecord) -> NDArray[Any] | None:
    """A kept tensor's values as an array of its shape; None if hashed or dropped."""
    if tensor.redaction != "keep" or tensor.datatype not in _NUMPY:
        return None
    flat = np.frombuffer(tensor.contents, _NUMPY[tensor.datatype])
    shape = list(tensor.shape)
    if int(np.prod(shape)) != flat.size:
        return None
    return flat.reshape(shape)


def values(tensor: TensorRecord) -> list[Any] | None:
    """A kept tensor's values (nested by its shape); None if hashed or dropped."""
    kept = array(tensor)
    if kept is None:
        return None
    out: list[Any] = kept.tolist()
    return out


def _tensor(tensor: TensorRecord, columns: tuple[tuple[str, str], ...] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                           "shape": list(tensor.shape), "redaction": tensor.redaction}
    if tensor.sha256:
        doc["sha256"] = tensor.sha256.hex()
    redacted = {c.index: c for c in tensor.columns}
    if redacted:
        doc["redacted_columns"] = [{"name": c.name, "redaction": c.redaction}
                                   for c in tensor.columns]
    data = values(tensor)
    if data is None:
        return doc
    if columns and len(tensor.shape) == 2 and tensor.shape[1] == len(columns):
        doc["rows"] = [{name: _cell(v, unit, redacted.get(i))
                        for i, ((name, unit), v) in enumerate(zip(columns, row, strict=True))}
                       for row in data]
    else:
        doc["values"] = data
    return doc


def _cell(value: Any, unit: str, redacted: ColumnRedaction | None) -> dict[str, Any]:
    """One feature of one row: its value and unit, or how it was redacted (a redacted
    column's stored zeros are not its values, so they are not shown)."""
    if redacted is not None:
        out: dict[str, Any] = {"redacted": redacted.redaction}
        if redacted.digest:
            out["hmac_sha256"] = redacted.digest.hex()
        return out
    return {"value": value, "unit": unit} if unit else {"value": value}


def _time_ns(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(record: DecisionRecord) -> str:
    return _time_ns(record.time_unix_nanos)


def route_change(record: DecisionRecord) -> dict[str, Any]:
    """A routing change record (the gateway's change log) as a JSON-ready dict."""
    change = record.route_change
    return {"kind": record.kind, "sequence": record.sequence, "time": _time(record),
            "model": record.model, "revision": record.route_revision, "who": record.subject,
            "action": change.action, "reason": change.reason,
            "before": json.loads(change.before_json) if change.before_json else None,
            "after": json.loads(change.after_json) if change.after_json else None,
            "hash": record.hash.hex(), "prev_hash": record.prev_hash.hex()}


def audit_read(record: DecisionRecord) -> dict[str, Any]:
    """A read of the gateway's audit API (its access log) as a JSON-ready dict."""
    read = record.audit_read
    return {"kind": record.kind, "sequence": record.sequence, "time": _time(record),
            "who": record.subject, "action": read.action,
            "asked": json.loads(read.query_json) if read.query_json else {},
            "decision_ids": list(read.decision_ids), "results": read.results,
            "hash": record.hash.hex(), "prev_hash": record.prev_hash.hex()}


def human_review(record: DecisionRecord) -> dict[str, Any]:
    """A reviewer's decision on a decision sent to review, as a JSON-ready dict."""
    review = record.human_review
    return {"kind": record.kind, "decision_id": record.decision_id,
            "sequence": record.sequence, "time": _time(record), "reviewer": record.subject,
            "review_id": review.review_id, "gate": review.gate, "action": review.action,
            "reason": review.reason, "model": record.model, "version": record.version,
            "model_answer": json.loads(review.model_json) if review.model_json else {},
            "final": json.loads(review.final_json) if review.final_json else {},
            "queued": _time_ns(review.queued_unix_nanos),
            "hash": record.hash.hex(), "prev_hash": record.prev_hash.hex()}


def _agreement(record: DecisionRecord) -> dict[str, Any] | None:
    if not record.HasField("shadow_agreement"):
        return None
    a = record.shadow_agreement
    return {"output": a.output, "threshold": a.threshold, "decisions": a.rows,
            "agreed": a.agreed}


def readable(record: DecisionRecord, names: Mapping[tuple[str, str], Names]) -> dict[str, Any]:
    """``record`` as a JSON-ready dict a person can read."""
    if record.kind == "route_change":
        return route_change(record)
    if record.kind == "audit_read":
        return audit_read(record)
    if record.kind == "review":
        return human_review(record)
    meaning = names.get((record.model, record.version))
    return {
        "decision_id": record.decision_id, "request_id": record.request_id,
        "sequence": record.sequence, "time": _time(record),
        "business_key": record.business_key, "tenant": record.tenant,
        "subject": record.subject, "model": record.model, "version": record.version,
        "protocol": record.protocol,
        "route": {"target": record.route_target, "reason": record.route_reason,
                  "revision": record.route_revision,
                  "weights": dict(sorted(record.route_weights.items()))},
        "outcome": record.outcome, "error": record.error,
        "latency_ms": record.latency_micros / 1000, "trace_id": record.trace_id,
        "parity_flags": list(record.parity_flags), "shadow": record.shadow,
        "shadow_of": record.shadow_of,
        "shadow_agreement": _agreement(record),
        "review": {"id": record.review_id, "gate": record.review_gate}
        if record.review_id else None,
        "in_sequence": {"id": record.sequence_id, "position": record.sequence_position}
        if record.sequence_id else None,
        # A streamed request's response (a decoupled model's request has many).
        "response_index": record.response_index if record.protocol == "grpc_stream" else None,
        "inputs": [_tensor(t, meaning.features if meaning and t.name == meaning.input
                           else None) for t in record.inputs],
        "outputs": [_tensor(t, None) for t in record.outputs],
        "hash": record.hash.hex(), "prev_hash": record.prev_hash.hex(),
    }


def _number(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:.0f}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def text_block(doc: dict[str, Any]) -> str:
    """A readable document (`readable`) as lines of text."""
    if doc.get("kind") == "route_change":
        return "\n".join([
            f"routing change of {doc['model']} to revision {doc['revision']}  "
            f"(record {doc['sequence']})",
            f"  time          {doc['time']}",
            f"  who           {doc['who'] or '-'}",
            f"  action        {doc['action']}",
            f"  reason        {doc['reason'] or '-'}",
            f"  before        {json.dumps(doc['before'], sort_keys=True)}",
            f"  after         {json.dumps(doc['after'], sort_keys=True)}",
            f"  record hash   {doc['hash']}"])
    if doc.get("kind") == "audit_read":
        return "\n".join([
            f"audit read by {doc['who'] or '-'}  (record {doc['sequence']})",
            f"  time          {doc['time']}",
            f"  action        {doc['action']}",
            f"  asked         {json.dumps(doc['asked'], sort_keys=True)}",
            f"  shown         {', '.join(doc['decision_ids']) or 'nothing'} "
            f"({doc['results']} matched)",
            f"  record hash   {doc['hash']}"])
    if doc.get("kind") == "review":
        return "\n".join([
            f"review of decision {doc['decision_id']} by {doc['reviewer'] or '-'}  "
            f"(record {doc['sequence']})",
            f"  time          {doc['time']}  (queued {doc['queued']})",
            f"  review        {doc['review_id']}, gate {doc['gate']}",
            f"  model         {doc['model']} version {doc['version'] or '-'}",
            f"  decided       {doc['action']}: {doc['reason'] or '-'}",
            f"  model said    {json.dumps(doc['model_answer'], sort_keys=True)}",
            f"  final         {json.dumps(doc['final'], sort_keys=True)}",
            f"  record hash   {doc['hash']}"])
    route = doc["route"]
    weights = ", ".join(f"{k}={v}" for k, v in sorted(route["weights"].items())) or "-"
    lines = [
        f"decision {doc['decision_id'] or '-'}  (record {doc['sequence']})",
        f"  time          {doc['time']}",
        f"  request id    {doc['request_id'] or '-'}",
        f"  business key  {doc['business_key'] or '-'}",
        f"  caller        tenant {doc['tenant'] or '-'}, subject {doc['subject'] or '-'}",
        f"  model         {doc['model']} version {doc['version'] or '-'} ({doc['protocol']})",
        f"  route         target {route['target'] or '-'}, reason {route['reason'] or '-'}, "
        f"revision {route['revision']}, weights {weights}",
        f"  outcome       {doc['outcome']}" + (f": {doc['error']}" if doc["error"] else "")
        + f"  ({doc['latency_ms']:.2f} ms)",
        f"  parity flags  {', '.join(doc['parity_flags']) or 'none'}",
    ]
    if doc["shadow"]:
        lines.append(f"  shadow copy   of decision {doc['shadow_of'] or '-'} (no one acted on it)")
    if doc["in_sequence"]:
        lines.append(f"  sequence      {doc['in_sequence']['id']}, request "
                     f"{doc['in_sequence']['position']} of it")
    if doc["response_index"] is not None:
        lines.append(f"  stream        response {doc['response_index'] + 1} of its request "
                     "(the others share its decision id)")
    if doc["review"]:
        lines.append(f"  review        sent to people by gate {doc['review']['gate']} "
                     f"(review {doc['review']['id']})")
    if doc["shadow_agreement"]:
        a = doc["shadow_agreement"]
        lines.append(f"  agreement     {a['agreed']} of {a['decisions']} decision(s) as the "
                     f"primary's, at {a['output']} >= {_number(a['threshold'])}")
    for kind, tensors in (("input", doc["inputs"]), ("output", doc["outputs"])):
        for tensor in tensors:
            lines.extend(_tensor_lines(kind, tensor))
    lines.append(f"  record hash   {doc['hash']}")
    return "\n".join(lines)


def _tensor_lines(kind: str, tensor: dict[str, Any]) -> list[str]:
    head = f"  {kind} {tensor['name']} ({tensor['datatype']} {tensor['shape']})"
    if "rows" in tensor:
        out = [head]
        for i, row in enumerate(tensor["rows"], 1):
            if len(tensor["rows"]) > 1:
                out.append(f"    row {i}")
            for name, cell in row.items():
                if "redacted" in cell:
                    how = "hashed" if cell["redacted"] == "hash" else "dropped"
                    out.append(f"    {name:<24}{'(' + how + ')':>12}")
                else:
                    out.append(f"    {name:<24}{_number(cell['value']):>12} "
                               f"{cell.get('unit', '')}".rstrip())
        return out
    if "values" in tensor:
        flat = np.asarray(tensor["values"]).ravel().tolist()
        shown = ", ".join(_number(v) for v in flat[:16]) + (" ..." if len(flat) > 16 else "")
        return [f"{head}  {shown}"]
    what = f"hashed, sha256 {tensor['sha256']}" if tensor["redaction"] == "hash" else "dropped"
    return [f"{head}  ({what})"]
