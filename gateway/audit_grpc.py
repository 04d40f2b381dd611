"""gRPC adapter of the audit API (`aios.audit.v1.AuditApi`, proto/audit.proto): each
answer is the REST body as JSON; errors mapped by ErrorInterceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import orjson

from aios.errors import NotFound
from aios.plane import header_value
from gateway.admin_rest import AdminAuth
from gateway.audit import PAGING, AuditReader, parse_search
from gateway.audit_rest import SCOPE
from proto import audit_pb2 as pb
from proto import audit_pb2_grpc as pb_grpc

_SEARCH_FIELDS = ("key", "request_id", "decision_id", "tenant", "model", "version", "outcome",
                  *PAGING)


def _document(doc: dict[str, Any]) -> pb.AuditDocument:
    return pb.AuditDocument(json=orjson.dumps(doc).decode())


class AuditService(pb_grpc.AuditApiServicer):
    """The same reads as REST /admin/audit."""

    def __init__(self, reader: AuditReader | None, auth: AdminAuth) -> None:
        self._reader = reader
        self._auth = auth

    async def _ready(self, context: grpc.aio.ServicerContext) -> tuple[AuditReader, str]:
        metadata = context.invocation_metadata() or ()
        who = await self._auth.subject(header_value(metadata, "authorization"), SCOPE)
        if self._reader is None:
            raise NotFound("no audit logs are configured (gateway.audit.logs)")
        return self._reader, who

    async def GetDecision(self, request: pb.GetDecisionRequest,
                          context: grpc.aio.ServicerContext) -> pb.AuditDocument:
        reader, who = await self._ready(context)
        return _document(await reader.decision(who, request.id))

    async def Prove(self, request: pb.GetDecisionRequest,
                    context: grpc.aio.ServicerContext) -> pb.AuditDocument:
        reader, who = await self._ready(context)
        return _document(await reader.proof(who, request.id))

    async def SearchDecisions(self, request: pb.SearchRequest,
                              context: grpc.aio.ServicerContext) -> pb.AuditDocument:
        reader, who = await self._ready(context)
        params = {name: str(getattr(request, name)) for name in _SEARCH_FIELDS
                  if getattr(request, name)}
        return _document(await reader.search(who, parse_search(params)))

    async def Checkpoints(self, request: pb.CheckpointsRequest,
                          context: grpc.aio.ServicerContext) -> pb.AuditDocument:
        reader, who = await self._ready(context)
        return _document(await reader.checkpoints(who))


def register_audit(service: AuditService) -> Callable[[grpc.aio.Server], None]:
    """A registrar that adds the audit service to the gateway's gRPC server."""
    return lambda server: pb_grpc.add_AuditApiServicer_to_server(  # type: ignore[no-untyped-call]
        service, server)
