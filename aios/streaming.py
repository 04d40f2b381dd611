"""ModelStreamInfer, as both services carry it: a bidirectional stream of ModelInferRequest
messages in and ModelStreamInferResponse messages out, a request answered by one response
or (a decoupled model) by many.

Each hop keeps a `Book` of the requests whose responses are still coming, under ids of its
own (a client's ids may be empty or repeat), and always asks the next hop for Triton's
empty final response, so that it knows when a request is done whatever the model; it
gives its client that empty response only if the client asked for it. A stream's
metadata is set once, so what one hop says to the next about each request (who called,
where it was routed, its decision id) travels as request parameters under `HOP_PREFIX`,
named as the headers a unary call carries them in, and the next hop takes them off.

`serve_stream` runs one stream for a `StreamSession` (the gateway's or the sidecar's):
client messages in, with limits on messages and idle time; responses out through a
bounded `Outbox`, so a client that does not read stops the reading of the next hop
(gRPC flow control does the rest); cancellation either way ends both sides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from aios.errors import AiosError, InvalidInput, RequestTimeout, StreamExhausted
from aios.upstream import GrpcStream

logger = logging.getLogger(__name__)

STREAM_METHOD = "ModelStreamInfer"
PROTOCOL = "grpc_stream"  # how streamed requests are counted and recorded
FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"
HOP_PREFIX = "aios.hop."
# Set on each response that has a decision record: the record's decision id.
DECISION_PARAMETER = "aios_decision_id"
# How many responses wait for a client that reads slowly before the next hop is not read.
OUTBOX_SIZE = 64


def parse_request(message: bytes) -> service_pb2.ModelInferRequest:
    """A stream's request message; InvalidInput if it is not one."""
    try:
        return service_pb2.ModelInferRequest.FromString(message)
    except DecodeError as exc:
        raise InvalidInput("malformed protobuf: not a ModelInferRequest") from exc


def take_hop_values(request: service_pb2.ModelInferRequest) -> dict[str, str]:
    """The values the previous hop gave this request (as header name → value), taken off
    the request."""
    names = [n for n in request.parameters if n.startswith(HOP_PREFIX)]
    out = {n[len(HOP_PREFIX):]: request.parameters[n].string_param for n in names}
    for name in names:
        del request.parameters[name]
    return out


def put_hop_values(request: service_pb2.ModelInferRequest, values: dict[str, str]) -> None:
    """Give the next hop ``values`` (header name → value) for this request."""
    for name, value in values.items():
        request.parameters[HOP_PREFIX + name].string_param = value


def take_final_wish(request: service_pb2.ModelInferRequest) -> bool:
    """Whether the client asked for the empty final response; the request then asks for it
    in any case."""
    wish = EMPTY_FINAL in request.parameters and request.parameters[EMPTY_FINAL].bool_param
    request.parameters[EMPTY_FINAL].bool_param = True
    return wish


def client_parameters(request: service_pb2.ModelInferRequest) -> list[str]:
    """The request's parameter names a client may have set itself (the checks of
    `aios.kserve.check_parameters` apply), leaving out the one Triton's stream clients set."""
    return [n for n in request.parameters if n != EMPTY_FINAL]


def last_of_request(response: service_pb2.ModelStreamInferResponse) -> bool:
    """Whether no more responses will come for this response's request: it says it is the
    final one, or it is an error from before the model ran (those carry no final flag)."""
    parameters = response.infer_response.parameters
    if FINAL in parameters:
        return bool(parameters[FINAL].bool_param)
    return bool(response.error_message)


def empty_final(response: service_pb2.ModelStreamInferResponse) -> bool:
    """Whether a response is the empty final one: no outputs, no error."""
    return not response.error_message and not response.infer_response.outputs and \
        last_of_request(response)


def error_response(request_id: str, message: str) -> bytes:
    """A request's error, as Triton answers one on a stream (which goes on)."""
    return bytes(service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(id=request_id)).SerializeToString())


@dataclass(slots=True)
class Pending:
    """A request whose responses are still coming."""

    client_id: str  # the id the client gave it, given back on its responses
    wants_final: bool  # whether the client asked for the empty final response
    model: str
    version: str
    started: float = field(default_factory=time.perf_counter)
    responses: int = 0  # responses with outputs or an error, so far
    context: Any = None  # what the service keeps of it until it is done


