"""ModelStreamInfer through the gateway: per request message, what a unary call gets
(the caller's token from the stream's metadata checked for the model's infer scope, quota
charged per message, priority and timeout clamped), then routed: a sequence's requests
where the sequence is held (`gateway.sequences`), any other to the target this stream
sent the model's requests to before (chosen by the weights at the first; chosen again
only if it is ejected), so a decoupled model's requests stay on one backend. A stream to
each backend the stream uses carries them; every response comes back on the client's
stream, in the order its backend sent it.

A refused request gets its error as a response (the stream goes on), as Triton answers
one; a backend stream that fails ends the client's stream with its status. Streamed calls
are not mirrored to a shadow (a shadow of a stream would need a stream of its own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tritonclient.grpc import service_pb2

from aios.errors import AiosError, InvalidInput
from aios.grpc_service import method_path
from aios.kserve import check_parameters, grpc_scheduling, peek_batch, set_grpc_parameters
from aios.metrics import RequestMetrics
from aios.streaming import (
    PROTOCOL,
    STREAM_METHOD,
    Book,
    Outbox,
    Pending,
    client_parameters,
    empty_final,
    error_response,
    parse_request,
    put_hop_values,
    relayed,
    take_final_wish,
)
from aios.upstream import GrpcStream, GrpcUpstream, Metadata
from gateway.admission import Admission
from gateway.routing import ModelTable, Route
from gateway.scheduling import CLAMPED_PARAMETER, Clamped
from gateway.sequences import SequenceCall, grpc_parameters, sequence_of


class StreamPlane(Protocol):
    """What a stream asks of the gateway's plane (`gateway.plane.GatewayPlane`)."""

    @property
    def metrics(self) -> RequestMetrics: ...

    async def checked_table(self, model: str, version: str) -> ModelTable: ...

    async def admit(self, kind: str, model: str, headers: Iterable[tuple[str, Any]],
                    batch: Callable[[], int]) -> Admission: ...

    def release(self, admission: Admission) -> None: ...

    @staticmethod
    def sticky_key(table: ModelTable, admission: Admission,
                   headers: Iterable[tuple[str, Any]]) -> str | None: ...

    async def stream_route(self, model: str, pinned: str, key: str | None,
                           sequence: SequenceCall | None, held: Route | None) -> Route: ...

    def clamp(self, asked: Mapping[str, int], admission: Admission, route: Route) -> Clamped:
        ...

    @staticmethod
    def hop_values(admission: Admission, route: Route, request_id: str,
                   key: str | None) -> dict[str, str]: ...

    def backend_grpc(self, backend: str) -> GrpcUpstream: ...

    async def answered(self, model: str, route: Route, sequence: SequenceCall | None,
                       ok: bool, start: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Sent:
    """What the gateway keeps of a request until its last response."""

    admission: Admission
    route: Route
    sequence: SequenceCall | None
    clamped: str  # what was clamped, said on each of its responses ("" if nothing)


class GatewayStream:
    """One client's stream, carried to the sidecars."""

    def __init__(self, metadata: Metadata, plane: StreamPlane, in_flight: int) -> None:
        self.outbox = Outbox()
        self._metadata = metadata
        self._plane = plane
        self._book = Book(in_flight)
        self._held: dict[tuple[str, str], Route] = {}  # (model, pinned version) → route
        self._upstreams: dict[str, GrpcStream] = {}
        self._pumps: list[asyncio.Task[None]] = []

    async def send(self, message: bytes) -> None:
        client_id = ""
        model, version = "", ""
        metrics = self._plane.metrics
        try:
            request = parse_request(message)
            client_id, model, version = request.id, request.model_name, request.model_version
            sent = await self._admitted(request, message)
        except AiosError as exc:
            metrics.done(metrics.labels(model, version, PROTOCOL), exc.grpc_code.name, 0.0)
            await self.outbox.put(error_response(client_id, exc.message))
            return
        wants_final = take_final_wish(request)
        upstream = self._upstream(sent.route.backend)
        try:
            request.id = await self._book.open(Pending(client_id, wants_final, model, version,
                                                       context=sent))
        except asyncio.CancelledError:
            self._plane.release(sent.admission)
            raise
        metrics.now += 1  # counted once booked: a wait for room may be cancelled
        try:
            await upstream.write(bytes(request.SerializeToString()))
        except AiosError:
            await self._plane.answered(model, sent.route, None, False, time.perf_counter())
            raise

    async def _admitted(self, request: service_pb2.ModelInferRequest, message: bytes) -> Sent:
        """Check, admit and route one request, and make it what its backend is to get."""
        plane = self._plane
        model, pinned = request.model_name, request.model_version
        if not model:
            raise InvalidInput("the request names no model")
        table = await plane.checked_table(model, pinned)
        check_parameters(client_parameters(request))
        asked = grpc_scheduling(request.parameters)
        sequence = sequence_of(grpc_parameters(request.parameters))
        admission = await plane.admit("infer", model, self._metadata,
                                      lambda: peek_batch(message))
        try:
            key = plane.sticky_key(table, admission, self._metadata)
            route = await plane.stream_route(model, pinned, key, sequence,
                                             self._held.get((model, pinned)))
        except AiosError:
            plane.release(admission)
            raise
        if sequence is None:
            self._held[(model, pinned)] = route
        clamped = plane.clamp(asked, admission, route) if asked else None
        if clamped is not None and clamped.values:
            set_grpc_parameters(request, clamped.values)
        request.model_version = route.version
        put_hop_values(request, plane.hop_values(admission, route, request.id, key))
        return Sent(admission, route, sequence,
                    "; ".join(clamped.notes) if clamped is not None else "")

    def _upstream(self, backend: str) -> GrpcStream:
        upstream = self._upstreams.get(backend)
        if upstream is None:
            upstream = self._upstreams[backend] = self._plane.backend_grpc(backend).stream(
                method_path(STREAM_METHOD), self._metadata)
            self._pumps.append(asyncio.create_task(self._read(upstream)))
        return upstream

    async def _read(self, upstream: GrpcStream) -> None:
        async for response in relayed(upstream, self.outbox):
            await self._answer(response)

    async def _answer(self, response: service_pb2.ModelStreamInferResponse) -> None:
        answered = self._book.answered(response)
        if answered is None:
            return  # not a request of this stream's: nothing to give it to
        pending, last = answered
        sent = pending.context
        assert isinstance(sent, Sent)
        if sent.clamped:
            response.infer_response.parameters[CLAMPED_PARAMETER].string_param = sent.clamped
        if last:
            await self._finished(pending, sent, "OK")
        if pending.wants_final or not empty_final(response):
            await self.outbox.put(bytes(response.SerializeToString()))

    async def _finished(self, pending: Pending, sent: Sent, code: str) -> None:
        plane = self._plane
        plane.release(sent.admission)
        metrics = plane.metrics
        metrics.now -= 1
        metrics.done(metrics.labels(pending.model, pending.version, PROTOCOL), code,
                     time.perf_counter() - pending.started)
        if code == "OK":
            await plane.answered(pending.model, sent.route, sent.sequence, True,
                                 pending.started)

    async def finish(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.done_writing()
        await asyncio.gather(*self._pumps)

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for upstream in self._upstreams.values():
            upstream.cancel()
        for pending in self._book.drain():
            sent = pending.context
            assert isinstance(sent, Sent)
            await self._finished(pending, sent, "CANCELLED")
