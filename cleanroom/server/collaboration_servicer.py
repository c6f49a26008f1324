"""CollaborationService: protobuf in, domain call, protobuf out."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom_client.protocol import collaboration_pb2 as pb
from cleanroom_client.protocol import collaboration_pb2_grpc as pb_grpc

from ..collaborations import Collaboration, Collaborations, parse_name
from .auth import Authenticator


def collaboration_to_proto(c: Collaboration) -> pb.Collaboration:
    """The wire form of a collaboration."""
    created = Timestamp()
    created.FromDatetime(c.create_time)
    return pb.Collaboration(
        name=c.name,
        display_name=c.display_name,
        state=pb.COLLABORATION_STATE_ACTIVE if c.active else pb.COLLABORATION_STATE_AWAITING_APPROVAL,
        policy=pb.Policy(yaml=c.policy_yaml, revision=c.policy_revision, etag=c.policy_etag, proposer=c.proposer),
        members=[pb.Member(name=m.name, abilities=sorted(m.abilities), approved=m.approved) for m in c.members],
        create_time=created,
    )


class CollaborationServicer(pb_grpc.CollaborationServiceServicer):
    """Thin adapter over `Collaborations`."""

    def __init__(self, collaborations: Collaborations, auth: Authenticator) -> None:
        self._collaborations = collaborations
        self._auth = auth

    def CreateCollaboration(
        self, request: pb.CreateCollaborationRequest, context: grpc.ServicerContext
    ) -> pb.Collaboration:
        """Create with a proposed policy."""
        principal = self._auth.principal(context)
        return collaboration_to_proto(
            self._collaborations.create(principal, request.collaboration_id, request.policy_yaml)
        )

    def GetCollaboration(self, request: pb.GetCollaborationRequest, context: grpc.ServicerContext) -> pb.Collaboration:
        """Get one."""
        principal = self._auth.principal(context)
        return collaboration_to_proto(self._collaborations.get(principal, parse_name(request.name)))

    def ListCollaborations(
        self, request: pb.ListCollaborationsRequest, context: grpc.ServicerContext
    ) -> pb.ListCollaborationsResponse:
        """List the caller's."""
        principal = self._auth.principal(context)
        page, token = self._collaborations.list(principal, request.page_size, request.page_token)
        return pb.ListCollaborationsResponse(
            collaborations=[collaboration_to_proto(c) for c in page],
            next_page_token=token,
            caller=principal.name,
            caller_role=principal.role.value,
        )

    def ProposePolicy(self, request: pb.ProposePolicyRequest, context: grpc.ServicerContext) -> pb.Collaboration:
        """Propose a new revision."""
        principal = self._auth.principal(context)
        return collaboration_to_proto(
            self._collaborations.propose(principal, parse_name(request.name), request.policy_yaml)
        )

    def ApprovePolicy(self, request: pb.ApprovePolicyRequest, context: grpc.ServicerContext) -> pb.Collaboration:
        """Approve the current revision."""
        principal = self._auth.principal(context)
        return collaboration_to_proto(self._collaborations.approve(principal, parse_name(request.name), request.etag))
