"""AnalyticsService: protobuf in, the query engine, protobuf out.

Every query runs the DP pipeline of `cleanroom.analytics`, after `authorize` (so the access matrix holds before
any argument is looked at). Audiences are listed and fetched only by their recipient.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom_client.policy import Ability, QueryType
from cleanroom_client.protocol import ATTRIBUTION_MODELS, DEFAULT_HALF_LIFE_DAYS, attribution_model_name
from cleanroom_client.protocol import analytics_pb2 as pb
from cleanroom_client.protocol import analytics_pb2_grpc as pb_grpc

from ..analytics import (
    ActivationQuery,
    AttributionQuery,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LookalikeQuery,
    LoyaltyQuery,
    OverlapQuery,
    QueryAnswer,
    QueryEngine,
    SegmentInsightQuery,
    ValueQuery,
    VennQuery,
)
from ..analytics.audiences import AudienceInfo, Audiences, parse_audience_name
from ..analytics.queries import DimensionRef, EventFilter
from ..collaborations import Collaborations, parse_name
from ..errors import InvalidArgumentError
from ..principals import Principal
from .auth import Authenticator


def _filters(raw: Mapping[str, str]) -> tuple[tuple[DimensionRef, str], ...]:
    return tuple((DimensionRef.parse(k), v) for k, v in sorted(raw.items()))


def _period(request: Any) -> int | None:
    """The refresh period a query names (`refresh_period`), or None for the latest completed one."""
    return int(request.refresh_period) if request.HasField("refresh_period") else None


def _audience(a: AudienceInfo) -> pb.Audience:
    created = Timestamp()
    created.FromDatetime(a.create_time)
    return pb.Audience(name=a.name, kind=a.kind, size=a.size, create_time=created, requester=a.requester)


def answer_to_proto(a: QueryAnswer) -> pb.QueryResult:
    """The wire form of an answer."""
    return pb.QueryResult(
        dimensions=list(a.dimensions),
        cells=[
            pb.Cell(keys=list(c.keys), measure=c.measure, value=c.value, error_95=c.error_95, suppressed=c.suppressed)
            for c in a.cells
        ],
        epsilon_spent=a.epsilon_spent,
        epsilon_remaining=a.epsilon_remaining,
        noise_scale=dict(a.noise_scale),
        audit_sequence=a.audit_sequence,
        own_set_size=a.own_set_size,
        audience=a.audience,
    )


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Thin adapter over `QueryEngine`."""

    def __init__(
        self, engine: QueryEngine, collaborations: Collaborations, audiences: Audiences, auth: Authenticator
    ) -> None:
        self._collaborations = collaborations
        self._audiences = audiences
        self._engine = engine
        self._auth = auth

    def Overlap(
        self, request: pb.OverlapRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """Matched people by up to three dimensions."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.OVERLAP)
        q = OverlapQuery(
            tuple(DimensionRef.parse(d) for d in request.dimensions),
            request.epsilon,
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.overlap(principal, parse_name(request.parent), q, preview=preview))

    def Venn(self, request: pb.VennRequest, context: grpc.ServicerContext, preview: bool = False) -> pb.QueryResult:
        """The hub's users by the members they are matched with."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.VENN)
        by = DimensionRef.parse(request.by) if request.by else None
        q = VennQuery(by, request.epsilon, refresh_period=_period(request), with_members=tuple(request.with_members))
        return answer_to_proto(self._engine.venn(principal, parse_name(request.parent), q, preview=preview))

    def Funnel(self, request: pb.FunnelRequest, context: grpc.ServicerContext, preview: bool = False) -> pb.QueryResult:
        """The 4A distribution."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.FUNNEL)
        by = DimensionRef.parse(request.by) if request.by else None
        q = FunnelQuery(
            by,
            request.epsilon,
            request.labels or "4a",
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.funnel(principal, parse_name(request.parent), q, preview=preview))

    def FunnelFlow(
        self, request: pb.FunnelFlowRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """4A transitions between two dates."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.FUNNEL_FLOW)
        q = FunnelFlowQuery(
            FunnelFlowQuery.parse_date(request.start_date, "start_date"),
            FunnelFlowQuery.parse_date(request.end_date, "end_date"),
            request.epsilon,
            request.labels or "4a",
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.funnel_flow(principal, parse_name(request.parent), q, preview=preview))

    def SegmentInsight(
        self, request: pb.SegmentInsightRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """Shares, TGI and penetration per value of a dimension."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.SEGMENT_INSIGHT)
        q = SegmentInsightQuery(
            DimensionRef.parse(request.dimension),
            request.epsilon,
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.segment_insight(principal, parse_name(request.parent), q, preview=preview))

    def Value(self, request: pb.ValueRequest, context: grpc.ServicerContext, preview: bool = False) -> pb.QueryResult:
        """GOAL value: sums and means of a declared measure per group."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.VALUE)
        q = ValueQuery(
            tuple(DimensionRef.parse(d) for d in request.by),
            request.measure,
            request.epsilon,
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.value(principal, parse_name(request.parent), q, preview=preview))

    def Loyalty(
        self, request: pb.LoyaltyRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """GOAL loyalty: repurchase and retention per group."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.LOYALTY)
        date = FunnelFlowQuery.parse_date
        q = LoyaltyQuery(
            tuple(DimensionRef.parse(d) for d in request.by),
            (date(request.period1_start, "period1_start"), date(request.period1_end, "period1_end")),
            (date(request.period2_start, "period2_start"), date(request.period2_end, "period2_end")),
            request.epsilon,
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.loyalty(principal, parse_name(request.parent), q, preview=preview))

    def Attribution(
        self, request: pb.AttributionRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """Multi-touch attribution."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.ATTRIBUTION)
        if request.model not in ATTRIBUTION_MODELS.values():
            raise InvalidArgumentError(f"model must be set: {', '.join(ATTRIBUTION_MODELS)}")
        model = attribution_model_name(request.model)
        q = AttributionQuery(
            model=model,
            lookback_days=request.lookback_days,
            by=request.by or "campaign",
            epsilon=request.epsilon,
            brand_dimension=DimensionRef.parse(request.brand_dimension) if request.brand_dimension else None,
            click_over_view=request.click_over_view,
            half_life_days=request.half_life_days or DEFAULT_HALF_LIFE_DAYS,
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.attribution(principal, parse_name(request.parent), q, preview=preview))

    def Lift(self, request: pb.LiftRequest, context: grpc.ServicerContext, preview: bool = False) -> pb.QueryResult:
        """Lift against the holdout."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.LIFT)
        q = LiftQuery(
            request.campaign, request.epsilon, refresh_period=_period(request), with_members=tuple(request.with_members)
        )
        return answer_to_proto(self._engine.lift(principal, parse_name(request.parent), q, preview=preview))

    def Lookalike(
        self, request: pb.LookalikeRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """DP-SGD lookalike; the audience goes to the platform."""
        principal = self._auth.principal(context)
        return self._lookalike(principal, request, preview)

    def _lookalike(
        self,
        principal: Principal,
        request: pb.LookalikeRequest,
        preview: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.QueryResult:
        self._engine.authorize(principal, parse_name(request.parent), QueryType.LOOKALIKE)
        q = LookalikeQuery(
            seed=_filters(request.seed),
            audience_size=request.audience_size,
            epsilon=request.epsilon,
            delta=request.delta,
            model=request.model or "logistic",
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        answer = self._engine.lookalike(principal, parse_name(request.parent), q, preview=preview, progress=progress)
        return answer_to_proto(answer)

    def LookalikeWithProgress(
        self, request: pb.LookalikeWithProgressRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LookalikeUpdate]:
        """Lookalike with its training's progress streamed first; the answer (or the error) ends the stream."""
        principal = self._auth.principal(context)
        updates: queue.Queue[tuple[int, int] | None] = queue.Queue()
        outcome: dict[str, pb.QueryResult | BaseException] = {}

        def work() -> None:
            try:
                outcome["result"] = self._lookalike(principal, request.lookalike, progress=lambda *s: updates.put(s))
            except BaseException as exc:  # noqa: BLE001 - handed to the stream, which raises it for the mapping
                outcome["error"] = exc
            finally:
                updates.put(None)

        # the worker runs in a copy of the call's context, so the entries it commits are the call's receipts
        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="lookalike", daemon=True)
        worker.start()
        while (step := updates.get()) is not None:
            yield pb.LookalikeUpdate(progress=pb.TrainingProgress(step=step[0], steps=step[1]))
        worker.join()
        error = outcome.get("error")
        if isinstance(error, BaseException):
            raise error
        result = outcome["result"]
        assert isinstance(result, pb.QueryResult)
        yield pb.LookalikeUpdate(result=result)

    def Activate(
        self, request: pb.ActivateRequest, context: grpc.ServicerContext, preview: bool = False
    ) -> pb.QueryResult:
        """A segment's matched people, to the platform."""
        principal = self._auth.principal(context)
        self._engine.authorize(principal, parse_name(request.parent), QueryType.ACTIVATION)
        date = FunnelFlowQuery.parse_date
        events = tuple(
            EventFilter(
                e.table,
                date(e.start_date, "events.start_date"),
                date(e.end_date, "events.end_date"),
                present=not e.absent,
                where=tuple(sorted(e.where.items())),
            )
            for e in request.events
        )
        q = ActivationQuery(
            segment=_filters(request.segment),
            epsilon=request.epsilon,
            delta=request.delta,
            events=events,
            refresh_period=_period(request),
            with_members=tuple(request.with_members),
        )
        return answer_to_proto(self._engine.activate(principal, parse_name(request.parent), q, preview=preview))

    def Preview(self, request: pb.PreviewRequest, context: grpc.ServicerContext) -> pb.QueryResult:
        """Each released vector's 95% error bar for the query inside, from the request and the policy alone."""
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgumentError("name the query to preview, e.g. preview { attribution { ... } }")
        return _PREVIEWED[kind](self, getattr(request, kind), context, True)

    def ListAudiences(
        self, request: pb.ListAudiencesRequest, context: grpc.ServicerContext
    ) -> pb.ListAudiencesResponse:
        """The audiences released to the caller."""
        principal = self._auth.principal(context)
        collaboration = self._collaborations.require_active(
            principal, parse_name(request.parent), Ability.RECEIVE_AUDIENCES, "audience.list"
        )
        return pb.ListAudiencesResponse(
            audiences=[_audience(a) for a in self._audiences.list(collaboration.id, principal.name)]
        )

    def FetchAudience(
        self, request: pb.FetchAudienceRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchAudienceResponse]:
        """One audience's row ids, to its recipient only."""
        principal = self._auth.principal(context)
        collaboration_id, audience = parse_audience_name(request.name)
        self._collaborations.require_active(principal, collaboration_id, Ability.RECEIVE_AUDIENCES, "audience.fetch")
        for chunk in self._audiences.fetch(collaboration_id, audience, principal.name):
            if not context.is_active():
                return
            yield pb.FetchAudienceResponse(row_ids=chunk)

    def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:
        """Epsilon and delta total, spent and left per member (members and assigned auditors)."""
        collaboration, rows = self._engine.budget(self._auth.principal(context), parse_name(request.parent))
        policy = collaboration.policy
        return pb.Budget(
            members=[
                pb.MemberBudget(
                    member=s.member,
                    epsilon_total=s.total,
                    epsilon_spent=s.spent,
                    epsilon_remaining=s.remaining,
                    delta_total=s.delta_total,
                    delta_spent=s.delta_spent,
                    delta_remaining=s.delta_remaining,
                    since_sequence=s.since_sequence,
                )
                for s in rows
            ],
            epsilon_per_query_max=policy.epsilon_per_query_max,
            epsilon_per_query_min=policy.epsilon_per_query_min,
            delta_per_query_max=policy.delta_per_query_max,
        )


#: The query a PreviewRequest names -> its handler (called with preview=True).
_PREVIEWED: dict[str, Callable[..., pb.QueryResult]] = {
    "overlap": AnalyticsServicer.Overlap,
    "venn": AnalyticsServicer.Venn,
    "funnel": AnalyticsServicer.Funnel,
    "funnel_flow": AnalyticsServicer.FunnelFlow,
    "segment_insight": AnalyticsServicer.SegmentInsight,
    "value": AnalyticsServicer.Value,
    "loyalty": AnalyticsServicer.Loyalty,
    "attribution": AnalyticsServicer.Attribution,
    "lift": AnalyticsServicer.Lift,
    "lookalike": AnalyticsServicer.Lookalike,
    "activate": AnalyticsServicer.Activate,
}
