"""The query pipeline: every release a member receives (numbers and audiences alike) passes through `_release`.

In this order, the same for every query type:

1. authorize: a member with `query` in an active collaboration (refusals audited, nothing spent);
2. validate against the request, the policy and the catalog only (`matched.Catalog`: metadata, never a row of
   people's data): the caller receives results, the query type is allowed, per_query_min <= epsilon <=
   per_query_max, delta within its cap, dimensions declared, tables uploaded. The result is a `Plan`: what will be
   read, the sensitivity of every released vector, and what is charged to whom. A refusal here depends on nothing
   but the request, the policy and public metadata, spends nothing, and is written to the audit log with its
   reason;
   A preview stops here: it answers each released vector's 95% error bar (`Plan.stated`: sensitivity, epsilon and
   unit, all decided in this step), spends nothing and reads no data;
3. reserve the plan's charges (the requester's, and the recipient's for audiences) or refuse, spending nothing;
4. read data (`matched.MatchedData` is opened only now), aggregate exactly, clamp, add OpenDP noise, post-process,
   and debit the reservation with the audit entry in one transaction (with the audience, if any) -> respond.

After step 3 every outcome is charged: the computations are total (nothing they do can fail because of the
data: domains are enforced at upload, time decay is relative to the newest touch, lift groups are fixed by the
policy), and if anything still fails (a crash, memory), the whole reservation is charged with a `query.failed`
entry and the caller gets one uniform error. A reservation left open by a stop is charged at the next start.

Sensitivities: every vector's L1 sensitivity per matched pair is multiplied by the join's stability constant c
(`cleanroom.matching.join.stability_constant`, from the number of identifier types the policy allows), since one
users-table row of either member changes at most c pairs. Histograms over all of one member's users (segment
insight's denominator) do not go through the join: sensitivity 1.

How epsilon is split within one query: overlap, funnel and funnel flow release one histogram and spend all of it;
segment insight releases two (matched people, and all of the member's users) and gives each half; value quarters
(people, buyers, orders, sum); loyalty releases one histogram (group x state) and spends all of it; attribution
halves (conversions, revenue); lift quarters (people, converters, revenue, revenue squared); lookalike spends 40%
on its quality estimate and the rest on DP-SGD; activation spends it all on the noisy size that gates the
release.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cleanroom_client.policy import Ability, Policy, QueryType, RefreshBudget

from ..audit import AuditLog
from ..collaborations import Collaboration, Collaborations
from ..errors import (
    CleanroomError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    QueryFailedError,
)
from ..matching.periods import budget_start
from ..principals import Principal
from ..privacy import BudgetAccountant, NoiseMechanism
from ..privacy import noise as noise_math
from ..privacy.budget import Charge, Limits
from ..storage import Store
from .attribution import (
    ANY_OF,
    CENTS,
    MILLI,
    attribution_sql,
    check_attribution,
    event_tables,
    exposure_domain,
    group_axis,
    lift_sql,
)
from .audiences import AudienceInfo
from .audiences import store as store_audience
from .cells import Z95, Cell, fraction, quotient, ratio, share, withheld
from .goal import conversions_table, loyalty_sql, measure_spec, state_axis, value_sql
from .lookalike import (
    QUALITY_SHARE,
    _filters,
    audience_counts,
    quality_cells,
    segment_sql,
    top,
    train,
    training_data,
    training_noise,
    training_plan,
)
from .matched import (
    MATCHED,
    NONE,
    Axis,
    Catalog,
    Histogram,
    MatchedData,
    Sql,
    all_users_sql,
    axis,
    cells_of,
    clamp,
    fill_histogram,
    flow_sql,
    histogram_sql,
    venn_axes,
    venn_sql,
)
from .queries import (
    STAGE_LABELS_4A,
    STAGE_LABELS_AIPL,
    ActivationQuery,
    AttributionQuery,
    DimensionRef,
    EventFilter,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LookalikeQuery,
    LoyaltyQuery,
    OverlapQuery,
    Scoped,
    SegmentInsightQuery,
    ValueQuery,
    VennQuery,
)
from .segments import check_segment

log = logging.getLogger(__name__)

STAGE_COLUMNS = ("stage_4a", "stage_aipl")
_AIPL = dict(zip(STAGE_LABELS_4A, STAGE_LABELS_AIPL, strict=True))
_4A = {v: k for k, v in _AIPL.items()}


@dataclass(frozen=True)
class Noisy:
    """A vector after noise: its keys and noisy values, the scale, its variance. It holds no exact value."""

    keys: tuple[tuple[str, ...], ...]
    values: tuple[int, ...]
    scale: float

    @property
    def variance(self) -> float:
        """Variance of each cell's noise."""
        return noise_math.variance(self.scale)

    @property
    def error_95(self) -> int:
        """95% bound of each cell's noise."""
        return noise_math.error_95(self.scale)


@dataclass(frozen=True)
class Stated:
    """What a plan states about one released vector before any data is read.

    Its epsilon, its L1 sensitivity, and the unit its integers count (100: cents, 1000: thousandths), so its 95%
    error bar is known in advance.
    """

    name: str
    epsilon: float
    sensitivity: int
    unit: int = 1

    @property
    def error_95(self) -> float:
        """The 95% bound of each cell's noise, in the released unit (currency, conversions, people)."""
        return noise_math.error_95(self.sensitivity / self.epsilon) / self.unit


@dataclass(frozen=True)
class Measurement:
    """One released vector: how to read its exact values, the epsilon it gets, its L1 sensitivity, its unit."""

    name: str
    read: Callable[[MatchedData], Histogram]
    epsilon: float
    sensitivity: int
    unit: int = 1

    @property
    def stated(self) -> Stated:
        """The vector's statement without its reader."""
        return Stated(self.name, self.epsilon, self.sensitivity, self.unit)


@dataclass(frozen=True)
class AudienceRelease:
    """An audience a query releases: stored with the query's audit entry, for the recipient alone."""

    kind: str
    recipient: str
    row_ids: np.ndarray


@dataclass(frozen=True)
class Outcome:
    """What a plan's run releases (built from noisy values and DP outputs only)."""

    dimensions: tuple[str, ...]
    cells: tuple[Cell, ...]
    noise_scale: Mapping[str, float]
    audience: AudienceRelease | None = None


@dataclass(frozen=True)
class Plan:
    """A validated query: everything it will read, release and charge, decided without reading any data."""

    charges: tuple[Charge, ...]
    run: Callable[[MatchedData], Outcome]
    #: Every vector the run releases with noise (for `preview`).
    stated: tuple[Stated, ...] = ()


@dataclass(frozen=True)
class QueryAnswer:
    """What the querying member receives."""

    dimensions: tuple[str, ...]
    cells: tuple[Cell, ...]
    epsilon_spent: float
    epsilon_remaining: float
    noise_scale: Mapping[str, float]
    audit_sequence: int
    own_set_size: int = field(default=0)
    #: The audience released to the recipient (lookalike, activation).
    audience: str = ""


