"""The stream bookkeeping of `aios.streaming`, without sockets: which response ends its
request, the values a hop gives the next, the book of requests in flight, the outbox and
the runner's limits (its session here is an in-memory echo: what is under test is the
runner, not a service)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tritonclient.grpc import service_pb2

from aios.errors import InvalidInput, RequestTimeout, StreamExhausted
from aios.streaming import (
    EMPTY_FINAL,
    FINAL,
    HOP_PREFIX,
    Book,
    Outbox,
    Pending,
    StreamLimits,
    client_parameters,
    empty_final,
    error_response,
    last_of_request,
    parse_request,
    put_hop_values,
    serve_stream,
    take_final_wish,
    take_hop_values,
)


def response(final: bool | None, error: str = "", outputs: int = 0,
             ) -> service_pb2.ModelStreamInferResponse:
    out = service_pb2.ModelStreamInferResponse(error_message=error)
    if final is not None:
        out.infer_response.parameters[FINAL].bool_param = final
    for i in range(outputs):
        out.infer_response.outputs.add(name=f"o{i}")
    return out


@pytest.mark.parametrize(("message", "last", "empty"), [
    (response(True), True, True),  # a decoupled model's empty final response
    (response(True, outputs=1), True, False),  # a unary model's one response
    (response(False, outputs=1), False, False),  # one of many
    (response(False, error="element 1 is negative"), False, False),  # the model's error
    (response(None, error="Request for unknown model"), True, False),  # refused at once
    (response(None, outputs=1), False, False),
])
def test_which_response_ends_its_request(message: Any, last: bool, empty: bool) -> None:
    assert (last_of_request(message), empty_final(message)) == (last, empty)


def test_hop_values_travel_as_parameters_and_are_taken_off() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.parameters["priority"].int64_param = 1
    put_hop_values(request, {"x-aios-tenant": "acme", "x-aios-target": "canary"})
    assert sorted(request.parameters) == [f"{HOP_PREFIX}x-aios-target",
                                          f"{HOP_PREFIX}x-aios-tenant", "priority"]
    again = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert take_hop_values(again) == {"x-aios-tenant": "acme", "x-aios-target": "canary"}
    assert list(again.parameters) == ["priority"]


@pytest.mark.parametrize(("asked", "wish"), [(None, False), (False, False), (True, True)])
def test_every_hop_asks_for_the_empty_final_response(asked: bool | None, wish: bool) -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    if asked is not None:
        request.parameters[EMPTY_FINAL].bool_param = asked
    assert take_final_wish(request) is wish
    assert request.parameters[EMPTY_FINAL].bool_param is True
    assert client_parameters(request) == []


def test_a_malformed_message_and_an_error_response() -> None:
    with pytest.raises(InvalidInput, match=r"^malformed protobuf: not a ModelInferRequest$"):
        parse_request(b"\xff\xff")
    parsed = service_pb2.ModelStreamInferResponse.FromString(error_response("r1", "no"))
    assert (parsed.error_message, parsed.infer_response.id) == ("no", "r1")
    assert last_of_request(parsed)


async def test_the_book_gives_ids_of_its_own_and_waits_for_room() -> None:
    book = Book(2)
    first = await book.open(Pending("", False, "m", "1"))
    second = await book.open(Pending("", True, "m", "1"))
    assert first != second and len(book) == 2
    third = asyncio.create_task(book.open(Pending("c", False, "m", "1")))
    await asyncio.sleep(0.01)
    assert not third.done(), "a full book waits"
    closed = book.close(first)
    assert closed is not None and book.close(first) is None
    assert (await asyncio.wait_for(third, 1)) not in (first, second)
    assert [p.client_id for p in book.drain()] == ["", "c"] and len(book) == 0


async def test_the_outbox_keeps_order_and_an_error_goes_first() -> None:
    box = Outbox(4)
    await box.put(b"a")
    await box.put(b"b")
    assert await box.next(1) == b"a"
    box.fail(StreamExhausted("over"))
    with pytest.raises(StreamExhausted, match=r"^over$"):
        await box.next(1)
    await box.end()
    assert await box.next(1) is None


async def test_an_idle_outbox_ends_the_stream_unless_something_moved() -> None:
    box = Outbox()
    waiting = asyncio.create_task(box.next(0.3))
    await asyncio.sleep(0.2)
    box.touch()  # a client message: idle time starts again
    await asyncio.sleep(0.2)
    assert not waiting.done()
    with pytest.raises(RequestTimeout, match=r"^the stream was idle for 0\.3 s \(no message "
                                             r"either way\): it is closed$"):
        await waiting


class Echo:
    """Answers each message with itself; b"boom" ends the stream with an error."""

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.closed = False

    async def send(self, message: bytes) -> None:
        if message == b"boom":
            raise InvalidInput("the stream cannot go on")
        await self.outbox.put(message)

    async def finish(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def messages(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def collect(session: Echo, *items: bytes, limit: int = 10) -> list[bytes]:
    return [r async for r in serve_stream(session, messages(*items), StreamLimits(limit, 5))]


@pytest.mark.parametrize(("items", "error"), [
    ((b"1", b"2", b"3"), None),
    ((b"1", b"2", b"3", b"4"), "a stream carries at most 3 request messages: open another "
                               "stream"),
    ((b"1", b"boom", b"2"), "the stream cannot go on"),
])
async def test_the_runner_ends_a_stream_at_its_limit_or_error_and_always_closes(
        items: tuple[bytes, ...], error: str | None) -> None:
    session = Echo()
    if error is None:
        assert await collect(session, *items, limit=3) == list(items)
    else:
        with pytest.raises((StreamExhausted, InvalidInput)) as caught:
            await collect(session, *items, limit=3)
        assert str(caught.value) == error
    assert session.closed
