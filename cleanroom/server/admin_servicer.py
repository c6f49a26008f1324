"""AdminService, served only on the data directory's Unix socket: the operator's commands while the server runs."""

from __future__ import annotations

import grpc

from cleanroom_client.protocol import admin_pb2 as pb
from cleanroom_client.protocol import admin_pb2_grpc as pb_grpc

from ..collaborations import parse_name, require_exists
from ..errors import InvalidArgumentError
from ..principals import Principals, Role
from ..storage import Store

_ROLES = {pb.ROLE_MEMBER: Role.MEMBER, pb.ROLE_AUDITOR: Role.AUDITOR}


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Thin adapter over `Principals` and the match statistics."""

    def __init__(self, store: Store, principals: Principals) -> None:
        self._store = store
        self._principals = principals

    def AddPrincipal(self, request: pb.AddPrincipalRequest, context: grpc.ServicerContext) -> pb.AddPrincipalResponse:
        """Register a principal."""
        role = _ROLES.get(request.role)
        if role is None:
            raise InvalidArgumentError("role must be member or auditor")
        return pb.AddPrincipalResponse(token=self._principals.add(request.name, role))

    def RevokePrincipal(
        self, request: pb.RevokePrincipalRequest, context: grpc.ServicerContext
    ) -> pb.RevokePrincipalResponse:
        """Revoke a principal."""
        self._principals.revoke(request.name)
        return pb.RevokePrincipalResponse()

    def RotateToken(self, request: pb.RotateTokenRequest, context: grpc.ServicerContext) -> pb.RotateTokenResponse:
        """Issue a new token."""
        return pb.RotateTokenResponse(token=self._principals.rotate(request.name))

    def AssignAuditor(
        self, request: pb.AssignAuditorRequest, context: grpc.ServicerContext
    ) -> pb.AssignAuditorResponse:
        """Assign an auditor to a collaboration."""
        self._principals.assign_auditor(request.auditor, parse_name(request.collaboration))
        return pb.AssignAuditorResponse()

    def GetMatchStats(
        self, request: pb.GetMatchStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetMatchStatsResponse:
        """Exact counts."""
        from ..matching import match_stats  # here: the matching package is heavy and other commands never need it

        collaboration_id = parse_name(request.collaboration)
        require_exists(self._store.catalog.cursor(), collaboration_id)
        stats, total = match_stats(self._store.of(collaboration_id).cursor(), collaboration_id)
        return pb.GetMatchStatsResponse(
            identifier_types=[
                pb.IdentifierMatchStats(identifier_type=s.id_type.value, shared_keys=s.shared_keys, pairs=s.pairs)
                for s in stats
            ],
            matched_people=total,
        )
