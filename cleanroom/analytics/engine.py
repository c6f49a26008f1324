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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cleanroom_client.policy import Policy

from ..audit import AuditLog
from ..collaborations import Collaboration, Collaborations
from ..errors import CleanroomError, FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from ..principals import Principal
from ..privacy import BudgetAccountant, NoiseMechanism
from ..privacy import noise as noise_math
from ..storage import Database
from ..storage.database import first
from .cells import Z95, Cell, ratio, share, withheld
from .matched import NONE, Axis, Histogram, MatchedPeople, axis
from .queries import (
    STAGE_LABELS_4A,
    STAGE_LABELS_AIPL,
    DimensionRef,
    FunnelFlowQuery,
    FunnelQuery,
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

    histograms: tuple[tuple[str, Histogram, float], ...]
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
        s = share(max(value, 0), totals[g], sizes[g], n.variance) if value >= min_group else None
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
            plan = plan_for(collab, MatchedPeople(self._db.cursor(), collab.id))
            reservation = self._budget.reserve(collab.id, principal.name, epsilon, policy.epsilon_per_member_total)
        except CleanroomError as exc:
            self._audit.record(collab.id, principal.name, "query.refuse", {**parameters, "reason": str(exc)})
            raise
        try:
            noisy: dict[str, Noisy] = {}
            for name, histogram, eps in plan.histograms:
                values, scale = self._noise.release(list(histogram.counts), 1, eps)
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

            return Plan((("people", histogram, q.epsilon),), finish, tuple(a.label for a in axes))

        params = {"dimensions": [str(d) for d in q.dimensions]}
        return self._run(principal, collab_id, "overlap", q.epsilon, params, plan)

    def _stage_axis(self, policy: Policy, suffix: str = "") -> Axis:
        for spec in policy.tables.values():
            if spec.table != "users":
                continue
            for column in STAGE_COLUMNS:
                if column in spec.dimensions:  # the stored values, 4A or AIPL names; `_relabel` names the answer
                    domain = spec.dimensions[column]
                    return Axis(f"{spec.member}.{column}{suffix}", spec.member, column, (*domain, NONE))
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
            return Plan((("people", histogram, q.epsilon),), finish, labels)

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

            return Plan((("people", histogram, q.epsilon),), finish, (start.label, end.label))

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
                    sm = share(vm, total_m, k, m.variance) if ok_m else None
                    sa = share(va, total_a, k, a.variance) if ok_a else None
                    out.append(Cell(keys, "share_matched", *sm, False) if sm else withheld(keys, "share_matched"))
                    out.append(Cell(keys, "share_all", *sa, False) if sa else withheld(keys, "share_all"))
                    tgi = ratio(sm[0], (sm[1] / Z95) ** 2, sa[0], (sa[1] / Z95) ** 2) if sm and sa else None
                    out.append(Cell(keys, "tgi", 100 * tgi[0], 100 * tgi[1], False) if tgi else withheld(keys, "tgi"))
                    pen = ratio(vm, m.variance, va, a.variance) if ok_m and ok_a else None
                    out.append(Cell(keys, "penetration", *pen, False) if pen else withheld(keys, "penetration"))
                return out

            return Plan((("matched", matched, half), ("all_users", everyone, half)), finish, (ax.label,))

        params = {"dimension": str(q.dimension)}
        return self._run(principal, collab_id, "segment_insight", q.epsilon, params, plan)

    def budget(self, principal: Principal, collab_id: str) -> tuple[Collaboration, list[tuple[str, float, float]]]:
        """Each querying member's total, spent and remaining epsilon (members and assigned auditors)."""
        collab = self._collabs.get(principal, collab_id, "budget.get")
        total = collab.policy.epsilon_per_member_total
        rows = []
        for m in collab.members:
            status = self._budget.status(collab.id, m.name, total)
            rows.append((m.name, status.spent, status.remaining))
        return collab, rows
