"""The read-only audit API, protocol-agnostic: decisions by id, search, inclusion proofs
and the latest checkpoints of the signed logs the gateway is given (`AuditApiSettings`).
The REST (`gateway.audit_rest`) and gRPC (`gateway.audit_grpc`) adapters call it.

Every read is itself recorded before it is answered: who asked, what, and which
decisions were shown, in the gateway's access log (chained and signed like the others,
`aios audit search --dir var/audit-reads`). A read that cannot be recorded is refused.
What is shown is read from the log's segments (the index only says where), decoded with
the model's feature names; redacted columns were never written, so they cannot be shown.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aios.auditindex import COUNT_CAP, FILTERS, MAX_PAGE, Query, parse_time_ns
from aios.auditindex import search as search_index
from aios.auditlog import prove
from aios.checkpoint import Checkpoint, CheckpointError, Witness, load_public_key
from aios.compare import compare
from aios.config import AuditApiSettings, AuditSource, ConfigError
from aios.errors import InvalidInput, NotFound
from aios.readable import Names, load_names, readable, values
from aios.signedlog import SignedLog
from aios.tensors import Outputs
from aios.witness import open_witness
from gateway.routing import Router, ShadowSpec
from proto.decision_record_pb2 import AuditRead, DecisionRecord

KIND = "audit_read"
DEFAULT_LIMIT = 20
# Pages beyond this are refused: narrow the query instead (a deep OFFSET costs a scan).
MAX_PAGE_NUMBER = 10_000
# Search parameters besides FILTERS' names.
PAGING = ("since", "until", "limit", "page", "log")


@dataclass(frozen=True)
class AuditQuery:
    """A validated search: the index query, and the log it is limited to (None: all)."""

    query: Query
    log: str | None


def _count(params: Mapping[str, str], name: str, default: int, most: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= most:
        raise InvalidInput(f"{name}: must be an integer between 1 and {most}")
    return int(raw)


def parse_search(params: Mapping[str, str]) -> AuditQuery:
    """Search parameters (strings, as REST's query or gRPC's fields give them) as a query;
    InvalidInput naming the bad one."""
    unknown = sorted(set(params) - set(FILTERS) - set(PAGING))
    if unknown:
        raise InvalidInput(f"{unknown[0]}: not a search parameter (one of "
                           f"{', '.join([*FILTERS, *PAGING])})")
    fields = tuple((name, params[name]) for name in FILTERS if params.get(name))
    try:
        since = parse_time_ns(params.get("since") or None, "since")
        until = parse_time_ns(params.get("until") or None, "until")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    limit = _count(params, "limit", DEFAULT_LIMIT, MAX_PAGE)
    page = _count(params, "page", 1, MAX_PAGE_NUMBER)
    return AuditQuery(Query(fields, since, until, limit, page), params.get("log") or None)


@dataclass(frozen=True)
class _Log:
    name: str
    source: AuditSource
    witness: Witness
    key: Ed25519PublicKey | None
    lock: asyncio.Lock


class AuditReader:
    """Reads the configured logs for the audit API (see the module docstring)."""

    def __init__(self, logs: list[_Log], names: dict[tuple[str, str], Names],
                 access: SignedLog, router: Router) -> None:
        self._logs = {log.name: log for log in logs}
        self._router = router
        self._names = names
        self._access = access

    @classmethod
    async def open(cls, settings: AuditApiSettings, router: Router) -> AuditReader | None:
        """The reader of ``settings.logs`` (None when none is configured); ConfigError
        naming the field of a key that cannot be read."""
        if not settings.logs:
            return None
        logs = []
        for name, source in settings.logs.items():
            key = None
            if source.public_key_file is not None:
                try:
                    key = load_public_key(source.public_key_file)
                except CheckpointError as exc:
                    raise ConfigError(f"gateway.audit.logs.{name}.public_key_file: {exc}") \
                        from exc
            logs.append(_Log(name, source, open_witness(source), key, asyncio.Lock()))
        names = await asyncio.to_thread(load_names, settings.model_repository)
        access = await SignedLog.open(settings.access_log, "gateway.audit.access_log")
        return cls(logs, names, access, router)

    def _chosen(self, log: str | None) -> list[_Log]:
        if log is None:
            return list(self._logs.values())
        if log not in self._logs:
            raise InvalidInput(f"log: no audit log {log!r} (configured: "
                               f"{', '.join(sorted(self._logs))})")
        return [self._logs[log]]

    async def _search(self, log: _Log, query: Query) -> tuple[list[DecisionRecord], int]:
        """One log's page and match count, its index brought up to date first."""
        def run() -> tuple[list[DecisionRecord], int]:
            source = log.source
            try:
                return search_index(source.directory, query, url=source.index_url,
                                    log=source.log_name)
            except FileNotFoundError:
                return [], 0  # nothing written yet

        async with log.lock:  # one indexer per log in this process
            return await asyncio.to_thread(run)

    async def _record(self, who: str, action: str, asked: dict[str, Any], shown: list[str],
                      results: int) -> None:
        record = DecisionRecord(kind=KIND, subject=who, time_unix_nanos=time.time_ns(),
                                audit_read=AuditRead(action=action, decision_ids=shown,
                                                     results=results,
                                                     query_json=json.dumps(asked,
                                                                           sort_keys=True)))
        await self._access.append(record, f"the audit read by {who!r}")

    async def _find(self, ident: str) -> tuple[_Log, DecisionRecord] | None:
        if not ident or len(ident) > 200:
            raise InvalidInput("id: a decision id or request id of 1 to 200 characters")
        for field in ("decision_id", "request_id"):
            for log in self._logs.values():
                found, _ = await self._search(log, Query(((field, ident),), limit=1))
                if found:
                    return log, found[0]
        return None

    async def decision(self, who: str, ident: str) -> dict[str, Any]:
        """One decision (by decision id, else request id), decoded, with the log it is in,
        its shadow copies' ids, and whether a signed checkpoint covers it."""
        hit = await self._find(ident)
        if hit is None:
            await self._record(who, "decision", {"id": ident}, [], 0)
            raise NotFound(f"no decision or request {ident!r} in the audit logs")
        log, record = hit
        doc = {"log": log.name, **readable(record, self._names),
               "shadow_copies": await self._shadows(record),
               "checkpoint": await self._coverage(log, record.sequence)}
        await self._record(who, "decision", {"id": ident}, [record.decision_id], 1)
        return doc

    async def _shadows(self, primary: DecisionRecord) -> list[dict[str, Any]]:
        """The shadow copies of ``primary`` (found by its business key, in any log), each
        compared with it from the two records: the largest difference of their outputs,
        and, where the model's shadow compares decisions at a threshold, whether the
        decisions agree."""
        if primary.shadow or not primary.business_key:
            return []
        spec = self._router.shadow_of(primary.model)
        out = []
        for log in self._logs.values():
            found, _ = await self._search(log, Query((("key", primary.business_key),),
                                                     limit=MAX_PAGE))
            for copy in found:
                if copy.shadow and copy.shadow_of == primary.decision_id:
                    out.append({"decision_id": copy.decision_id, "log": log.name,
                                "model": copy.model, "version": copy.version,
                                "outcome": copy.outcome,
                                "comparison": _comparison(primary, copy, spec)})
        return out

    async def search(self, who: str, asked: AuditQuery) -> dict[str, Any]:
        """A page of decisions matching ``asked``, oldest first across the logs chosen."""
        query = asked.query
        logs = self._chosen(asked.log)
        if len(logs) > 1 and query.limit * query.page > MAX_PAGE:
            raise InvalidInput(f"page: more than the first {MAX_PAGE} matches across "
                               f"{len(logs)} logs; name a log, or narrow the query")
        merged: list[tuple[int, str, int, dict[str, Any]]] = []
        total, capped = 0, False
        for log in logs:
            # Across logs: the first page * limit of each, merged in time, then the page.
            wide = Query(query.fields, query.since_ns, query.until_ns,
                         query.limit * query.page, 1) if len(logs) > 1 else query
            found, count = await self._search(log, wide)
            total += count
            capped = capped or count > COUNT_CAP
            merged += [(r.time_unix_nanos, log.name, r.sequence,
                        {"log": log.name, **readable(r, self._names)}) for r in found]
        merged.sort(key=lambda m: m[:3])
        if len(logs) > 1:
            merged = merged[(query.page - 1) * query.limit:query.page * query.limit]
        docs = [m[3] for m in merged]
        await self._record(who, "search", _asked(asked), [d["decision_id"] for d in docs],
                           total)
        return {"total": total, "total_capped": capped,
                "page": query.page, "limit": query.limit, "decisions": docs}

    async def proof(self, who: str, ident: str) -> dict[str, Any]:
        """An inclusion proof of one decision in its log's latest signed checkpoint, which
        `aios audit check-proof` checks with the public key alone."""
        hit = await self._find(ident)
        if hit is None:
            await self._record(who, "proof", {"id": ident}, [], 0)
            raise NotFound(f"no decision or request {ident!r} in the audit logs")
        log, record = hit
        checkpoints = await asyncio.to_thread(log.witness.checkpoints)
        covering = [c for c in checkpoints if c.size >= record.sequence]
        if not covering:
            await self._record(who, "proof", {"id": ident}, [], 0)
            raise NotFound(f"decision {record.decision_id} (record {record.sequence}) is "
                           "after the latest signed checkpoint: ask again after the next one")
        doc = await asyncio.to_thread(prove, log.source.directory, record.decision_id,
                                      covering[-1])
        await self._record(who, "proof", {"id": ident}, [record.decision_id], 1)
        return {"log": log.name, **doc}

    async def checkpoints(self, who: str) -> dict[str, Any]:
        """Each log's latest checkpoint, and whether its signature checks."""
        out = {}
        for log in self._logs.values():
            latest = await self._latest(log)
            out[log.name] = None if latest is None else {
                **latest[0].to_json(), "signature_check": latest[1]}
        await self._record(who, "checkpoints", {}, [], len(out))
        return {"checkpoints": out}

    async def _latest(self, log: _Log) -> tuple[Checkpoint, str] | None:
        """The log's latest checkpoint and its signature's state: valid, INVALID, or
        unchecked (no public key configured)."""
        checkpoints = await asyncio.to_thread(log.witness.checkpoints)
        if not checkpoints:
            return None
        latest = checkpoints[-1]
        if log.key is None:
            return latest, "unchecked"
        try:
            latest.check(log.key)
        except CheckpointError:
            return latest, "INVALID"
        return latest, "valid"

    async def _coverage(self, log: _Log, sequence: int) -> dict[str, Any]:
        latest = await self._latest(log)
        if latest is None:
            return {"covered": False, "size": 0, "signature_check": None}
        checkpoint, check = latest
        return {"covered": sequence <= checkpoint.size, "size": checkpoint.size,
                "signature_check": check,
                "time_unix_nanos": checkpoint.time_unix_nanos}


def _outputs(record: DecisionRecord) -> Outputs:
    out = {}
    for tensor in record.outputs:
        data = values(tensor)
        if data is not None:
            out[tensor.name] = np.asarray(data)
    return out


def _comparison(primary: DecisionRecord, copy: DecisionRecord,
                spec: ShadowSpec | None) -> dict[str, Any] | None:
    """How the shadow copy's outputs compare with the primary's, at the model's shadow
    threshold in force now (None when either answer was not kept or they differ in
    shape)."""
    output = spec.output if spec is not None else ""
    threshold = spec.threshold if spec is not None else None
    try:
        result = compare(_outputs(primary), _outputs(copy), output, threshold)
    except ValueError:
        return None
    doc: dict[str, Any] = {"max_abs_diff": result.max_abs, "max_rel_diff": result.max_rel}
    if result.rows:
        doc.update(output=output, threshold=threshold, decisions=result.rows,
                   agreed=result.agreed)
    return doc


def _asked(asked: AuditQuery) -> dict[str, Any]:
    query = asked.query
    doc = {**dict(query.fields), "since_ns": query.since_ns, "until_ns": query.until_ns,
           "limit": query.limit, "page": query.page, "log": asked.log}
    return {k: v for k, v in doc.items() if v is not None}