class Book:
    """The requests in flight on one stream, by the id this hop gave each; at most
    ``limit`` at once (`open` waits for room)."""

    def __init__(self, limit: int) -> None:
        self._pending: dict[str, Pending] = {}
        self._room = asyncio.Semaphore(limit)
        self._next = 0

    async def open(self, pending: Pending) -> str:
        """Book ``pending`` (waiting while the stream is at its limit); its id."""
        await self._room.acquire()
        self._next += 1
        ident = str(self._next)
        self._pending[ident] = pending
        return ident

    def answered(self, response: service_pb2.ModelStreamInferResponse,
                 ) -> tuple[Pending, bool] | None:
        """The request ``response`` answers, with its client's id put back on the response,
        and whether it is the request's last (it is then out of the book); None if this
        stream sent no such request."""
        ident = response.infer_response.id
        pending = self._pending.get(ident)
        if pending is None:
            return None
        last = last_of_request(response)
        if last:
            self.close(ident)
        response.infer_response.id = pending.client_id
        return pending, last

    def close(self, ident: str) -> Pending | None:
        """The request is done: out of the book (None if it was not in it)."""
        pending = self._pending.pop(ident, None)
        if pending is not None:
            self._room.release()
        return pending

    def drain(self) -> list[Pending]:
        """Every request still in the book, taken out (the stream is over)."""
        out = list(self._pending.values())
        self._pending.clear()
        return out

    def __len__(self) -> int:
        return len(self._pending)


async def relayed(upstream: GrpcStream, outbox: Outbox,
                  ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
    """The next hop's responses, parsed, until it ends the stream; an error status it ends
    with ends the client's stream too (through ``outbox``)."""
    try:
        while (payload := await upstream.read()) is not None:
            yield service_pb2.ModelStreamInferResponse.FromString(payload)
    except AiosError as exc:
        outbox.fail(exc)


_END = object()


class Outbox:
    """What goes back to the client: responses in order, then the end or an error. It is
    bounded, so whoever puts waits for a client that reads slowly."""

    def __init__(self, size: int = OUTBOX_SIZE) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(size)
        self.touched = time.monotonic()

    def touch(self) -> None:
        """Something moved on the stream (idle time starts again)."""
        self.touched = time.monotonic()

    async def put(self, response: bytes) -> None:
        await self._queue.put(response)
        self.touch()

    async def end(self) -> None:
        await self._queue.put(_END)

    def fail(self, exc: AiosError) -> None:
        """End the stream with ``exc`` now, ahead of anything still queued."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(exc)

    async def next(self, idle_s: float) -> bytes | None:
        """The next response (None: the stream is over); RequestTimeout once nothing has
        moved either way for ``idle_s``."""
        while True:
            left = self.touched + idle_s - time.monotonic()
            try:
                item = await asyncio.wait_for(self._queue.get(), max(left, 0.0))
            except TimeoutError:
                if time.monotonic() - self.touched >= idle_s:
                    raise RequestTimeout(f"the stream was idle for {idle_s:g} s (no message "
                                         "either way): it is closed") from None
                continue
            if item is _END:
                return None
            if isinstance(item, AiosError):
                raise item
            assert isinstance(item, bytes)
            return item


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """A stream's limits (from `aios.config.ServerSettings`)."""

    max_messages: int
    idle_s: float


class StreamSession(Protocol):
    """One client stream, as a service answers it; it puts responses in ``outbox``."""

    outbox: Outbox

    async def send(self, message: bytes) -> None:
        """Take one request message of the client's (its error, if it has one, goes to the
        outbox as the request's error response; an error raised here ends the stream)."""
        ...

    async def finish(self) -> None:
        """The client sent its last message: wait for every response to be in the outbox."""
        ...

    async def close(self) -> None:
        """The stream is over, however it ended: cancel and free what is left."""
        ...


async def serve_stream(session: StreamSession, requests: AsyncIterator[bytes],
                       limits: StreamLimits) -> AsyncIterator[bytes]:
    """The responses of one stream; raises the AiosError that ended it, if one did."""
    outbox = session.outbox

    async def read() -> None:
        try:
            count = 0
            async for message in requests:
                count += 1
                if count > limits.max_messages:
                    raise StreamExhausted(f"a stream carries at most {limits.max_messages} "
                                          "request messages: open another stream")
                outbox.touch()
                await session.send(message)
            await session.finish()
            await outbox.end()
        except AiosError as exc:
            outbox.fail(exc)
        except Exception:
            logger.exception("unhandled error on a stream")
            outbox.fail(AiosError("internal error"))

    reader = asyncio.create_task(read())
    try:
        while (response := await outbox.next(limits.idle_s)) is not None:
            yield response
        await reader
    finally:
        reader.cancel()
        await session.close()
