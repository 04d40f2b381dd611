"""The sidecar's side of human review: its gates send decisions to the queue, and it
finishes what reviewers decided.

Gates are evaluated here, after Triton answered, on the call's inputs (named by the
version's profile), outputs, parity flags and shadow agreement: nothing the model code
sees. A decision a gate fires on becomes a review item, stored before the answer is
released (a store that cannot take it fails the call with 503, as the sync log does), and
its record carries the review id. Reviewers decide through the gateway; this sidecar,
which wrote the model's record, then appends the reviewer's record to the same hash
chain (same decision id, kind "review") and announces the final outcome (`sidecar.
reviewevents`). Each step is marked on the item once done, so a crash only repeats the
step it interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from prometheus_client import CollectorRegistry, Counter
from tritonclient.grpc import service_pb2

from aios.compare import Expected
from aios.config import ReviewModelConfig, ReviewSettings
from aios.errors import AiosError, StoreUnavailable
from aios.ids import new_ulid
from aios.plane import REVIEW_HEADER, REVIEW_ID_HEADER
from aios.readable import Names, array, readable
from aios.reviewqueue import Item, mark, new_item
from aios.reviewrules import Facts, Gate, first_fired, named_values, reads
from aios.reviewstore import ReviewStore
from aios.tensors import Tensors, encoded_body, plain_body
from aios.upstream import GrpcReply, HttpReply
from proto.decision_record_pb2 import DecisionRecord, HumanReview
from sidecar.decisionlog import DecisionLog
from sidecar.reviewevents import Announcer

logger = logging.getLogger(__name__)

# The KServe response parameters a reviewed answer carries.
REVIEW_PARAMETER = "aios_review"
REVIEW_ID_PARAMETER = "aios_review_id"
FINISH_BATCH = 100


@dataclass(frozen=True)
class ModelGates:
    """One model's gates in force, and the revision they came from (0: config)."""

    mode: str
    gates: tuple[Gate, ...]
    revision: int = 0
    needed: frozenset[str] = frozenset()  # the features and outputs they read


def model_gates(config: ReviewModelConfig, revision: int = 0) -> ModelGates:
    gates = tuple(g.gate() for g in config.gates)
    return ModelGates(config.mode, gates, revision, reads(gates))


@dataclass(frozen=True)
class Queued:
    """A decision sent to review: the item, and how its caller is answered."""

    item: Item
    hold: bool


class ReviewDesk:
    """Gates, queueing and finishing for one sidecar (``source``: its decision log)."""

    def __init__(self, settings: ReviewSettings, store: ReviewStore,
                 names: Mapping[tuple[str, str], Names], source: str,
                 log: DecisionLog | None, announcer: Announcer,
                 registry: CollectorRegistry) -> None:
        self._settings = settings
        self._store = store
        self._names = names
        self._source = source
        self._log = log
        self._announcer = announcer
        self._gates = {m: model_gates(c) for m, c in settings.models.items() if c.gates}
        # Per model version: its input tensor and feature names (read once).
        self._features = {key: (n.input, tuple(name for name, _ in n.features))
                          for key, n in names.items()}
        self.queued = Counter("aios_review_queued", "Decisions sent to review",
                              ("model", "gate"), registry=registry)
        self.refused = Counter("aios_review_store_failures",
                               "Gated decisions answered 503: the review store was down",
                               registry=registry)
        self.finished = Counter("aios_review_finished", "Decided reviews chained and "
                                "announced", ("action",), registry=registry)

    def gated(self, model: str) -> bool:
        gates = self._gates.get(model)
        return gates is not None and bool(gates.gates)

    def consider(self, record: DecisionRecord, inputs: Tensors, outputs: Tensors,
                 expected: Expected | None, agreed: int | None) -> Queued | None:
        """The review ``record``'s decision goes to, if a gate fires (it then names it)."""
        gates = self._gates.get(record.model)
        if gates is None or not gates.gates or record.outcome != "ok":
            return None
        input_name, features = self._features.get((record.model, record.version), (None, ()))
        values_by_name, rows = named_values(inputs, outputs, input_name, features,
                                            gates.needed)
        facts = Facts(values_by_name, rows, record.parity_flags, record.shadow,
                      expected is not None and agreed is not None
                      and agreed < len(expected.decisions))
        gate = first_fired(gates.gates, facts)
        if gate is None:
            return None
        record.review_id, record.review_gate = new_ulid(), gate.name
        doc = readable(record, self._names)
        # One list of numbers per output (a [rows, 1] score: a score per row), as an
        # override gives them.
        outs = {t.name: a.ravel().tolist() for t in record.outputs
                if (a := array(t)) is not None}
        if record.shadow and expected is not None:
            # The decision in question is the primary's: what each arm decided.
            outs = {f"primary {expected.output} >= {expected.threshold}":
                    [int(d) for d in expected.decisions],
                    **{f"shadow {k}": v for k, v in outs.items()}}
        item = new_item(
            id=record.review_id, decision_id=record.shadow_of if record.shadow
            else record.decision_id, model=record.model, version=record.version,
            gate=gate.name, priority=gate.priority, sla_s=gate.sla_s,
            now_ns=time.time_ns(), source=self._source, tenant=record.tenant,
            business_key=record.business_key,
            inputs={t["name"]: t for t in doc["inputs"]}, outputs=outs)
        self.queued.labels(record.model, gate.name).inc()
        return Queued(item, gates.mode == "hold" and not record.shadow)

    async def queue(self, items: list[Item]) -> None:
        """Store ``items``; StoreUnavailable (503) if the store cannot take them."""
        try:
            await asyncio.to_thread(self._store.add, items)
        except StoreUnavailable:
            self.refused.inc(len(items))
            raise

    async def run(self) -> None:
        """Keep the gates current and finish decided items, until cancelled."""
        gates_due = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= gates_due:
                    await self.refresh_gates()
                    gates_due = now + self._settings.gates_poll_s
                await self.finish()
            except AiosError as exc:
                logger.warning("review: %s (will try again)", exc.message)
            await asyncio.sleep(self._settings.finish_every_s)

    async def refresh_gates(self) -> None:
        """Take the gates changed through the admin API (the store's latest revisions)."""
        for model, change in (await asyncio.to_thread(self._store.all_gates)).items():
            current = self._gates.get(model)
            if current is not None and current.revision == change.revision:
                continue
            try:
                gates = model_gates(ReviewModelConfig.model_validate(change.doc),
                                    change.revision)
            except ValueError as exc:  # the gateway validated it: a newer schema's
                logger.error("review gates of %s r%d unusable: %s", model, change.revision,
                             exc)
                continue
            # Kept even when empty: its revision is then known, not taken again each poll.
            self._gates[model] = gates
            logger.info("review gates of %s now at revision %d", model, change.revision)

    async def finish(self) -> None:
        """Chain and announce what reviewers decided on this sidecar's decisions."""
        for item in await asyncio.to_thread(self._store.unfinished, self._source,
                                            FINISH_BATCH):
            if not item.chained and self._log is not None:  # no log: nothing to chain
                error = (await self._log.append_many([reviewer_record(item)]))[0]
                if error is not None:
                    raise error
                item = await asyncio.to_thread(
                    self._store.change, item.id, lambda i: mark(i, "chained", time.time_ns()))
            await self._announcer.announce(item)
            await asyncio.to_thread(
                self._store.change, item.id, lambda i: mark(i, "announced", time.time_ns()))
            self.finished.labels(item.action).inc()