def _dimension(policy: Policy, ref: DimensionRef) -> tuple[str, ...]:
    spec = policy.table(ref.member, "users")
    if spec is None or ref.column not in spec.dimensions:
        declared = [f"{t.member}.{c}" for t in policy.tables.values() if t.table == "users" for c in t.dimensions]
        raise InvalidArgumentError(f"{ref} is not a declared dimension of a users table (declared: {declared})")
    return spec.dimensions[ref.column]


def _counts(n: Noisy, keys: tuple[str, ...], measure: str, min_group: int) -> Cell:
    value = n.values[n.keys.index(keys)]
    if value < min_group:
        return withheld(keys, measure)
    return Cell(keys, measure, float(value), float(n.error_95), False)


def _shares(n: Noisy, group_of: Callable[[tuple[str, ...]], object], measure: str, min_group: int) -> list[Cell]:
    """Each cell's share of the noisy total of its group (post-processing)."""
    totals: dict[object, float] = {}
    sizes: dict[object, int] = {}
    for keys, value in zip(n.keys, n.values, strict=True):
        g = group_of(keys)
        totals[g] = totals.get(g, 0.0) + max(value, 0)
        sizes[g] = sizes.get(g, 0) + 1
    out = []
    for keys, value in zip(n.keys, n.values, strict=True):
        g = group_of(keys)
        s = share(max(value, 0), totals[g], sizes[g], n.error_95) if value >= min_group else None
        out.append(withheld(keys, measure) if s is None else Cell(keys, measure, s[0], s[1], False))
    return out


def _reader(axes: tuple[Axis, ...], sql: Sql) -> Callable[[MatchedData], Histogram]:
    return lambda data: data.histogram(axes, sql)


def activation_threshold(epsilon: float, delta: float, sensitivity: int) -> int:
    """How far above the minimum size a noisy segment size must be for its list to be released.

    With noise of scale c/epsilon (c the sensitivity), a segment whose true size is below the minimum k in one of two
    neighbouring datasets is at most k + c - 1 in the other; it is released there only if the noise exceeds the
    threshold minus (c - 1), which the discrete Laplace tail P(X >= t) = a^t / (1 + a) < e^(-t epsilon / c) keeps
    below delta for t = c ln(1/delta) / epsilon. So the release decision is (epsilon, delta)-DP.
    """
    return math.ceil(sensitivity * math.log(1 / delta) / epsilon) + sensitivity - 1


