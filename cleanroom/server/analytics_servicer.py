"""AnalyticsService: authorization now, the DP queries in the next issue.

Each method checks who may call it before anything else, so the access matrix holds already: a member whose
policy grants `query` passes and then gets UNIMPLEMENTED until the differential-privacy issue lands; anyone else
gets PERMISSION_DENIED (and the refusal is audited). No method computes or releases anything yet.
"""

from __future__ import annotations

import grpc

from cleanroom_client._proto import analytics_pb2 as pb
from cleanroom_client._proto import analytics_pb2_grpc as pb_grpc

from ..collaborations import Collaborations, parse_name
from .auth import Authenticator

QUERY = "query"


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Authorizes every query; the queries themselves are not built yet."""

    def __init__(self, collaborations: Collaborations, auth: Authenticator) -> None:
        self._collabs = collaborations
        self._auth = auth

    def _query(self, parent: str, context: grpc.ServicerContext, action: str) -> None:
        self._collabs.require_active(self._auth.principal(context), parse_name(parent), QUERY, action)
        raise NotImplementedError(action)

    def Overlap(self, request: pb.OverlapRequest, context: grpc.ServicerContext) -> pb.QueryResult:  # noqa: N802
        """Not yet."""
        self._query(request.parent, context, "query.overlap")
        return pb.QueryResult()

    def Funnel(self, request: pb.FunnelRequest, context: grpc.ServicerContext) -> pb.QueryResult:  # noqa: N802
        """Not yet."""
        self._query(request.parent, context, "query.funnel")
        return pb.QueryResult()

    def FunnelFlow(self, request: pb.FunnelFlowRequest, context: grpc.ServicerContext) -> pb.QueryResult:  # noqa: N802
        """Not yet."""
        self._query(request.parent, context, "query.funnel_flow")
        return pb.QueryResult()

    def SegmentInsight(  # noqa: N802
        self, request: pb.SegmentInsightRequest, context: grpc.ServicerContext
    ) -> pb.QueryResult:
        """Not yet."""
        self._query(request.parent, context, "query.segment_insight")
        return pb.QueryResult()

    def Attribution(  # noqa: N802
        self, request: pb.AttributionRequest, context: grpc.ServicerContext
    ) -> pb.QueryResult:
        """Not yet."""
        self._query(request.parent, context, "query.attribution")
        return pb.QueryResult()

    def Lift(self, request: pb.LiftRequest, context: grpc.ServicerContext) -> pb.QueryResult:  # noqa: N802
        """Not yet."""
        self._query(request.parent, context, "query.lift")
        return pb.QueryResult()

    def Lookalike(  # noqa: N802
        self, request: pb.LookalikeRequest, context: grpc.ServicerContext
    ) -> pb.LookalikeResult:
        """Not yet."""
        self._query(request.parent, context, "query.lookalike")
        return pb.LookalikeResult()

    def Activate(self, request: pb.ActivateRequest, context: grpc.ServicerContext) -> pb.ActivateResult:  # noqa: N802
        """Not yet."""
        self._query(request.parent, context, "query.activation")
        return pb.ActivateResult()

    def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:  # noqa: N802
        """Members and assigned auditors may read the budget; the ledger arrives with the DP issue."""
        self._collabs.get(self._auth.principal(context), parse_name(request.parent), "budget.get")
        raise NotImplementedError("budget.get")