def reviewer_record(item: Item) -> DecisionRecord:
    """The reviewer's decision as a record of the chain, beside the model's."""
    return DecisionRecord(
        time_unix_nanos=item.decided_ns, decision_id=item.decision_id,
        request_id=item.id, business_key=item.business_key, tenant=item.tenant,
        subject=item.decided_by, model=item.model, version=item.version, kind="review",
        outcome=item.action, review_id=item.id, review_gate=item.gate,
        human_review=HumanReview(
            review_id=item.id, gate=item.gate, action=item.action, reason=item.reason,
            model_json=json.dumps(dict(item.outputs), sort_keys=True),
            final_json=json.dumps(dict(item.final() or {}), sort_keys=True),
            queued_unix_nanos=item.queued_ns))


def reviewed(outcome: HttpReply | GrpcReply, queued: Queued) -> HttpReply | GrpcReply:
    """The answer of a call sent to review: the model's, marked pending with the review id
    (headers or metadata, and the response's parameters), or in hold mode without it."""
    review_id = queued.item.id
    marks = {REVIEW_HEADER: "pending", REVIEW_ID_HEADER: review_id}
    if isinstance(outcome, GrpcReply):
        response = service_pb2.ModelInferResponse.FromString(outcome.payload)
        response.parameters[REVIEW_PARAMETER].string_param = "pending"
        response.parameters[REVIEW_ID_PARAMETER].string_param = review_id
        if queued.hold:
            del response.outputs[:]
            del response.raw_output_contents[:]
        return GrpcReply(response.SerializeToString(), (*outcome.trailing, *marks.items()))
    headers = {**outcome.headers, **marks}
    params = {REVIEW_PARAMETER: "pending", REVIEW_ID_PARAMETER: review_id}
    if queued.hold:
        body = {"model_name": queued.item.model, "model_version": queued.item.version,
                "parameters": params}
        return HttpReply(202, {**marks, "content-type": "application/json"},
                         orjson.dumps(body))
    return HttpReply(outcome.status, headers, _with_parameters(outcome.body, headers, params))


def _with_parameters(encoded: bytes, headers: dict[str, str],
                     params: dict[str, str]) -> bytes:
    """A REST answer's JSON (or binary-extension header) with ``params`` added (and its
    length header set to match), in the content encoding it came in; a body that cannot
    be read is left as it is (the headers still say)."""
    encoding = headers.get("content-encoding", "")
    if encoding not in ("", "gzip", "deflate"):
        return encoded
    try:
        body = plain_body(encoded, headers)
    except (OSError, zlib.error):
        return encoded
    length = headers.get("inference-header-content-length")
    split = int(length) if length is not None and length.isdigit() else len(body)
    try:
        doc = orjson.loads(body[:split])
    except orjson.JSONDecodeError:
        return encoded
    if not isinstance(doc, dict):
        return encoded
    doc["parameters"] = {**(doc.get("parameters") or {}), **params}
    head = orjson.dumps(doc)
    if length is not None:
        headers["inference-header-content-length"] = str(len(head))
    return encoded_body(head + body[split:], encoding)


def review_items(queued: Sequence[Queued | None]) -> list[Item]:
    return [q.item for q in queued if q is not None]


def store_failure(exc: StoreUnavailable, record: DecisionRecord) -> DecisionRecord:
    """A gated decision whose item could not be stored: its record says the caller got
    503, and no review."""
    record.outcome, record.error = "503", exc.message[:1000]
    record.review_id = record.review_gate = ""
    return record

