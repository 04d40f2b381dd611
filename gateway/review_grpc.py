"""gRPC adapter of the review API (`aios.review.v1.ReviewApi`, proto/review.proto): each
answer is the REST body as JSON; errors mapped by ErrorInterceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import orjson

from aios.errors import InvalidInput, NotFound
from aios.plane import header_value
from gateway.admin_rest import AdminAuth
from gateway.review import ADMIN, DECIDE, READ, ReviewApi, Reviewer
from gateway.review_rest import NOT_CONFIGURED
from proto import review_pb2 as pb
from proto import review_pb2_grpc as pb_grpc


def _document(doc: dict[str, Any]) -> pb.ReviewDocument:
    return pb.ReviewDocument(json=orjson.dumps(doc).decode())


def _json(text: str, field: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{field}: not valid JSON: {exc}") from exc


class ReviewService(pb_grpc.ReviewApiServicer):
    """The same calls as REST /admin/reviews."""

    def __init__(self, api: ReviewApi | None, auth: AdminAuth) -> None:
        self._api = api
        self._auth = auth

    async def _ready(self, context: grpc.aio.ServicerContext,
                     scope: str) -> tuple[ReviewApi, Reviewer]:
        metadata = context.invocation_metadata() or ()
        principal = await self._auth.principal(header_value(metadata, "authorization"),
                                               scope)
        if self._api is None:
            raise NotFound(NOT_CONFIGURED)
        return self._api, Reviewer.of(principal)

    async def List(self, request: pb.ListRequest,
                   context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, who = await self._ready(context, READ)
        params = {name: str(getattr(request, name)) for name in ("state", "gate", "model",
                                                                 "limit")
                  if getattr(request, name)}
        return _document(await api.listing(who, params))

    async def Get(self, request: pb.ItemRequest,
                  context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, who = await self._ready(context, READ)
        return _document(await api.item(who, request.id))

    async def Claim(self, request: pb.ClaimRequest,
                    context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, who = await self._ready(context, DECIDE)
        body = {"lease_s": float(request.lease_s)} if request.lease_s else None
        return _document(await api.claim(who, request.id, body))

    async def Release(self, request: pb.ItemRequest,
                      context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, who = await self._ready(context, DECIDE)
        return _document(await api.release(who, request.id))

    async def Decide(self, request: pb.DecideRequest,
                     context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, who = await self._ready(context, DECIDE)
        body: dict[str, Any] = {"action": request.action, "reason": request.reason}
        if request.value_json:
            body["value"] = _json(request.value_json, "value_json")
        return _document(await api.decide(who, request.id, body))

    async def Stats(self, request: pb.StatsRequest,
                    context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, _ = await self._ready(context, READ)
        return _document(await api.stats())

    async def GetGates(self, request: pb.GatesRequest,
                       context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, _ = await self._ready(context, READ)
        return _document(await api.gates(request.model))

    async def SetGates(self, request: pb.SetGatesRequest,
                       context: grpc.aio.ServicerContext) -> pb.ReviewDocument:
        api, who = await self._ready(context, ADMIN)
        body = {"base_revision": request.base_revision, "reason": request.reason,
                "settings": _json(request.gates_json, "gates_json")}
        return _document(await api.set_gates(who.subject, request.model, body))


def register_review(service: ReviewService) -> Callable[[grpc.aio.Server], None]:
    """A registrar that adds the review service to the gateway's gRPC server."""
    return lambda server: pb_grpc.add_ReviewApiServicer_to_server(  # type: ignore[no-untyped-call]
        service, server)
