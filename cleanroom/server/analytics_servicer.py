"""AnalyticsService: protobuf in, the query engine, protobuf out.

Every query declared in `cleanroom_client.query_types` is answered by one handler, `_ask`: `authorize` (so the
access matrix holds before any argument is looked at), the request read into its domain query (`_READ`), then the
DP pipeline of `cleanroom.analytics`. Preview is the same handler with `preview`. Audiences are listed and fetched
only by their recipient.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom_client.policy import Ability
from cleanroom_client.protocol import ATTRIBUTION_MODELS, DEFAULT_HALF_LIFE_DAYS, attribution_model_name, result_fields
from cleanroom_client.protocol import analytics_pb2 as pb
from cleanroom_client.protocol import analytics_pb2_grpc as pb_grpc
from cleanroom_client.query_types import BY_NAME, QUERIES

from ..analytics import QueryAnswer, QueryEngine
from ..analytics import queries as q
from ..analytics.audiences import AudienceInfo, Audiences, parse_audience_name
from ..analytics.plan import TYPICAL_GROUP, Typical
from ..collaborations import Collaborations, parse_name
from ..errors import InvalidArgumentError
from .auth import Authenticator


def _filters(raw: Mapping[str, str]) -> tuple[tuple[q.DimensionRef, str], ...]:
    return tuple((q.DimensionRef.parse(k), v) for k, v in sorted(raw.items()))


def _period(request: Any) -> int | None:
    """The refresh period a query names (`refresh_period`), or None for the latest completed one."""
    return int(request.refresh_period) if request.HasField("refresh_period") else None


def _audience(a: AudienceInfo) -> pb.Audience:
    created = Timestamp()
    created.FromDatetime(a.create_time)
    return pb.Audience(name=a.name, kind=a.kind, size=a.size, create_time=created, requester=a.requester)


def answer_to_proto(a: QueryAnswer) -> pb.QueryResult:
    """The wire form of an answer."""
    needed = a.epsilon_needed or (0.0,) * len(a.cells)
    result = pb.QueryResult(
        dimensions=list(a.dimensions),
        cells=[
            pb.Cell(
                keys=list(c.keys),
                measure=c.measure,
                value=c.value,
                error_95=c.error_95,
                suppressed=c.suppressed,
                reason=c.reason,
                epsilon_needed=e,
            )
            for c, e in zip(a.cells, needed, strict=True)
        ],
        **result_fields(a),
    )
    if a.refresh_period is not None:
        result.refresh_period = a.refresh_period
    return result


def _handler(name: str) -> Callable[..., pb.QueryResult]:
    """The RPC handler of declared query `name`: `AnalyticsServicer._ask` with its name."""

    def handle(self: AnalyticsServicer, request: Any, context: grpc.ServicerContext) -> pb.QueryResult:
        return self._ask(name, request, context)

    handle.__name__ = handle.__qualname__ = BY_NAME[name].rpc
    handle.__doc__ = BY_NAME[name].what
    return handle


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Thin adapter over `QueryEngine`."""

    #: Each query's name (its `PreviewRequest` field, `cleanroom_client.query_types`) -> its handler.
    QUERIES: ClassVar[Mapping[str, Callable[..., pb.QueryResult]]]

    def __init__(
        self, engine: QueryEngine, collaborations: Collaborations, audiences: Audiences, auth: Authenticator
    ) -> None:
        self._collaborations = collaborations
        self._audiences = audiences
        self._engine = engine
        self._auth = auth

    # One handler per declared query, under its RPC's name (tests/unit/test_query_types.py checks each has one).
    Overlap = _handler("overlap")
    Venn = _handler("venn")
    Funnel = _handler("funnel")
    FunnelFlow = _handler("funnel_flow")
    SegmentInsight = _handler("segment_insight")
    Value = _handler("value")
    Loyalty = _handler("loyalty")
    Attribution = _handler("attribution")
    Lift = _handler("lift")
    Lookalike = _handler("lookalike")
    Activate = _handler("activate")

    def _ask(
        self,
        name: str,
        request: Any,
        context: grpc.ServicerContext,
        preview: bool | Typical = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> pb.QueryResult:
        """Any declared query: authorize (before any argument is looked at), read the request, run the engine."""
        declared = BY_NAME[name]
        principal = self._auth.principal(context)
        collaboration_id = parse_name(request.parent)
        self._engine.authorize(principal, collaboration_id, declared.policy_type)
        query = _READ[name](request)
        run = getattr(self._engine, declared.method)
        extra = {"progress": progress} if progress is not None else {}
        return answer_to_proto(run(principal, collaboration_id, query, preview=preview, **extra))

    def LookalikeWithProgress(
        self, request: pb.LookalikeWithProgressRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LookalikeUpdate]:
        """Lookalike with its training's progress streamed first; the answer (or the error) ends the stream."""
        updates: queue.Queue[tuple[int, int] | None] = queue.Queue()
        outcome: dict[str, pb.QueryResult | BaseException] = {}

        def work() -> None:
            try:
                outcome["result"] = self._ask(
                    "lookalike", request.lookalike, context, progress=lambda *s: updates.put(s)
                )
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

    def Preview(self, request: pb.PreviewRequest, context: grpc.ServicerContext) -> pb.QueryResult:
        """Each released vector's 95% error bar for the query inside, from the request and the policy alone."""
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgumentError("name the query to preview, e.g. preview { attribution { ... } }")
        return self._ask(kind, getattr(request, kind), context, preview=typical(request))

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


def typical(request: pb.PreviewRequest) -> Typical:
    """What a preview assumes and solves for, from its request (0: the defaults), as sent.

    Checked by the engine (`engine.check_typical`) once the caller may ask the query, and refused as the query's
    own arguments are (audited); the edge has already refused a NaN or an infinity in any of them.
    """
    group = request.typical_group or TYPICAL_GROUP
    return Typical(group, dict(request.typical), request.within or 0.0)


def _scope(request: Any) -> dict[str, Any]:
    """What every query names of the data it reads: the refresh period and the population."""
    return {"refresh_period": _period(request), "with_members": tuple(request.with_members)}


def _dimensions(names: Iterable[str]) -> tuple[q.DimensionRef, ...]:
    return tuple(q.DimensionRef.parse(d) for d in names)


def _optional(name: str) -> q.DimensionRef | None:
    return q.DimensionRef.parse(name) if name else None


def _attribution(r: pb.AttributionRequest) -> q.AttributionQuery:
    if r.model not in ATTRIBUTION_MODELS.values():
        raise InvalidArgumentError(f"model must be set: {', '.join(ATTRIBUTION_MODELS)}")
    return q.AttributionQuery(
        model=attribution_model_name(r.model),
        lookback_days=r.lookback_days,
        by=r.by or "campaign",
        epsilon=r.epsilon,
        brand_dimension=_optional(r.brand_dimension),
        click_over_view=r.click_over_view,
        half_life_days=r.half_life_days or DEFAULT_HALF_LIFE_DAYS,
        **_scope(r),
    )


def _event(e: pb.EventFilter) -> q.EventFilter:
    date = q.FunnelFlowQuery.parse_date
    start, end = date(e.start_date, "events.start_date"), date(e.end_date, "events.end_date")
    return q.EventFilter(e.table, start, end, present=not e.absent, where=tuple(sorted(e.where.items())))


def _date(text: str, field: str) -> Any:
    return q.FunnelFlowQuery.parse_date(text, field)


#: Each declared query (`cleanroom_client.query_types`) -> its domain query, read from the request. Reading
#: refuses what is malformed (INVALID_ARGUMENT); the engine checks the rest against the policy.
_READ: dict[str, Callable[[Any], Any]] = {
    "overlap": lambda r: q.OverlapQuery(_dimensions(r.dimensions), r.epsilon, **_scope(r)),
    "venn": lambda r: q.VennQuery(_optional(r.by), r.epsilon, **_scope(r)),
    "funnel": lambda r: q.FunnelQuery(_optional(r.by), r.epsilon, r.labels or "4a", **_scope(r)),
    "funnel_flow": lambda r: q.FunnelFlowQuery(
        _date(r.start_date, "start_date"), _date(r.end_date, "end_date"), r.epsilon, r.labels or "4a", **_scope(r)
    ),
    "segment_insight": lambda r: q.SegmentInsightQuery(q.DimensionRef.parse(r.dimension), r.epsilon, **_scope(r)),
    "value": lambda r: q.ValueQuery(_dimensions(r.by), r.measure, r.epsilon, **_scope(r)),
    "loyalty": lambda r: q.LoyaltyQuery(
        _dimensions(r.by),
        (_date(r.period1_start, "period1_start"), _date(r.period1_end, "period1_end")),
        (_date(r.period2_start, "period2_start"), _date(r.period2_end, "period2_end")),
        r.epsilon,
        **_scope(r),
    ),
    "attribution": _attribution,
    "lift": lambda r: q.LiftQuery(r.campaign, r.epsilon, **_scope(r)),
    "lookalike": lambda r: q.LookalikeQuery(
        seed=_filters(r.seed),
        audience_size=r.audience_size,
        epsilon=r.epsilon,
        delta=r.delta,
        model=r.model or "logistic",
        **_scope(r),
    ),
    "activate": lambda r: q.ActivationQuery(
        segment=_filters(r.segment),
        epsilon=r.epsilon,
        delta=r.delta,
        events=tuple(_event(e) for e in r.events),
        **_scope(r),
    ),
}


AnalyticsServicer.QUERIES = {d.name: getattr(AnalyticsServicer, d.rpc) for d in QUERIES}
