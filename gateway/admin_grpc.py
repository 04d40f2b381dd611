"""gRPC adapter of the routing admin API (`aios.admin.v1.RoutingAdmin`, proto/)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from aios.errors import InvalidInput
from aios.plane import header_value
from gateway.admin import (
    ReplaceBody,
    ResolveBody,
    RoutingAdmin,
    ShadowBody,
    WeightsBody,
    parse,
)
from gateway.admin_rest import AdminAuth
from gateway.proposals import APPROVE_SCOPE, Proposal
from gateway.rollout import Plan, Rollout
from gateway.rollout_rest import ACTION_SCOPES
from gateway.rollouts import Rollouts, view
from gateway.routing import ModelTable
from proto import routing_admin_pb2 as pb
from proto import routing_admin_pb2_grpc as pb_grpc


def shadow_doc(shadow: pb.Shadow) -> dict[str, Any]:
    """A proto Shadow as the REST body shape."""
    doc: dict[str, Any] = {"backend": shadow.backend, "model": shadow.model,
                           "version": shadow.version, "fraction": shadow.fraction,
                           "output": shadow.output}
    if shadow.HasField("threshold"):
        doc["threshold"] = shadow.threshold
    if shadow.timeout_s:
        doc["timeout_s"] = shadow.timeout_s
    return doc


def route_message(view: dict[str, Any]) -> pb.ModelRoute:
    """The REST view of a table as a proto ModelRoute."""
    msg = pb.ModelRoute(model=view["model"], revision=view["revision"], sticky=view["sticky"])
    for name, t in view["targets"].items():
        msg.targets.add(name=name, backend=t["backend"], version=t["version"],
                        weight=t["weight"], timeout_s=t.get("timeout_s") or 0.0,
                        ejected=t["ejected"])
    if view["shadow"] is not None:
        s = view["shadow"]
        msg.shadow.CopyFrom(pb.Shadow(backend=s["backend"], model=s["model"],
                                      version=s["version"], fraction=s["fraction"],
                                      output=s["output"], timeout_s=s["timeout_s"]))
        if s["threshold"] is not None:
            msg.shadow.threshold = s["threshold"]
    return msg


def proposal_message(proposal: Proposal) -> pb.Proposal:
    doc = proposal.to_json()
    return pb.Proposal(body_json=json.dumps(doc.pop("body"), sort_keys=True), **doc)


def rollout_message(rollout: Rollout) -> pb.Rollout:
    return pb.Rollout(id=rollout.id, model=rollout.model, state=rollout.state,
                      step=rollout.step, percent=rollout.target_percent, stable=rollout.stable,
                      candidate=rollout.candidate,
                      document_json=json.dumps(view(rollout), sort_keys=True))


class RoutingAdminService(pb_grpc.RoutingAdminServicer):
    """The same operations as REST /admin/routes and /admin/rollouts; errors mapped by
    ErrorInterceptor."""

    def __init__(self, admin: RoutingAdmin, rollouts: Rollouts, auth: AdminAuth) -> None:
        self._admin = admin
        self._rollouts = rollouts
        self._auth = auth

    async def _who(self, context: grpc.aio.ServicerContext, scope: str) -> str:
        metadata = context.invocation_metadata() or ()
        return await self._auth.subject(header_value(metadata, "authorization"), scope)

    async def ListRoutes(self, request: pb.ListRoutesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListRoutesResponse:
        await self._who(context, "routes:read")
        return pb.ListRoutesResponse(
            routes=[route_message(self._admin.view(t)) for t in self._admin.tables()])

    async def GetRoute(self, request: pb.GetRouteRequest,
                       context: grpc.aio.ServicerContext) -> pb.ModelRoute:
        await self._who(context, "routes:read")
        return route_message(self._admin.view(self._admin.get(request.model)))

    async def ReplaceRoute(self, request: pb.ReplaceRouteRequest,
                           context: grpc.aio.ServicerContext) -> pb.ModelRoute:
        who = await self._who(context, "routes:write")
        targets = {t.name: {"backend": t.backend, "version": t.version, "weight": t.weight,
                            **({"timeout_s": t.timeout_s} if t.timeout_s else {})}
                   for t in request.targets}
        body = parse(ReplaceBody, {
            "base_revision": request.base_revision, "reason": request.reason,
            "targets": targets, "sticky": request.sticky or "none",
            "shadow": shadow_doc(request.shadow) if request.HasField("shadow") else None})
        return self._answer(request.model, await self._admin.replace(request.model, body, who))

    async def SetWeights(self, request: pb.SetWeightsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelRoute:
        who = await self._who(context, "routes:write")
        body = parse(WeightsBody, {"base_revision": request.base_revision,
                                   "reason": request.reason, "weights": dict(request.weights)})
        return self._answer(request.model,
                            await self._admin.set_weights(request.model, body, who))

    async def SetShadow(self, request: pb.SetShadowRequest,
                        context: grpc.aio.ServicerContext) -> pb.ModelRoute:
        who = await self._who(context, "routes:write")
        body = parse(ShadowBody, {
            "base_revision": request.base_revision, "reason": request.reason,
            "shadow": shadow_doc(request.shadow) if request.HasField("shadow") else None})
        return self._answer(request.model,
                            await self._admin.set_shadow(request.model, body, who))

    def _answer(self, model: str, result: ModelTable | Proposal) -> pb.ModelRoute:
        """The new table; or, for a change kept as a proposal, the table as it is and the
        proposal's id."""
        if isinstance(result, Proposal):
            msg = route_message(self._admin.view(self._admin.get(model)))
            msg.proposal_id = result.id
            return msg
        return route_message(self._admin.view(result))

    async def History(self, request: pb.HistoryRequest,
                      context: grpc.aio.ServicerContext) -> pb.HistoryResponse:
        await self._who(context, "routes:read")
        changes = await self._admin.history(request.model or None, request.limit or None)
        return pb.HistoryResponse(changes=[
            pb.Change(model=c.model, revision=c.revision, who=c.who, at=c.at, action=c.action,
                      reason=c.reason, before_json=json.dumps(c.before) if c.before else "",
                      after_json=json.dumps(c.after), approved_by=c.approved_by,
                      approval_reason=c.approval_reason, proposal_id=c.proposal_id,
                      evidence_json=json.dumps(c.evidence) if c.evidence else "")
            for c in changes])

    async def ListProposals(self, request: pb.ListProposalsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListProposalsResponse:
        await self._who(context, "routes:read")
        found = await self._admin.proposals(request.model or None, request.state or None)
        return pb.ListProposalsResponse(proposals=[proposal_message(p) for p in found])

    async def Approve(self, request: pb.AnswerRequest,
                      context: grpc.aio.ServicerContext) -> pb.Proposal:
        who = await self._who(context, APPROVE_SCOPE)
        proposal, _ = await self._admin.approve(request.id, who, request.reason)
        return proposal_message(proposal)

    async def Reject(self, request: pb.AnswerRequest,
                     context: grpc.aio.ServicerContext) -> pb.Proposal:
        who = await self._who(context, APPROVE_SCOPE)
        return proposal_message(await self._admin.reject(request.id, who, request.reason))

    async def Rollback(self, request: pb.RollbackRequest,
                       context: grpc.aio.ServicerContext) -> pb.ModelRoute:
        who = await self._who(context, "routes:write")
        return route_message(self._admin.view(await self._admin.rollback(
            request.model, who, request.reason)))

    async def StartRollout(self, request: pb.StartRolloutRequest,
                           context: grpc.aio.ServicerContext) -> pb.Rollout:
        who = await self._who(context, "routes:write")
        try:
            plan = parse(Plan, json.loads(request.plan_json or "{}"))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"plan_json: not valid JSON: {exc}") from exc
        return rollout_message(await self._rollouts.start(request.model, plan, who))

    async def GetRollout(self, request: pb.GetRolloutRequest,
                         context: grpc.aio.ServicerContext) -> pb.Rollout:
        await self._who(context, "routes:read")
        return rollout_message(await self._rollouts.current(request.model))

    async def ListRollouts(self, request: pb.ListRolloutsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListRolloutsResponse:
        await self._who(context, "routes:read")
        return pb.ListRolloutsResponse(rollouts=[
            rollout_message(r) for r in await self._rollouts.list(request.model or None)])

    async def RolloutAction(self, request: pb.RolloutActionRequest,
                            context: grpc.aio.ServicerContext) -> pb.Rollout:
        if request.action not in ACTION_SCOPES:
            raise InvalidInput(f"action: one of {', '.join(ACTION_SCOPES)}, got "
                               f"{request.action!r}")
        who = await self._who(context, ACTION_SCOPES[request.action])
        body = parse(ResolveBody, {"reason": request.reason})
        return rollout_message(await self._rollouts.act(request.model, request.action, who,
                                                        body.reason))


def register_admin(service: RoutingAdminService) -> Callable[[grpc.aio.Server], None]:
    """A registrar that adds the admin service to the gateway's gRPC server."""
    return lambda server: pb_grpc.add_RoutingAdminServicer_to_server(  # type: ignore[no-untyped-call]
        service, server)
