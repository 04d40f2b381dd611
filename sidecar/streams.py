"""ModelStreamInfer through the sidecar: a stream to Triton per client stream, each
request checked against its version's profile as a unary call is, and each response with
outputs or an error given a decision record of its own (a decoupled model's request has
one per response, all under the request's decision id, numbered by `response_index`).
In sync mode a response is released only once its record is durable; else its request
gets the log's error in its place.

A model whose decisions go through review gates is refused on a stream: a stream cannot
hold a decision for people, and a flagged one would go out before its item is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tritonclient.grpc import service_pb2

from aios.errors import AiosError, Unprocessable
from aios.grpc_service import method_path
from aios.ids import new_ulid
from aios.kserve import check_parameters
from aios.metrics import RequestMetrics
from aios.plane import DECISION_HEADER, REQUEST_ID_HEADER
from aios.streaming import (
    DECISION_PARAMETER,
    PROTOCOL,
    STREAM_METHOD,
    Book,
    Outbox,
    Pending,
    client_parameters,
    empty_final,
    error_response,
    relayed,
    take_final_wish,
    take_hop_values,
)
from aios.tensors import grpc_request_inputs, response_outputs
from aios.upstream import GrpcStream, GrpcUpstream, Metadata
from sidecar.pipeline import RECORD_HEADERS, InferCall, Pipeline
from sidecar.review import ReviewDesk

logger = logging.getLogger(__name__)


class SidecarStream:
    """One client's stream, carried to Triton."""

    def __init__(self, metadata: Metadata, triton: GrpcUpstream, pipeline: Pipeline,
                 metrics: RequestMetrics, review: ReviewDesk | None, in_flight: int) -> None:
        self.outbox = Outbox()
        self._metadata = metadata
        self._triton = triton
        self._pipeline = pipeline
        self._metrics = metrics
        self._review = review
        self._book = Book(in_flight)
        self._upstream: GrpcStream | None = None
        self._pump: asyncio.Task[None] | None = None

    async def send(self, message: bytes) -> None:
        client_id = ""
        try:
            request, inputs = grpc_request_inputs(message)
            client_id = request.id
            hop = take_hop_values(request)
            check_parameters(client_parameters(request))
            model, version = request.model_name, request.model_version
            if self._review is not None and self._review.gated(model):
                raise Unprocessable(f"model '{model}' sends decisions to human review, which "
                                    "a stream cannot wait for: call ModelInfer")
            # The request's own values first: a record takes the first of each header.
            headers = [*((k, v) for k, v in hop.items() if k in RECORD_HEADERS), *self._metadata]
            if DECISION_HEADER not in hop:  # called directly: one decision id per request
                headers.append((DECISION_HEADER, new_ulid()))
            first = next(iter(inputs.values()), None)
            call = InferCall(PROTOCOL, model, version, headers,
                             hop.get(REQUEST_ID_HEADER) or client_id, inputs,
                             len(first) if first is not None and first.ndim else 1,
                             len(message), started=time.perf_counter())
            profile, flags = self._pipeline.stream_check(call)
        except AiosError as exc:
            await self.outbox.put(error_response(client_id, exc.message))
            return
        wants_final = take_final_wish(request)
        upstream = self._open()
        request.id = await self._book.open(Pending(client_id, wants_final, model, version,
                                                   context=(call, profile, flags)))
        self._metrics.now += 1  # counted once booked: a wait for room may be cancelled
        await upstream.write(bytes(request.SerializeToString()))

    def _open(self) -> GrpcStream:
        if self._upstream is None:
            self._upstream = self._triton.stream(method_path(STREAM_METHOD), self._metadata)
            self._pump = asyncio.create_task(self._read(self._upstream))
        return self._upstream

    async def _read(self, upstream: GrpcStream) -> None:
        async for response in relayed(upstream, self.outbox):
            await self._answer(response)

    async def _answer(self, response: service_pb2.ModelStreamInferResponse) -> None:
        answered = self._book.answered(response)
        if answered is None:
            logger.warning("Triton answered request %r, which this stream did not send",
                           response.infer_response.id)
            return
        pending, last = answered
        keep = pending.wants_final or not empty_final(response)
        if not empty_final(response):
            response = await self._recorded(response, pending)
        if last:
            self._done(pending, "OK")
        if keep:
            await self.outbox.put(bytes(response.SerializeToString()))

    async def _recorded(self, response: service_pb2.ModelStreamInferResponse,
                        pending: Pending) -> service_pb2.ModelStreamInferResponse:
        """The response, once its decision record is written (marked with its id), or its
        request's log error in its place."""
        call, profile, flags = pending.context
        assert isinstance(call, InferCall)
        answer = response.infer_response
        index = pending.responses
        pending.responses += 1
        if answer.model_version:  # an error response may not say it: the last one did
            pending.version = answer.model_version
        decision, failed = await self._pipeline.stream_response(
            call, profile, flags, pending.version,
            response_outputs(answer), response.error_message, index)
        if failed is not None:
            return service_pb2.ModelStreamInferResponse(
                error_message=failed.message,
                infer_response=service_pb2.ModelInferResponse(id=answer.id))
        if decision:
            answer.parameters[DECISION_PARAMETER].string_param = decision
        return response

    def _done(self, pending: Pending, code: str) -> None:
        self._metrics.now -= 1
        self._metrics.done(self._metrics.labels(pending.model, pending.version, PROTOCOL), code,
                           time.perf_counter() - pending.started)

    async def finish(self) -> None:
        if self._upstream is not None and self._pump is not None:
            await self._upstream.done_writing()
            await self._pump

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self._upstream is not None:
            self._upstream.cancel()
        for pending in self._book.drain():
            self._done(pending, "CANCELLED")
