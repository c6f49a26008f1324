"""The 4A (or AIPL) funnel and the flow between stages from one snapshot date to another.

Each is one plan for `QueryEngine.release`: one histogram over the stage (and a dimension, or the stage on two
dates), sensitivity c, with shares derived after the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from cleanroom_client.policy import Policy, QueryType

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError
from ..principals import Principal
from .cells import Cell
from .matched import NONE, Axis, Catalog, Histogram, MatchedData, axis, cells_of, flow_sql, histogram_sql
from .plan import Measurement, Noisy, Plan, QueryAnswer, count_cell, dimension_domain, reader, shares_of
from .queries import STAGE_LABELS_4A, STAGE_LABELS_AIPL, FunnelFlowQuery, FunnelQuery

if TYPE_CHECKING:
    from .engine import QueryEngine

STAGE_COLUMNS = ("stage_4a", "stage_aipl")
_AIPL = dict(zip(STAGE_LABELS_4A, STAGE_LABELS_AIPL, strict=True))
_4A = {v: k for k, v in _AIPL.items()}


def stage_axis(policy: Policy) -> Axis:
    """The policy's 4A (or AIPL) stage dimension, with `none` for people without a stage."""
    for spec in policy.tables.values():
        if spec.table != "users":
            continue
        for column in STAGE_COLUMNS:
            if column in spec.dimensions:  # the stored values, 4A or AIPL names; `_relabel` names the answer
                domain = spec.dimensions[column]
                return Axis(f"{spec.member}.{column}", spec.member, column, (*domain, NONE))
    raise FailedPreconditionError(
        "the policy declares no 4A stage: a users dimension named stage_4a (or stage_aipl) is needed"
    )


def stage_label(value: str, labels: str) -> str:
    """A stored stage under the names the request asked for (`4a` or `aipl`)."""
    if labels == "aipl":
        return _AIPL.get(value, value)
    return _4A.get(value, value)


def relabelled(keys: tuple[tuple[str, ...], ...], labels: str) -> tuple[tuple[str, ...], ...]:
    """Cells' keys with their stages under the names the request asked for."""
    return tuple(tuple(stage_label(k, labels) for k in key) for key in keys)


def relabel(read: Callable[[MatchedData], Histogram], labels: str) -> Callable[[MatchedData], Histogram]:
    """`read`, with its stage keys under the names the request asked for."""

    def read_relabelled(data: MatchedData) -> Histogram:
        h = read(data)
        return Histogram(h.axes, relabelled(h.keys, labels), h.counts)

    return read_relabelled


def funnel(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: FunnelQuery, preview: bool = False
) -> QueryAnswer:
    """Matched people per 4A stage (and `none`), optionally per value of one more dimension; with shares."""

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        stage = stage_axis(collaboration.policy)
        axes: tuple[Axis, ...] = (stage,)
        if q.by is not None:
            axes = (axis(str(q.by), q.by.member, q.by.column, dimension_domain(collaboration.policy, q.by)), stage)
        cells_of(axes)
        read = relabel(reader(axes, histogram_sql(catalog, axes)), q.labels)
        people = Measurement("people", read, q.epsilon, engine.stability(catalog))

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            n = noisy["people"]
            counts = [count_cell(n, keys, "people", min_group) for keys in n.keys]
            return counts + shares_of(n, lambda keys: keys[:-1], "share", min_group)

        keys = relabelled(cells_of(axes), q.labels)
        dims = tuple(a.label for a in axes)
        return engine.histograms(principal, collaboration, q.epsilon, (people,), dims, finish, keys)

    params = {"by": str(q.by) if q.by else "", "labels": q.labels}
    return engine.release(principal, collaboration_id, q, QueryType.FUNNEL, params, build, preview=preview)


def funnel_flow(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: FunnelFlowQuery, preview: bool = False
) -> QueryAnswer:
    """Matched people per (stage on start, stage on end), with each row's shares."""

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        stage = stage_axis(collaboration.policy)
        history = collaboration.policy.table(stage.member, "stage_history")
        if history is None or history.time is None or stage.column not in history.dimensions:
            raise FailedPreconditionError(
                f"the policy must declare {stage.member}.stage_history with a time column and {stage.column}"
            )
        start = Axis(f"{stage.label}@{q.start}", stage.member, stage.column, stage.domain)
        end = Axis(f"{stage.label}@{q.end}", stage.member, stage.column, stage.domain)
        sql = flow_sql(catalog, start, history.time, q.start, q.end)
        read = relabel(reader((start, end), sql), q.labels)
        people = Measurement("people", read, q.epsilon, engine.stability(catalog))

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            n = noisy["people"]
            counts = [count_cell(n, keys, "people", min_group) for keys in n.keys]
            return counts + shares_of(n, lambda keys: keys[0], "row_share", min_group)

        keys = relabelled(cells_of((start, end)), q.labels)
        dims = (start.label, end.label)
        return engine.histograms(principal, collaboration, q.epsilon, (people,), dims, finish, keys)

    params = {"start_date": q.start.isoformat(), "end_date": q.end.isoformat(), "labels": q.labels}
    return engine.release(principal, collaboration_id, q, QueryType.FUNNEL_FLOW, params, build, preview=preview)
