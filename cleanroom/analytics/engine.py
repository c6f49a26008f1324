"""The query pipeline: every number a member receives passes through `_run`.

In this order:

authorize (member with `query` and `receive_results`) -> check the policy (query type allowed, epsilon within the
per-query cap, dimensions declared) -> reserve epsilon -> exact aggregates in DuckDB over the join (each person in
one cell: sensitivity 1 per histogram) -> OpenDP discrete Laplace noise -> suppress cells whose noisy count is
below the policy's minimum group size -> append the audit entry, which is the budget debit, in one transaction ->
respond. Exact aggregates exist only inside `_run`; what leaves it is built from noisy counts alone. A refusal
(policy or budget) spends nothing and is written to the audit log with its reason.

How epsilon is split within one query: overlap, funnel and funnel flow release one histogram and spend all of
it there; segment insight releases two (matched people, and all of the member's users) and gives each half.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cleanroom_client.policy import Policy

from ..audit import AuditLog
from ..collaborations import Collaboration, Collaborations
from ..errors import CleanroomError, FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from ..principals import Principal
from ..privacy import BudgetAccountant, NoiseMechanism
from ..privacy import noise as noise_math
from ..storage import Database
from ..storage.database import first
from .attribution import CENTS, MILLI, attribution_histograms, check_attribution, event_tables, lift_histograms
from .audiences import AudienceInfo
from .audiences import store as store_audience
from .cells import Z95, Cell, ratio, share, withheld
from .lookalike import _filters, held_out_counts, segment_sql, top, train, training_data
from .matched import NONE, Axis, Histogram, MatchedPeople, axis
from .queries import (
    STAGE_LABELS_4A,
    STAGE_LABELS_AIPL,
    ActivationQuery,
    AttributionQuery,
    DimensionRef,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LookalikeQuery,
    OverlapQuery,
    SegmentInsightQuery,
)

QUERY, RECEIVE = "query", "receive_results"
STAGE_COLUMNS = ("stage_4a", "stage_aipl")
_AIPL = dict(zip(STAGE_LABELS_4A, STAGE_LABELS_AIPL, strict=True))
_4A = {v: k for k, v in _AIPL.items()}


@dataclass(frozen=True)
class Noisy:
    """A histogram after noise: its keys and noisy counts, the scale, its variance. It holds no exact count."""

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
class Plan:
    """What one query measures (histograms with their epsilon shares) and how it turns noisy counts into cells."""

    #: (name, exact histogram, epsilon for it, its L1 sensitivity)
    histograms: tuple[tuple[str, Histogram, float, int], ...]
    finish: Callable[[Mapping[str, Noisy], int], list[Cell]]
    dimensions: tuple[str, ...]


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
    #: The audience released to the platform (lookalike, activation).
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


class QueryEngine:
    """Runs typed queries against one server's data, with its budget accountant and noise mechanism."""

    def __init__(
        self,
        db: Database,
        collaborations: Collaborations,
        budget: BudgetAccountant,
        audit: AuditLog,
        noise: NoiseMechanism,
    ) -> None:
        self._db = db
        self._collabs = collaborations
        self._budget = budget
        self._audit = audit
        self._noise = noise

    # -- the pipeline ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_policy(principal: Principal, policy: Policy, query_type: str, epsilon: float) -> None:
        """The policy's rules for one query: the caller receives results, the type is allowed, epsilon is capped."""
        member = policy.member(principal.name)
        if member is None or RECEIVE not in member.abilities:
            raise PermissionDeniedError(f"the policy does not let you ({principal.name}) receive results")
        if query_type not in policy.queries:
            raise PermissionDeniedError(
                f"the policy does not allow {query_type} queries (allowed: {sorted(policy.queries)})"
            )
        if epsilon > policy.epsilon_per_query_max:
            raise InvalidArgumentError(
                f"epsilon {epsilon:g} exceeds the policy's per-query maximum {policy.epsilon_per_query_max:g}"
            )

    def authorize(self, principal: Principal, collab_id: str, query_type: str) -> Collaboration:
        """Who may ask at all (a member with `query` in an active collaboration): checked before anything else."""
        return self._collabs.require_active(principal, collab_id, QUERY, f"query.{query_type}")

    def _run(
        self,
        principal: Principal,
        collab_id: str,
        query_type: str,
        epsilon: float,
        parameters: dict[str, Any],
        plan_for: Callable[[Collaboration, MatchedPeople], Plan],
    ) -> QueryAnswer:
        action = f"query.{query_type}"
        collab = self.authorize(principal, collab_id, query_type)
        policy = collab.policy
        parameters = {**parameters, "epsilon": epsilon}
        try:
            self._check_policy(principal, policy, query_type, epsilon)
            plan = plan_for(collab, MatchedPeople(self._db.cursor(), collab.id))
            reservation = self._budget.reserve(collab.id, principal.name, epsilon, policy.epsilon_per_member_total)
        except CleanroomError as exc:
            self._audit.record(collab.id, principal.name, "query.refuse", {**parameters, "reason": str(exc)})
            raise
        try:
            noisy: dict[str, Noisy] = {}
            for name, histogram, eps, sensitivity in plan.histograms:
                values, scale = self._noise.release(list(histogram.counts), sensitivity, eps)
                noisy[name] = Noisy(histogram.keys, tuple(values), scale)
            finish, dimensions = plan.finish, plan.dimensions
            del plan  # the exact counts end here: everything below is built from `noisy`
            cells = tuple(finish(noisy, policy.min_group_size))
            scales = {name: n.scale for name, n in noisy.items()}
            released = {"dimensions": list(dimensions), "cells": [c.to_dict() for c in cells], "noise_scale": scales}
            entry = self._budget.commit(reservation, action, parameters, released)
        except BaseException:
            self._budget.release(reservation)
            raise
        status = self._budget.status(collab.id, principal.name, policy.epsilon_per_member_total)
        return QueryAnswer(
            dimensions=dimensions,
            cells=cells,
            epsilon_spent=epsilon,
            epsilon_remaining=status.remaining,
            noise_scale=scales,
            audit_sequence=entry.sequence,
            own_set_size=self._own_set_size(collab.id, principal.name),
        )

    def _own_set_size(self, collab: str, member: str) -> int:
        row = first(
            self._db.cursor().execute(
                "SELECT set_size FROM uploads WHERE collab = ? AND member = ? AND kind = 'points' AND committed",
                [collab, member],
            )
        )
        return int(row[0]) if row and row[0] is not None else 0

    # -- the queries ----------------------------------------------------------------------------------------------
    def overlap(self, principal: Principal, collab_id: str, q: OverlapQuery) -> QueryAnswer:
        """Matched people per combination of up to three dimensions (all cells of the domains, zero-filled)."""

        def plan(collab: Collaboration, people: MatchedPeople) -> Plan:
            axes = tuple(axis(str(d), d.member, d.column, _dimension(collab.policy, d)) for d in q.dimensions)
            histogram = people.histogram(axes)

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                return [_counts(n, keys, "people", min_group) for keys in n.keys]

            return Plan((("people", histogram, q.epsilon, 1),), finish, tuple(a.label for a in axes))

        params = {"dimensions": [str(d) for d in q.dimensions]}
        return self._run(principal, collab_id, "overlap", q.epsilon, params, plan)

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

    def _relabel(self, histogram: Histogram, labels: str) -> Histogram:
        keys = tuple(tuple(self._label(k, labels) for k in key) for key in histogram.keys)
        return Histogram(histogram.axes, keys, histogram.counts)

    def funnel(self, principal: Principal, collab_id: str, q: FunnelQuery) -> QueryAnswer:
        """Matched people per 4A stage (and `none`), optionally per value of one more dimension; with shares."""

        def plan(collab: Collaboration, people: MatchedPeople) -> Plan:
            stage = self._stage_axis(collab.policy)
            axes: tuple[Axis, ...] = (stage,)
            if q.by is not None:
                axes = (axis(str(q.by), q.by.member, q.by.column, _dimension(collab.policy, q.by)), stage)
            histogram = self._relabel(people.histogram(axes), q.labels)

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                counts = [_counts(n, keys, "people", min_group) for keys in n.keys]
                return counts + _shares(n, lambda keys: keys[:-1], "share", min_group)

            labels = tuple(a.label for a in axes)
            return Plan((("people", histogram, q.epsilon, 1),), finish, labels)

        params = {"by": str(q.by) if q.by else "", "labels": q.labels}
        return self._run(principal, collab_id, "funnel", q.epsilon, params, plan)

    def funnel_flow(self, principal: Principal, collab_id: str, q: FunnelFlowQuery) -> QueryAnswer:
        """Matched people per (stage on start, stage on end), with each row's shares."""

        def plan(collab: Collaboration, people: MatchedPeople) -> Plan:
            stage = self._stage_axis(collab.policy)
            history = collab.policy.table(stage.member, "stage_history")
            if history is None or history.time is None or stage.column not in history.dimensions:
                raise FailedPreconditionError(
                    f"the policy must declare {stage.member}.stage_history with a time column and {stage.column}"
                )
            start = Axis(f"{stage.label}@{q.start}", stage.member, stage.column, stage.domain)
            end = Axis(f"{stage.label}@{q.end}", stage.member, stage.column, stage.domain)
            histogram = self._relabel(people.flow(start, end, history.time, q.start, q.end), q.labels)

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                n = noisy["people"]
                counts = [_counts(n, keys, "people", min_group) for keys in n.keys]
                return counts + _shares(n, lambda keys: keys[0], "row_share", min_group)

            return Plan((("people", histogram, q.epsilon, 1),), finish, (start.label, end.label))

        params = {"start_date": q.start.isoformat(), "end_date": q.end.isoformat(), "labels": q.labels}
        return self._run(principal, collab_id, "funnel_flow", q.epsilon, params, plan)

    def segment_insight(self, principal: Principal, collab_id: str, q: SegmentInsightQuery) -> QueryAnswer:
        """Per value: matched people and all users of the dimension's member, their shares, TGI and penetration.

        Epsilon is split in half: one half for the matched histogram, one for the all-users histogram.
        TGI = 100 x share among matched / share among all users; penetration = matched / all users.
        """
        half = q.epsilon / 2

        def plan(collab: Collaboration, people: MatchedPeople) -> Plan:
            ax = axis(str(q.dimension), q.dimension.member, q.dimension.column, _dimension(collab.policy, q.dimension))
            matched, everyone = people.histogram((ax,)), people.all_users_histogram(ax)

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
                    out.append(Cell(keys, "penetration", *pen, False) if pen else withheld(keys, "penetration"))
                return out

            return Plan((("matched", matched, half, 1), ("all_users", everyone, half, 1)), finish, (ax.label,))

        params = {"dimension": str(q.dimension)}
        return self._run(principal, collab_id, "segment_insight", q.epsilon, params, plan)

    def attribution(self, principal: Principal, collab_id: str, q: AttributionQuery) -> QueryAnswer:
        """Attributed conversions and revenue (and ROAS where spend is public) per campaign or channel.

        Epsilon is split in half between the conversions vector (sensitivity 1000 x cap thousandths) and the
        revenue vector (sensitivity 100 x cap x max|value| cents); see `attribution.py` for the bounding.
        The group `none` holds the unattributed conversions.
        """
        check_attribution(q.model, q.lookback_days, q.half_life_days)
        half = q.epsilon / 2

        def plan(collab: Collaboration, people: MatchedPeople) -> Plan:
            policy = collab.policy
            ev = event_tables(policy)
            group = axis(q.by, ev.exposures.member, q.by, ev.exposures.dimensions[q.by])
            brand = None
            if q.brand_dimension is not None:
                d = q.brand_dimension
                brand = axis(str(d), d.member, d.column, _dimension(policy, d))
            conv, rev = attribution_histograms(
                self._db.cursor(),
                collab.id,
                ev,
                group,
                brand,
                q.model,
                q.lookback_days,
                q.click_over_view,
                q.half_life_days,
            )
            spend = policy.campaign_spend if q.by == "campaign" else {}

            def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
                c, r = noisy["conversions"], noisy["revenue"]
                out: list[Cell] = []
                for keys, vc, vr in zip(c.keys, c.values, r.values, strict=True):
                    if vc / MILLI < min_group:
                        out += [withheld(keys, m) for m in ("attributed_conversions", "attributed_revenue", "roas")]
                        continue
                    out.append(Cell(keys, "attributed_conversions", vc / MILLI, c.error_95 / MILLI, False))
                    out.append(Cell(keys, "attributed_revenue", vr / CENTS, r.error_95 / CENTS, False))
                    cost = spend.get(keys[0])
                    if cost:
                        out.append(Cell(keys, "roas", vr / CENTS / cost, r.error_95 / CENTS / cost, False))
                    else:
                        out.append(withheld(keys, "roas"))
                return out

            histograms = (
                ("conversions", conv, half, MILLI * ev.cap),
                ("revenue", rev, half, math.ceil(CENTS * ev.cap * ev.value_bound)),
            )
            dims = (q.by,) if brand is None else (q.by, brand.label)
            return Plan(histograms, finish, dims)

        params = {
            "model": q.model,
            "lookback_days": q.lookback_days,
            "by": q.by,
            "brand_dimension": str(q.brand_dimension or ""),
            "click_over_view": q.click_over_view,
            "half_life_days": q.half_life_days,
        }
        return self._run(principal, collab_id, "attribution", q.epsilon, params, plan)

    def lift(self, principal: Principal, collab_id: str, q: LiftQuery) -> QueryAnswer:
        """Conversion rate per test group, absolute and relative lift, incremental conversions and revenue.

        Epsilon is split in quarters over four vectors with one cell per group (every person in one group):
        people (sensitivity 1), converters (1), revenue in cents (100 x cap x max|value|) and revenue squared in
        currency units squared ((cap x max|value|)^2 + 1). Intervals combine sampling error and DP noise.
        """
        quarter = q.epsilon / 4

        def plan(collab: Collaboration, people: MatchedPeople) -> Plan:
            policy = collab.policy
            ev = event_tables(policy)
            groups = next((t for t in policy.tables.values() if t.table == "test_groups"), None)
            if groups is None or not {"campaign", "test_group"} <= set(groups.dimensions):
                raise FailedPreconditionError(
                    "the policy must declare a test_groups table with campaign and test_group"
                )
            if q.campaign not in groups.dimensions["campaign"]:
                raise InvalidArgumentError(
                    f"campaign {q.campaign!r} is not in the declared domain {list(groups.dimensions['campaign'])}"
                )
            h = lift_histograms(self._db.cursor(), collab.id, ev, groups, q.campaign)
            bound = ev.cap * ev.value_bound
            histograms = (
                ("people", h["people"], quarter, 1),
                ("converters", h["converters"], quarter, 1),
                ("revenue", h["revenue_cents"], quarter, math.ceil(CENTS * bound)),
                ("revenue_sq", h["revenue_sq"], quarter, math.ceil(bound**2) + 1),
            )
            return Plan(histograms, lambda noisy, min_group: lift_cells(noisy, min_group), ("test_group",))

        return self._run(principal, collab_id, "lift", q.epsilon, {"campaign": q.campaign}, plan)

    # -- audiences --------------------------------------------------------------------------------------------------
    def _recipient(self, policy: Policy, requester: str) -> str:
        recipients = [m.name for m in policy.members if "receive_audiences" in m.abilities and m.name != requester]
        if not recipients:
            raise PermissionDeniedError("the policy gives no other member the ability receive_audiences")
        return recipients[0]

    def _audience_checks(self, principal: Principal, collab: Collaboration, query_type: str, epsilon: float) -> str:
        policy = collab.policy
        self._check_policy(principal, policy, query_type, epsilon)
        MatchedPeople(self._db.cursor(), collab.id)  # the match must be complete
        return self._recipient(policy, principal.name)

    def lookalike(self, principal: Principal, collab_id: str, q: LookalikeQuery) -> QueryAnswer:
        """Train a DP-SGD model on the seeds and release the top `audience_size` platform users to the platform.

        The requester receives the audience's name and size, the training epsilon opacus accounted, and a DP
        estimate of quality: the share of held-out seeds that the model ranks in the held-out top decile (a random
        ranking scores 0.1). Epsilon: up to a tenth (at most 0.1) for that estimate (two counts, L1 sensitivity 2),
        the rest is DP-SGD's target; the budget is charged the accountant's figure plus the estimate's.
        """
        collab = self.authorize(principal, collab_id, "lookalike")
        policy = collab.policy
        eval_eps = min(0.1, q.epsilon / 10)
        params = {
            "seed": {str(k): v for k, v in q.seed},
            "audience_size": q.audience_size,
            "epsilon": q.epsilon,
            "delta": q.delta,
            "model": q.model,
        }
        try:
            recipient = self._audience_checks(principal, collab, "lookalike", q.epsilon)
            data = training_data(self._db.cursor(), collab.id, policy, recipient, dict(q.seed))
            n = len(data.labels)
            if q.audience_size < policy.min_group_size:
                raise InvalidArgumentError(
                    f"audience_size {q.audience_size} is below the policy's minimum group size {policy.min_group_size}"
                )
            if q.audience_size > n:
                raise InvalidArgumentError(f"audience_size {q.audience_size} exceeds the {n} users to choose from")
            if q.delta >= 1 / n:
                raise InvalidArgumentError(f"delta must be well below 1/n = {1 / n:.2g}; try {1 / n**1.1:.1e}")
            reservation = self._budget.reserve(collab.id, principal.name, q.epsilon, policy.epsilon_per_member_total)
        except CleanroomError as exc:
            self._audit.record(collab.id, principal.name, "query.refuse", {**params, "reason": str(exc)})
            raise
        try:
            model = train(data, q.epsilon - eval_eps, q.delta, q.model)
            positives, hits = held_out_counts(model, data.labels)
            (noisy_pos, noisy_hits), scale = self._noise.release([positives, hits], 2, eval_eps)
            audience = data.row_ids[top(model.scores, q.audience_size)]
            spent_training, noise_multiplier = model.epsilon, model.noise_multiplier
            del data, model, positives, hits  # exact labels and counts end here
            e95 = float(noise_math.error_95(scale))
            quality = ratio(float(noisy_hits), e95, float(noisy_pos), e95)
            cells = (
                Cell(("audience",), "audience_size", float(q.audience_size), 0.0, False),
                Cell(("quality",), "recall_at_top_decile", *quality, False)
                if quality and noisy_pos >= policy.min_group_size
                else withheld(("quality",), "recall_at_top_decile"),
                Cell(("quality",), "random_baseline", 0.1, 0.0, False),
                Cell(("training",), "epsilon_accounted", spent_training, 0.0, False),
                Cell(("training",), "noise_multiplier", noise_multiplier, 0.0, False),
            )
            stored: list[AudienceInfo] = []
            released = {"cells": [c.to_dict() for c in cells], "audience_size": len(audience)}
            entry = self._budget.commit(
                reservation,
                "query.lookalike",
                params,
                released,
                epsilon=spent_training + eval_eps,
                also=lambda cur: stored.append(
                    store_audience(cur, collab.id, "lookalike", recipient, principal.name, audience)
                ),
            )
        except BaseException:
            self._budget.release(reservation)
            raise
        status = self._budget.status(collab.id, principal.name, policy.epsilon_per_member_total)
        return QueryAnswer(
            dimensions=("part",),
            cells=cells,
            epsilon_spent=spent_training + eval_eps,
            epsilon_remaining=status.remaining,
            noise_scale={"quality": scale},
            audit_sequence=entry.sequence,
            own_set_size=self._own_set_size(collab.id, principal.name),
            audience=stored[0].name,
        )

    def activate(self, principal: Principal, collab_id: str, q: ActivationQuery) -> QueryAnswer:
        """Release the matched people of a segment to the platform; the requester gets a noisy size only.

        The size is one count of sensitivity 1 at the request's epsilon; below the minimum group size no audience
        is released (the epsilon is still charged: the noisy size was computed and the refusal depends on it).
        """
        collab = self.authorize(principal, collab_id, "activation")
        policy = collab.policy
        params = {"segment": {str(k): v for k, v in q.segment}, "epsilon": q.epsilon}
        try:
            recipient = self._audience_checks(principal, collab, "activation", q.epsilon)
            cur = self._db.cursor()
            _filters(policy, dict(q.segment), "segment")
            sql, sql_params = segment_sql(cur, collab.id, dict(q.segment), recipient)
            reservation = self._budget.reserve(collab.id, principal.name, q.epsilon, policy.epsilon_per_member_total)
        except CleanroomError as exc:
            self._audit.record(collab.id, principal.name, "query.refuse", {**params, "reason": str(exc)})
            raise
        try:
            audience = np.asarray(cur.execute(sql, sql_params).fetchnumpy()["row_id"], dtype=np.int64)
            (noisy,), scale = self._noise.release([len(audience)], 1, q.epsilon)
            big_enough = noisy >= policy.min_group_size
            cell = (
                Cell(("audience",), "audience_size", float(noisy), float(noise_math.error_95(scale)), False)
                if big_enough
                else withheld(("audience",), "audience_size")
            )
            stored: list[AudienceInfo] = []
            entry = self._budget.commit(
                reservation,
                "query.activation",
                {**params, "released": big_enough},
                {"cells": [cell.to_dict()]},
                also=(
                    lambda c: stored.append(
                        store_audience(c, collab.id, "activation", recipient, principal.name, audience)
                    )
                )
                if big_enough
                else None,
            )
        except BaseException:
            self._budget.release(reservation)
            raise
        status = self._budget.status(collab.id, principal.name, policy.epsilon_per_member_total)
        return QueryAnswer(
            dimensions=("part",),
            cells=(cell,),
            epsilon_spent=q.epsilon,
            epsilon_remaining=status.remaining,
            noise_scale={"audience_size": scale},
            audit_sequence=entry.sequence,
            own_set_size=self._own_set_size(collab.id, principal.name),
            audience=stored[0].name if stored else "",
        )

    def budget(self, principal: Principal, collab_id: str) -> tuple[Collaboration, list[tuple[str, float, float]]]:
        """Each querying member's total, spent and remaining epsilon (members and assigned auditors)."""
        collab = self._collabs.get(principal, collab_id, "budget.get")
        total = collab.policy.epsilon_per_member_total
        rows = []
        for m in collab.members:
            status = self._budget.status(collab.id, m.name, total)
            rows.append((m.name, status.spent, status.remaining))
        return collab, rows


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


def lift_cells(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
    """Per group: people, converters, conversion rate, revenue per person; then the lift estimates.

    Intervals are normal approximations (1.96 standard deviations) whose variance adds the binomial (or
    empirical) sampling variance to the DP noise variance, by the delta method for the derived ratios.
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
            out.append(Cell(keys, "revenue_per_person", mean[0], Z95 * math.sqrt(mean[1]), False))
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
        out.append(Cell(key, measure, value, Z95 * math.sqrt(var), False))
    return out