class QueryEngine:
    """Runs typed queries against one server's data, with its budget accountant and noise mechanism."""

    def __init__(
        self,
        store: Store,
        collaborations: Collaborations,
        budget: BudgetAccountant,
        audit: AuditLog,
        noise: NoiseMechanism,
    ) -> None:
        self._store = store
        self._collaborations = collaborations
        self._budget = budget
        self._audit = audit
        self._noise = noise

    # -- the pipeline ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_policy(principal: Principal, policy: Policy, query_type: str, epsilon: float, delta: float) -> None:
        """The policy's rules for one query: the caller receives results, the type is allowed, the bounds hold."""
        member = policy.member(principal.name)
        if member is None or Ability.RECEIVE_RESULTS not in member.abilities:
            raise PermissionDeniedError(f"the policy does not let you ({principal.name}) receive results")
        if query_type not in policy.queries:
            raise PermissionDeniedError(
                f"the policy does not allow {query_type} queries (allowed: {sorted(policy.queries)})"
            )
        if not policy.epsilon_per_query_min <= epsilon <= policy.epsilon_per_query_max:
            raise InvalidArgumentError(
                f"epsilon {epsilon:g} is outside the policy's range for one query: "
                f"[{policy.epsilon_per_query_min:g}, {policy.epsilon_per_query_max:g}]"
            )
        if delta > policy.delta_per_query_max:
            raise InvalidArgumentError(
                f"delta {delta:g} exceeds the policy's per-query maximum {policy.delta_per_query_max:g}"
                + (" (the policy allows no delta: add a delta section)" if not policy.delta_per_query_max else "")
            )

    def authorize(self, principal: Principal, collaboration_id: str, query_type: str) -> Collaboration:
        """Who may ask at all (a member with `query` in an active collaboration): checked before anything else."""
        return self._collaborations.require_active(principal, collaboration_id, Ability.QUERY, f"query.{query_type}")

    def _limits(self, collaboration: Collaboration) -> Limits:
        """The budget's caps, and where a per-period budget starts counting (the last completed refresh)."""
        policy = collaboration.policy
        per_period = policy.refresh is not None and policy.refresh.budget == RefreshBudget.PER_PERIOD
        since = budget_start(self._store.of(collaboration.id).cursor(), collaboration.id) if per_period else 0
        return Limits(policy.epsilon_per_member_total, policy.delta_per_member_total, since)

    def _release(
        self,
        principal: Principal,
        collaboration_id: str,
        query_type: str,
        parameters: Mapping[str, Any],
        epsilon: float,
        build: Callable[[Collaboration, Catalog], Plan],
        delta: float = 0.0,
        preview: bool = False,
        scope: Scoped | None = None,
    ) -> QueryAnswer:
        action = f"query.{query_type}"
        period = scope.refresh_period if scope is not None else None
        population = scope.with_members if scope is not None else ()
        collaboration = self.authorize(principal, collaboration_id, query_type)
        policy = collaboration.policy
        params = (
            {**parameters, "epsilon": epsilon}
            | ({"delta": delta} if delta else {})
            | ({"refresh_period": period} if period is not None else {})
            | ({"with_members": sorted(population)} if population else {})
        )
        try:
            self._check_policy(principal, policy, query_type, epsilon, delta)
            catalog = Catalog(self._store.of(collaboration.id).cursor(), collaboration, period, population)
            self._check_reads(principal, policy, catalog)
            catalog.require_matched()
            plan = build(collaboration, catalog)
            if preview:
                return self._preview(principal, collaboration, query_type, params, plan)
            reservation = self._budget.reserve(
                collaboration.id, plan.charges, self._limits(collaboration), query_type, params
            )
        except CleanroomError as exc:
            self._audit.record(collaboration.id, principal.name, "query.refuse", {**params, "reason": str(exc)})
            raise
        # From here on the data is read: every outcome is charged.
        try:
            outcome = plan.run(MatchedData(self._store.of(collaboration.id).cursor(), catalog))
            released = {
                "dimensions": list(outcome.dimensions),
                "cells": [c.to_dict() for c in outcome.cells],
                "noise_scale": dict(outcome.noise_scale),
            }
            stored: list[AudienceInfo] = []
            audience = outcome.audience

            def write_audience(cur: Any) -> None:
                if audience is not None:
                    stored.append(
                        store_audience(
                            cur, collaboration.id, audience.kind, audience.recipient, principal.name, audience.row_ids
                        )
                    )

            entry = self._budget.commit(reservation, action, params, released, also=write_audience)
        except Exception:
            log.exception("%s failed after its budget was reserved; charging it", action)
            failed = self._budget.charge_failure(reservation, "query.failed", params)
            raise QueryFailedError(
                f"the {query_type} query failed after its budget was reserved, so it was charged "
                f"(audit entry {failed.sequence}); nothing was released. The operator's log has the details."
            ) from None
        status = self._budget.status(collaboration.id, principal.name, self._limits(collaboration))
        return QueryAnswer(
            dimensions=outcome.dimensions,
            cells=outcome.cells,
            epsilon_spent=entry.epsilon,
            epsilon_remaining=status.remaining,
            noise_scale=outcome.noise_scale,
            audit_sequence=entry.sequence,
            own_set_size=catalog.set_size(principal.name),
            audience=stored[0].name if stored else "",
        )

    def _preview(
        self, principal: Principal, collaboration: Collaboration, query_type: str, params: Mapping[str, Any], plan: Plan
    ) -> QueryAnswer:
        """The error bar each released vector's cells would have, from the plan alone.

        The plan depends on the request, the policy and the catalog only: nothing is read, nothing is spent, and
        the answer is the same for any data.
        """
        entry = self._audit.record(collaboration.id, principal.name, "query.preview", {"query": query_type, **params})
        cells = tuple(Cell((s.name,), "error_95", s.error_95, 0.0, False) for s in plan.stated)
        status = self._budget.status(collaboration.id, principal.name, self._limits(collaboration))
        return QueryAnswer(
            dimensions=("vector",),
            cells=cells,
            epsilon_spent=0.0,
            epsilon_remaining=status.remaining,
            noise_scale={s.name: s.sensitivity / s.epsilon for s in plan.stated},
            audit_sequence=entry.sequence,
        )

    def _measure(self, data: MatchedData, measurements: Sequence[Measurement]) -> dict[str, Noisy]:
        """Read each vector exactly, add its noise; the exact values end here."""
        noisy: dict[str, Noisy] = {}
        for m in measurements:
            histogram = m.read(data)
            values, scale = self._noise.release([clamp(v) for v in histogram.counts], m.sensitivity, m.epsilon)
            noisy[m.name] = Noisy(histogram.keys, tuple(values), scale)
        return noisy

    def _histograms(
        self,
        principal: Principal,
        collaboration: Collaboration,
        epsilon: float,
        measurements: Sequence[Measurement],
        dimensions: tuple[str, ...],
        finish: Callable[[Mapping[str, Noisy], int], list[Cell]],
    ) -> Plan:
        """A plan that releases noisy vectors and cells derived from them, charged to the requester."""

        def run(data: MatchedData) -> Outcome:
            noisy = self._measure(data, measurements)
            cells = tuple(finish(noisy, collaboration.policy.min_group_size))
            return Outcome(dimensions, cells, {name: n.scale for name, n in noisy.items()})

        return Plan((Charge(principal.name, epsilon),), run, tuple(m.stated for m in measurements))

    @staticmethod
    def stability(catalog: Catalog, any_of: bool = False) -> int:
        """How many of the query's people one users row can change: the join's stability constant per join.

        The people are the hub's users matched with each member of the population (with `any_of`, with at least
        one: attribution and lift); one row changes at most `stability` pairs in each join it takes part in
        (`Policy.population_stability`). With two members: the join's stability constant.
        """
        return catalog.collaboration.policy.population_stability(len(catalog.spokes), any_of)

    @staticmethod
    def _check_reads(principal: Principal, policy: Policy, catalog: Catalog) -> None:
        """The policy's `reads`: a member's queries involve only the members it lists.

        A population says who matched them, so naming a member in it reads that member's data.
        """
        member = policy.member(principal.name)
        barred = [m for m in catalog.members if member is None or not member.may_read(m)]
        if barred:
            raise PermissionDeniedError(
                f"the policy does not let your ({principal.name}) queries involve {', '.join(barred)}'s data"
                + (" (name the members you may read with with_members)" if len(catalog.spokes) > 1 else "")
            )

    # -- the queries ----------------------------------------------------------------------------------------------
    def overlap(
        self, principal: Principal, collaboration_id: str, q: OverlapQuery, preview: bool = False
    ) -> QueryAnswer:
        """Matched people per combination of up to three dimensions (all cells of the domains, zero-filled)."""

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            axes = tuple(axis(str(d), d.member, d.column, _dimension(collaboration.policy, d)) for d in q.dimensions)
            cells_of(axes)
            people = Measurement(
                "people", _reader(axes, histogram_sql(catalog, axes)), q.epsilon, self.stability(catalog)
            )

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                return [_counts(n, keys, "people", min_group) for keys in n.keys]

            return self._histograms(
                principal, collaboration, q.epsilon, (people,), tuple(a.label for a in axes), finish
            )

        params = {"dimensions": [str(d) for d in q.dimensions]}
        return self._release(
            principal,
            collaboration_id,
            QueryType.OVERLAP,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    @staticmethod
    def venn_sensitivity(catalog: Catalog) -> int:
        """L1 sensitivity of the Venn histogram: 1 + 2 k c, over k joins of stability c.

        Its cells partition all the hub's users by the members they are matched with. A hub row added or removed
        moves its own cell by 1, and each pair that changes in any of the k joins (at most c per join) moves one hub
        user between two cells (2). A row of another member changes at most c pairs of its one join: 2c.
        """
        return 1 + 2 * len(catalog.spokes) * catalog.collaboration.policy.stability

    def venn(self, principal: Principal, collaboration_id: str, q: VennQuery, preview: bool = False) -> QueryAnswer:
        """The hub's users by the members they are matched with, optionally per value of one hub dimension.

        Every region of the Venn diagram (`people_exactly`), and each intersection (`people`: the hub with A, with
        B, with A and B, ...), which sums the regions it covers (their error bars in quadrature).

        The noisy vector is the regions' histogram, so its scale is stated under `people_exactly`, the measure whose
        cells each carry one draw of it. An intersection sums up to 2^k regions and so up to 2^k draws: it has no
        single scale. Stating the histogram's under `people` (as before issue 28) told every reader of the answer
        that those cells carry a k-th of the noise they do: (deviation / scale)^2 averages 2k over k regions, not 2.
        """

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            policy = collaboration.policy
            by = None
            if q.by is not None:
                if q.by.member != catalog.hub:
                    raise InvalidArgumentError(
                        f"venn groups by a dimension of the hub ({catalog.hub}), not {q.by.member}: every one of the "
                        "hub's users is counted, matched or not"
                    )
                by = axis(str(q.by), q.by.member, q.by.column, _dimension(policy, q.by))
            axes = ((by,) if by else ()) + venn_axes(catalog)
            cells_of(axes)
            regions = Measurement(
                "people_exactly", _reader(axes, venn_sql(catalog, by)), q.epsilon, self.venn_sensitivity(catalog)
            )
            spokes = catalog.spokes
            lead = 1 if by else 0

            def region(members: Sequence[str]) -> str:
                return "∩".join((catalog.hub, *members))

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people_exactly"]
                groups = list(dict.fromkeys(k[:lead] for k in n.keys))
                out = []
                for group in groups:
                    cells = [(k[lead:], v) for k, v in zip(n.keys, n.values, strict=True) if k[:lead] == group]
                    for pattern, value in cells:
                        matched = [s for s, flag in zip(spokes, pattern, strict=True) if flag == MATCHED]
                        keys = (*group, region(matched))
                        out.append(
                            withheld(keys, "people_exactly")
                            if value < min_group
                            else Cell(keys, "people_exactly", float(value), float(n.error_95), False)
                        )
                    for size in range(len(spokes) + 1):
                        for members in itertools.combinations(spokes, size):
                            parts = [
                                v for pattern, v in cells if all(pattern[spokes.index(m)] == MATCHED for m in members)
                            ]
                            total = sum(parts)
                            keys = (*group, region(members))
                            out.append(
                                withheld(keys, "people")
                                if total < min_group
                                else Cell(
                                    keys, "people", float(max(total, 0)), n.error_95 * math.sqrt(len(parts)), False
                                )
                            )
                return out

            return self._histograms(
                principal, collaboration, q.epsilon, (regions,), (*((by.label,) if by else ()), "region"), finish
            )

        params = {"by": str(q.by) if q.by else ""}
        return self._release(
            principal,
            collaboration_id,
            QueryType.VENN,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def _stage_axis(self, policy: Policy) -> Axis:
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

    @staticmethod
    def _label(value: str, labels: str) -> str:
        if labels == "aipl":
            return _AIPL.get(value, value)
        return _4A.get(value, value)

    def _relabel(self, read: Callable[[MatchedData], Histogram], labels: str) -> Callable[[MatchedData], Histogram]:
        def relabelled(data: MatchedData) -> Histogram:
            h = read(data)
            keys = tuple(tuple(self._label(k, labels) for k in key) for key in h.keys)
            return Histogram(h.axes, keys, h.counts)

        return relabelled

    def funnel(self, principal: Principal, collaboration_id: str, q: FunnelQuery, preview: bool = False) -> QueryAnswer:
        """Matched people per 4A stage (and `none`), optionally per value of one more dimension; with shares."""

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            stage = self._stage_axis(collaboration.policy)
            axes: tuple[Axis, ...] = (stage,)
            if q.by is not None:
                axes = (axis(str(q.by), q.by.member, q.by.column, _dimension(collaboration.policy, q.by)), stage)
            cells_of(axes)
            read = self._relabel(_reader(axes, histogram_sql(catalog, axes)), q.labels)
            people = Measurement("people", read, q.epsilon, self.stability(catalog))

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                counts = [_counts(n, keys, "people", min_group) for keys in n.keys]
                return counts + _shares(n, lambda keys: keys[:-1], "share", min_group)

            return self._histograms(
                principal, collaboration, q.epsilon, (people,), tuple(a.label for a in axes), finish
            )

        params = {"by": str(q.by) if q.by else "", "labels": q.labels}
        return self._release(
            principal,
            collaboration_id,
            QueryType.FUNNEL,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def funnel_flow(
        self, principal: Principal, collaboration_id: str, q: FunnelFlowQuery, preview: bool = False
    ) -> QueryAnswer:
        """Matched people per (stage on start, stage on end), with each row's shares."""

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            stage = self._stage_axis(collaboration.policy)
            history = collaboration.policy.table(stage.member, "stage_history")
            if history is None or history.time is None or stage.column not in history.dimensions:
                raise FailedPreconditionError(
                    f"the policy must declare {stage.member}.stage_history with a time column and {stage.column}"
                )
            start = Axis(f"{stage.label}@{q.start}", stage.member, stage.column, stage.domain)
            end = Axis(f"{stage.label}@{q.end}", stage.member, stage.column, stage.domain)
            sql = flow_sql(catalog, start, history.time, q.start, q.end)
            read = self._relabel(_reader((start, end), sql), q.labels)
            people = Measurement("people", read, q.epsilon, self.stability(catalog))

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                counts = [_counts(n, keys, "people", min_group) for keys in n.keys]
                return counts + _shares(n, lambda keys: keys[0], "row_share", min_group)

            return self._histograms(principal, collaboration, q.epsilon, (people,), (start.label, end.label), finish)

        params = {"start_date": q.start.isoformat(), "end_date": q.end.isoformat(), "labels": q.labels}
        return self._release(
            principal,
            collaboration_id,
            QueryType.FUNNEL_FLOW,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def segment_insight(
        self, principal: Principal, collaboration_id: str, q: SegmentInsightQuery, preview: bool = False
    ) -> QueryAnswer:
        """Per value: matched people and all users of the dimension's member, their shares, TGI and penetration.

        Epsilon is split in half: one half for the matched histogram (sensitivity c), one for the all-users
        histogram (sensitivity 1: it does not go through the join). TGI = 100 x share among matched / share among
        all users; penetration = matched / all users.
        """
        half = q.epsilon / 2

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            ax = axis(
                str(q.dimension), q.dimension.member, q.dimension.column, _dimension(collaboration.policy, q.dimension)
            )
            measurements = (
                Measurement("matched", _reader((ax,), histogram_sql(catalog, (ax,))), half, self.stability(catalog)),
                Measurement("all_users", _reader((ax,), all_users_sql(catalog, ax)), half, 1),
            )

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                m, a = noisy["matched"], noisy["all_users"]
                total_m = sum(max(v, 0) for v in m.values)
                total_a = sum(max(v, 0) for v in a.values)
                k = len(m.keys)
                out: list[Cell] = []
                for keys, vm, va in zip(m.keys, m.values, a.values, strict=True):
                    ok_m, ok_a = vm >= min_group, va >= min_group
                    out.append(Cell(keys, "matched", vm, m.error_95, False) if ok_m else withheld(keys, "matched"))
                    out.append(Cell(keys, "all_users", va, a.error_95, False) if ok_a else withheld(keys, "all_users"))
                    sm = share(vm, total_m, k, m.error_95) if ok_m else None
                    sa = share(va, total_a, k, a.error_95) if ok_a else None
                    out.append(Cell(keys, "share_matched", *sm, False) if sm else withheld(keys, "share_matched"))
                    out.append(Cell(keys, "share_all", *sa, False) if sa else withheld(keys, "share_all"))
                    tgi = ratio(sm[0], sm[1], sa[0], sa[1]) if sm and sa else None
                    out.append(Cell(keys, "tgi", 100 * tgi[0], 100 * tgi[1], False) if tgi else withheld(keys, "tgi"))
                    pen = ratio(vm, m.error_95, va, a.error_95) if ok_m and ok_a else None
                    out.append(
                        Cell(keys, "penetration", min(pen[0], 1.0), pen[1], False)  # matched people are users
                        if pen
                        else withheld(keys, "penetration")
                    )
                return out

            return self._histograms(principal, collaboration, q.epsilon, measurements, (ax.label,), finish)

        params = {"dimension": str(q.dimension)}
        return self._release(
            principal,
            collaboration_id,
            QueryType.SEGMENT_INSIGHT,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def _group_axes(self, policy: Policy, by: tuple[DimensionRef, ...]) -> tuple[Axis, ...]:
        axes = tuple(axis(str(d), d.member, d.column, _dimension(policy, d)) for d in by)
        cells_of(axes)
        return axes

    def value(self, principal: Principal, collaboration_id: str, q: ValueQuery, preview: bool = False) -> QueryAnswer:
        """GOAL's "A": per group, people, buyers, orders, the sum of a measure, its means per person, buyer, order.

        Privacy unit: one users row of either member with its events. Epsilon is quartered over four vectors with
        one cell per group (`goal.py` bounds each person's contribution): people (sensitivity c), buyers (c),
        orders (c x cap) and the sum in cents (c x cap x ceil(100 x max(|lo|, |hi|))), cap being the measure
        table's `max_per_person` (1 for a users measure). Post-processing: counts are shown at >= 0, the sum at
        >= 0 when lo >= 0, each mean within the range its definition allows; the means' bounds propagate the two
        vectors' bounds (`cells.quotient`).
        """
        quarter = q.epsilon / 4

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            policy = collaboration.policy
            axes = self._group_axes(policy, q.by)
            measure = measure_spec(policy, q.measure)
            sql = value_sql(catalog, axes, measure)
            width = len(axes)
            cached: dict[str, list[tuple[Any, ...]]] = {}

            def column(i: int) -> Callable[[MatchedData], Histogram]:
                def read(data: MatchedData) -> Histogram:
                    if "rows" not in cached:
                        cached["rows"] = data.rows(sql)
                    return fill_histogram(axes, [(*r[:width], r[width + i]) for r in cached["rows"]])

                return read

            c = self.stability(catalog)
            measurements = (
                Measurement("people", column(0), quarter, c),
                Measurement("buyers", column(1), quarter, c),
                Measurement("orders", column(2), quarter, c * measure.cap),
                Measurement("sum", column(3), quarter, c * measure.cap * measure.cents_per_row, CENTS),
            )
            lo, hi = measure.lo, measure.hi
            person_lo, person_hi = measure.per_person_range()
            means = (
                ("per_person", "people", person_lo, person_hi),
                ("per_buyer", "buyers", min(lo, person_lo), max(hi, person_hi)),
                ("per_order", "orders", lo, hi),
            )

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                total = noisy["sum"]
                out: list[Cell] = []
                for i, keys in enumerate(total.keys):
                    if noisy["people"].values[i] < min_group:
                        out += [withheld(keys, m) for m in ("people", "buyers", "orders", "sum")]
                        out += [withheld(keys, m) for m, *_ in means]
                        continue
                    for name in ("people", "buyers", "orders"):
                        n = noisy[name]
                        out.append(Cell(keys, name, float(max(n.values[i], 0)), float(n.error_95), False))
                    s = total.values[i] / CENTS
                    shown = max(s, 0.0) if lo >= 0 else s
                    out.append(Cell(keys, "sum", shown, total.error_95 / CENTS, False))
                    for name, denominator, low, high in means:
                        n = noisy[denominator]
                        mean = quotient(s, total.error_95 / CENTS, n.values[i], n.error_95)
                        if mean is None or n.values[i] < min_group:
                            out.append(withheld(keys, name))
                        else:
                            out.append(Cell(keys, name, min(max(mean[0], low), high), mean[1], False))
                return out

            return self._histograms(
                principal, collaboration, q.epsilon, measurements, tuple(a.label for a in axes), finish
            )

        params = {"by": [str(d) for d in q.by], "measure": q.measure}
        return self._release(
            principal,
            collaboration_id,
            QueryType.VALUE,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def loyalty(
        self, principal: Principal, collaboration_id: str, q: LoyaltyQuery, preview: bool = False
    ) -> QueryAnswer:
        """GOAL's "L": per group, converters, repeaters and the retained; repurchase and retention rates.

        Converters bought in period 1, repeaters two or more times in it, the retained again in period 2.

        Privacy unit: one users row of either member with its events. One histogram over group x loyalty state
        (`goal.py`: each matched person in exactly one state): sensitivity c, all of epsilon. Counts and rates are
        post-processing of its cells (each clamped at 0); a count summing k cells has bound sqrt(k) x e95, a rate
        the bound of `cells.fraction`, within [0, 1].
        """

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            policy = collaboration.policy
            axes = self._group_axes(policy, q.by)
            member, time = conversions_table(policy)
            state = state_axis(member)
            full = (*axes, state)
            cells_of(full)
            sql = loyalty_sql(catalog, axes, member, time, q.period1, q.period2)
            people = Measurement("people", _reader(full, sql), q.epsilon, self.stability(catalog))

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                e95 = float(n.error_95)
                by_group: dict[tuple[str, ...], dict[str, float]] = {}
                for keys, value in zip(n.keys, n.values, strict=True):
                    by_group.setdefault(keys[:-1], {})[keys[-1]] = float(max(value, 0))
                out: list[Cell] = []
                for keys, v in by_group.items():
                    repeat = v["repeat"] + v["repeat_retained"]
                    once = v["once"] + v["once_retained"]
                    retained = v["once_retained"] + v["repeat_retained"]
                    converters = repeat + once
                    if converters < min_group:
                        names = ("converters", "repeaters", "retained", "repurchase_rate", "retention_rate")
                        out += [withheld(keys, m) for m in names]
                        continue
                    out.append(Cell(keys, "converters", converters, 2 * e95, False))
                    out.append(Cell(keys, "repeaters", repeat, math.sqrt(2) * e95, False))
                    out.append(Cell(keys, "retained", retained, math.sqrt(2) * e95, False))
                    for name, part in (("repurchase_rate", repeat), ("retention_rate", retained)):
                        f = fraction(part, 2, converters - part, 2, e95)
                        out.append(withheld(keys, name) if f is None else Cell(keys, name, f[0], f[1], False))
                return out

            return self._histograms(
                principal, collaboration, q.epsilon, (people,), tuple(a.label for a in axes), finish
            )

        params = {
            "by": [str(d) for d in q.by],
            "period1": [d.isoformat() for d in q.period1],
            "period2": [d.isoformat() for d in q.period2],
        }
        return self._release(
            principal,
            collaboration_id,
            QueryType.LOYALTY,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def attribution(
        self, principal: Principal, collaboration_id: str, q: AttributionQuery, preview: bool = False
    ) -> QueryAnswer:
        """Attributed conversions and revenue (and ROAS where spend is public) per campaign or channel.

        Epsilon is split in half between the conversions vector (sensitivity c x 1000 x cap thousandths) and the
        revenue vector (c x cap x ceil(100 x max|value|) cents); see `attribution.py` for the bounding. The
        group `none` holds the unattributed conversions.
        """
        half = q.epsilon / 2

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            check_attribution(q.model, q.lookback_days, q.half_life_days)
            policy = collaboration.policy
            ev = event_tables(policy, catalog.members)
            group = axis(q.by, ev.exposures.member, q.by, exposure_domain(ev, q.by))
            brand = None
            if q.brand_dimension is not None:
                d = q.brand_dimension
                brand = axis(str(d), d.member, d.column, _dimension(policy, d))
            axes = (group,) if brand is None else (group, brand)
            cells_of(axes)
            sql = attribution_sql(
                catalog, ev, group, brand, q.model, q.lookback_days, q.click_over_view, q.half_life_days
            )
            width = len(axes)
            cached: dict[str, list[tuple[Any, ...]]] = {}

            def rows(data: MatchedData) -> list[tuple[Any, ...]]:
                if "rows" not in cached:
                    cached["rows"] = data.rows(sql)
                return cached["rows"]

            def conversions(data: MatchedData) -> Histogram:
                return fill_histogram(axes, [(*r[:width], r[width]) for r in rows(data)])

            def revenue(data: MatchedData) -> Histogram:
                return fill_histogram(axes, [(*r[:width], r[width + 1]) for r in rows(data)])

            c = self.stability(catalog, any_of=ANY_OF)
            measurements = (
                Measurement("conversions", conversions, half, c * MILLI * ev.cap, MILLI),
                Measurement("revenue", revenue, half, c * ev.cap * ev.cents_per_conversion, CENTS),
            )
            spend = policy.campaign_spend if q.by == "campaign" else {}
            floor = 0.0 if ev.lo >= 0 else -math.inf  # revenue cannot be negative when no value is

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                conv, rev = noisy["conversions"], noisy["revenue"]
                out: list[Cell] = []
                for keys, vc, vr in zip(conv.keys, conv.values, rev.values, strict=True):
                    if vc / MILLI < min_group:
                        out += [withheld(keys, m) for m in ("attributed_conversions", "attributed_revenue", "roas")]
                        continue
                    out.append(Cell(keys, "attributed_conversions", vc / MILLI, conv.error_95 / MILLI, False))
                    revenue = max(vr / CENTS, floor)
                    out.append(Cell(keys, "attributed_revenue", revenue, rev.error_95 / CENTS, False))
                    cost = spend.get(keys[0])
                    if cost:
                        out.append(Cell(keys, "roas", revenue / cost, rev.error_95 / CENTS / cost, False))
                    else:
                        out.append(withheld(keys, "roas"))
                return out

            dims = (q.by,) if brand is None else (q.by, brand.label)
            return self._histograms(principal, collaboration, q.epsilon, measurements, dims, finish)

        params = {
            "model": q.model,
            "lookback_days": q.lookback_days,
            "by": q.by,
            "brand_dimension": str(q.brand_dimension or ""),
            "click_over_view": q.click_over_view,
            "half_life_days": q.half_life_days,
        }
        return self._release(
            principal,
            collaboration_id,
            QueryType.ATTRIBUTION,
            params,
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    def lift(self, principal: Principal, collaboration_id: str, q: LiftQuery, preview: bool = False) -> QueryAnswer:
        """Conversion rate per test group, absolute and relative lift, incremental conversions and revenue.

        Epsilon is split in quarters over four vectors with one cell per group (every matched person with a test
        group is in one): people (sensitivity c), converters (c), revenue in cents (c x ceil(100 x cap x max|value|))
        and revenue squared in currency units squared (c x (ceil((cap x max|value|)^2) + 1)). Intervals combine
        sampling error and DP noise.
        """
        quarter = q.epsilon / 4

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            policy = collaboration.policy
            ev = event_tables(policy, catalog.members)
            groups = next((t for t in policy.tables.values() if t.table == "test_groups"), None)
            if groups is None:
                raise FailedPreconditionError(
                    "the policy must declare a test_groups table with campaign and test_group"
                )
            if q.campaign not in groups.dimensions["campaign"]:
                raise InvalidArgumentError(
                    f"campaign {q.campaign!r} is not in the declared domain {list(groups.dimensions['campaign'])}"
                )
            ax = group_axis(groups)
            sql = lift_sql(catalog, ev, groups, q.campaign)
            cached: dict[str, list[tuple[Any, ...]]] = {}

            def column(i: int) -> Callable[[MatchedData], Histogram]:
                def read(data: MatchedData) -> Histogram:
                    if "rows" not in cached:
                        cached["rows"] = data.rows(sql)
                    return fill_histogram((ax,), [(r[0], r[i]) for r in cached["rows"]])

                return read

            bound = ev.cap * ev.value_bound
            c = self.stability(catalog, any_of=ANY_OF)
            measurements = (
                Measurement("people", column(1), quarter, c),
                Measurement("converters", column(2), quarter, c),
                Measurement("revenue", column(3), quarter, c * math.ceil(CENTS * bound), CENTS),
                Measurement("revenue_sq", column(4), quarter, c * (math.ceil(bound**2) + 1)),
            )
            floor = 0.0 if ev.lo >= 0 else -math.inf

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                return lift_cells(noisy, min_group, floor)

            return self._histograms(principal, collaboration, q.epsilon, measurements, ("test_group",), finish)

        return self._release(
            principal,
            collaboration_id,
            QueryType.LIFT,
            {"campaign": q.campaign},
            q.epsilon,
            build,
            preview=preview,
            scope=q,
        )

    # -- audiences --------------------------------------------------------------------------------------------------
    def _recipient(self, policy: Policy, requester: str, catalog: Catalog) -> str:
        """The member a lookalike audience goes to, as the policy names it.

        With two members, the peer, if the policy lets it receive audiences. With more, the member the policy names
        in `activation.recipient` (never whichever comes first: an audience charges its recipient's budget), which
        must be in the query's population. Either way the recipient may read every member of the population
        (`_check_recipient_reads`): its audience is learned from them.
        """
        if len(policy.members) > 2:
            named = policy.activation.recipient if policy.activation is not None else None
            if named is None:
                raise PermissionDeniedError(
                    "with three or more members, the policy names the member that receives audiences "
                    "(activation.recipient); this policy names none"
                )
            if named == requester:
                raise PermissionDeniedError("the audience recipient may not request audiences itself")
            catalog.require_in_population(named)
            self._check_recipient_reads(policy, named, catalog)
            return named
        recipients = [
            m.name for m in policy.members if Ability.RECEIVE_AUDIENCES in m.abilities and m.name != requester
        ]
        if not recipients:
            raise PermissionDeniedError("the policy gives no other member the ability receive_audiences")
        self._check_recipient_reads(policy, recipients[0], catalog)
        return recipients[0]

    @staticmethod
    def _check_recipient_reads(policy: Policy, recipient: str, catalog: Catalog) -> None:
        """The recipient may read every member of the query's population (the policy's `reads`).

        An audience tells its recipient, row by row, which of its users are among the query's people.
        """
        spec = policy.member(recipient)
        barred = [m for m in catalog.members if spec is None or not spec.may_read(m)]
        if barred:
            raise PermissionDeniedError(
                f"the audience goes to {recipient}, whom the policy does not let read {', '.join(barred)}'s data; "
                f"its list would say which of its users {', '.join(barred)} also has: name with_members without "
                + ("them" if len(barred) > 1 else "it")
            )

    def _delta_for(self, catalog: Catalog, delta: float) -> None:
        """Delta must be positive and far below 1/n for the sets both members were told the size of at the match."""
        largest = max((catalog.set_size(m.name) for m in catalog.collaboration.members), default=0)
        if not 0 < delta <= 1 / (10 * max(largest, 1)):
            raise InvalidArgumentError(
                f"delta must be positive and at most 1/(10 n) = {1 / (10 * max(largest, 1)):.2g} for the "
                f"{largest} people of the larger set; try {1 / (10 * max(largest, 1)) / 10:.1e}"
            )

    def lookalike(
        self,
        principal: Principal,
        collaboration_id: str,
        q: LookalikeQuery,
        preview: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> QueryAnswer:
        """Train a DP-SGD model on the seeds and release the top `audience_size` recipient users to the recipient.

        The requester receives the audience's name and requested size, the epsilon the accountant charged (for up to
        c + 1 replace-one changes of training examples: see `lookalike`), and the audience's quality as a DP lift
        over random: the share of the audience that are seeds over the share of all scored users that are seeds,
        from three noisy counts (seeds, seeds in the audience, users scored; L1 sensitivity 2c + 2) at a share
        of epsilon (`lookalike.QUALITY_SHARE`, 40%); the rest is DP-SGD's target. Its 95% bound is honest: each count is
        within its 1 - 0.05/3 noise bound with probability at least 1 - 0.05/3 (exact for discrete Laplace), so
        all three are at once with probability at least 95% (union bound), and the lift's interval is the range
        of the ratio over that box. The audience goes to the recipient, whose ledger is charged too.

        `progress(step, TRAINING_STEPS)` is called during training, which runs only after the budget is reserved;
        its total is a constant, so progress tells the caller nothing but that training is under way.
        """
        eval_eps = q.epsilon * QUALITY_SHARE

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            policy = collaboration.policy
            recipient = self._recipient(policy, principal.name, catalog)
            self._delta_for(catalog, q.delta)
            if q.audience_size < policy.min_group_size:
                raise InvalidArgumentError(
                    f"audience_size {q.audience_size} is below the policy's minimum group size {policy.min_group_size}"
                )
            plan = training_plan(catalog, policy, recipient, dict(q.seed))
            c = self.stability(catalog)
            noise = training_noise(q.epsilon - eval_eps, q.delta, c + 1)
            population = catalog.set_size(recipient)  # disclosed at the match: a public step-size constant
            sensitivity = 2 * c + 2

            def run(data: MatchedData) -> Outcome:
                training = training_data(data, plan)
                model = train(training, noise, population, q.model, on_step=progress)
                chosen = top(model.scores, q.audience_size)
                exact = audience_counts(training.labels, chosen)
                noisy, scale = self._noise.release([exact.seeds, exact.hits, exact.users], sensitivity, eval_eps)
                audience = training.row_ids[chosen]
                spent_training, noise_multiplier = model.epsilon, model.noise_multiplier
                del training, model, exact  # exact labels and counts end here
                cells = (
                    Cell(("audience",), "audience_size", float(q.audience_size), 0.0, False),
                    *quality_cells(noisy, scale, q.audience_size, policy.min_group_size),
                    Cell(("training",), "epsilon_accounted", spent_training, 0.0, False),
                    Cell(("training",), "noise_multiplier", noise_multiplier, 0.0, False),
                )
                return Outcome(
                    ("part",), cells, {"quality": scale}, audience=AudienceRelease("lookalike", recipient, audience)
                )

            # The charge is fixed here, before any data is read: success and failure debit the same amount.
            charge = noise.epsilon + eval_eps
            charges = (Charge(principal.name, charge, q.delta), Charge(recipient, charge, q.delta))
            return Plan(charges, run, (Stated("quality", eval_eps, sensitivity),))

        params = {
            "seed": {str(k): v for k, v in q.seed},
            "audience_size": q.audience_size,
            "model": q.model,
        }
        return self._release(
            principal,
            collaboration_id,
            QueryType.LOOKALIKE,
            params,
            q.epsilon,
            build,
            delta=q.delta,
            preview=preview,
            scope=q,
        )

    def activate(
        self, principal: Principal, collaboration_id: str, q: ActivationQuery, preview: bool = False
    ) -> QueryAnswer:
        """Release the matched people of a segment to the policy's activation recipient: a disclosure, not DP.

        The policy names activation (recipient, the dimensions a segment may use, the minimum size k) and every
        member approved it. The list is released only when the segment's true size is at least k and its noisy
        size (sensitivity c) at least k + `activation_threshold`; so whether a list is released is (epsilon,
        delta)-DP, while the list itself is the disclosure the members agreed to. A segment must be decided by a
        member other than the recipient, with conditions that can exclude people (`segments.check_segment`), and
        those conditions must in fact exclude people: the list is withheld unless the noisy number of matched people
        they cut from what the recipient's own conditions keep is at least `activation_threshold` (a window the
        table can hold but nobody is in, or one person in, would otherwise hand over the intersection, or all of
        it but one). The requester receives the noisy size (or withheld); both ledgers are charged (epsilon, delta).
        """
        delta = q.delta or self.authorize(principal, collaboration_id, QueryType.ACTIVATION).policy.delta_per_query_max

        def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
            policy = collaboration.policy
            spec = policy.activation
            if spec is None:
                raise PermissionDeniedError("the policy does not name activation (recipient, dimensions, min_size)")
            segment = dict(q.segment)
            if segment:
                _filters(policy, segment, "segment")
            outside = sorted(str(d) for d in segment if str(d) not in spec.dimensions)
            if outside:
                raise InvalidArgumentError(
                    f"segment: {outside} are not among the policy's activation dimensions {list(spec.dimensions)}"
                )
            times = self._event_filters(policy, q.events)
            check_segment(spec.recipient, segment, q.events, dt.datetime.now(dt.UTC).date())
            if principal.name == spec.recipient:
                raise PermissionDeniedError("the activation recipient may not request activation lists itself")
            self._check_recipient_reads(policy, spec.recipient, catalog)
            self._delta_for(catalog, delta)
            c = self.stability(catalog)
            threshold = spec.min_size + activation_threshold(q.epsilon, delta, c)
            sql = segment_sql(catalog, segment, spec.recipient, q.events, times)
            # The matched people the recipient's own conditions keep: what the others' conditions must cut down.
            own = {d: v for d, v in segment.items() if d.member == spec.recipient}
            own_events = [e for e in q.events if e.member == spec.recipient]
            base_sql = segment_sql(catalog, own, spec.recipient, own_events, times)
            excluded_threshold = activation_threshold(q.epsilon, delta, c)

            def run(data: MatchedData) -> Outcome:
                members = np.asarray(data.arrays(sql)["row_id"], dtype=np.int64)
                base = len(data.arrays(base_sql)["row_id"])
                # Two cells of one partition of the base (in the segment; excluded by the others' conditions): one
                # person's rows move at most c matched people in it, so both are drawn at the scale c / epsilon.
                (noisy, noisy_excluded), scale = self._noise.release(
                    [clamp(len(members)), clamp(base - len(members))], c, q.epsilon
                )
                released = len(members) >= spec.min_size and noisy >= threshold and noisy_excluded >= excluded_threshold
                cell = (
                    Cell(("audience",), "audience_size", float(noisy), float(noise_math.error_95(scale)), False)
                    if released
                    else withheld(("audience",), "audience_size")
                )
                audience = AudienceRelease("activation", spec.recipient, members) if released else None
                return Outcome(("part",), (cell,), {"audience_size": scale}, audience=audience)

            charges = (Charge(principal.name, q.epsilon, delta), Charge(spec.recipient, q.epsilon, delta))
            return Plan(charges, run, (Stated("audience_size", q.epsilon, c),))

        params = {"segment": {str(k): v for k, v in q.segment}, "events": [str(e) for e in q.events]}
        return self._release(
            principal,
            collaboration_id,
            QueryType.ACTIVATION,
            params,
            q.epsilon,
            build,
            delta=delta,
            preview=preview,
            scope=q,
        )

    @staticmethod
    def _event_filters(policy: Policy, events: Sequence[EventFilter]) -> dict[str, str]:
        """Each event filter names a table the policy's activation allows, and declared values of its dimensions.

        Returns the time column of each table named.
        """
        spec = policy.activation
        allowed = spec.events if spec else ()
        times: dict[str, str] = {}
        for ev in events:
            table = policy.table(ev.member, ev.table.partition(".")[2])
            if ev.table not in allowed or table is None or table.time is None:
                raise InvalidArgumentError(
                    f"event filter: {ev.table} is not among the policy's activation events {list(allowed)}"
                )
            for column, value in ev.where:
                if column not in table.dimensions or value not in table.dimensions[column]:
                    raise InvalidArgumentError(
                        f"event filter on {ev.table}: {column}={value!r} is not a declared dimension value "
                        f"(declared: {dict(table.dimensions)})"
                    )
            times[ev.table] = table.time
        return times

    def budget(self, principal: Principal, collaboration_id: str) -> tuple[Collaboration, list[Any]]:
        """Each member's budget status (members and assigned auditors may read it)."""
        collaboration = self._collaborations.get(principal, collaboration_id, "budget.get")
        limits = self._limits(collaboration)
        return collaboration, [self._budget.status(collaboration.id, m.name, limits) for m in collaboration.members]


def _rate(n: Noisy, c: Noisy, i: int) -> tuple[float, float, float] | None:
    """Conversion rate of group i with its variance (sampling + noise), and the group size; None if empty."""
    people, conv = n.values[i], max(c.values[i], 0)
    if people <= 0:
        return None
    p = min(conv / people, 1.0)
    var = p * (1 - p) / people + (c.variance + p**2 * n.variance) / people**2
    return p, var, float(people)


def _mean(n: Noisy, r: Noisy, sq: Noisy, i: int) -> tuple[float, float] | None:
    """Revenue per person of group i (currency units) with its variance (sampling + noise)."""
    people = n.values[i]
    if people <= 0:
        return None
    mu = r.values[i] / CENTS / people
    second = max(sq.values[i], 0) / people
    sampling = max(second - mu**2, 0.0) / people
    noise = (r.variance / CENTS**2 + mu**2 * n.variance) / people**2
    return mu, sampling + noise


def lift_cells(noisy: Mapping[str, Noisy], min_group: int, revenue_floor: float = -math.inf) -> list[Cell]:
    """Per group: people, converters, conversion rate, revenue per person; then the lift estimates.

    Revenue per person is shown at `revenue_floor` or above (0 when the value bounds are non-negative).

    Intervals are normal approximations (1.96 standard deviations) whose variance adds the binomial (or
    empirical) sampling variance to the DP noise variance, by the delta method for the derived ratios. Every
    division is guarded, so any noisy input gives cells (withheld where a denominator is not positive).
    """
    n, c, r, sq = noisy["people"], noisy["converters"], noisy["revenue"], noisy["revenue_sq"]
    out: list[Cell] = []
    ok = {}
    for i, keys in enumerate(n.keys):
        group_ok = n.values[i] >= min_group and c.values[i] >= min_group
        ok[keys[0]] = group_ok
        out.append(Cell(keys, "people", n.values[i], n.error_95, False) if group_ok else withheld(keys, "people"))
        out.append(
            Cell(keys, "converters", c.values[i], c.error_95, False) if group_ok else withheld(keys, "converters")
        )
        rate, mean = _rate(n, c, i), _mean(n, r, sq, i)
        if group_ok and rate and mean:
            out.append(Cell(keys, "conversion_rate", rate[0], Z95 * math.sqrt(rate[1]), False))
            per_person = max(mean[0], revenue_floor)
            out.append(Cell(keys, "revenue_per_person", per_person, Z95 * math.sqrt(mean[1]), False))
        else:
            out += [withheld(keys, "conversion_rate"), withheld(keys, "revenue_per_person")]
    e, h = n.keys.index(("exposed",)), n.keys.index(("holdout",))
    re_, rh = _rate(n, c, e), _rate(n, c, h)
    me, mh = _mean(n, r, sq, e), _mean(n, r, sq, h)
    key = ("lift",)
    names = ("absolute_lift", "relative_lift", "incremental_conversions", "incremental_revenue")
    if not (ok["exposed"] and ok["holdout"] and re_ and rh and me and mh and rh[0] > 0):
        return out + [withheld(key, m) for m in names]
    diff, var_diff = re_[0] - rh[0], re_[1] + rh[1]
    rel = re_[0] / rh[0] - 1
    var_rel = re_[1] / rh[0] ** 2 + (re_[0] / rh[0] ** 2) ** 2 * rh[1]
    exposed = re_[2]
    inc_conv, var_inc_conv = diff * exposed, exposed**2 * var_diff + diff**2 * n.variance
    mdiff, var_mdiff = me[0] - mh[0], me[1] + mh[1]
    inc_rev, var_inc_rev = mdiff * exposed, exposed**2 * var_mdiff + mdiff**2 * n.variance
    for measure, value, var in (
        ("absolute_lift", diff, var_diff),
        ("relative_lift", rel, var_rel),
        ("incremental_conversions", inc_conv, var_inc_conv),
        ("incremental_revenue", inc_rev, var_inc_rev),
    ):
        out.append(Cell(key, measure, value, Z95 * math.sqrt(max(var, 0.0)), False))
    return out
