"""The query pipeline: every release a member receives (numbers and audiences alike) passes through `release`.

In this order, the same for every query type:

1. authorize: a member with `query` in an active collaboration (refusals audited, nothing spent);
2. validate against the request, the policy and the catalog only (`matched.Catalog`: metadata, never a row of
   people's data): the caller receives results, the query type is allowed, per_query_min <= epsilon <=
   per_query_max, delta within its cap, dimensions declared, tables uploaded. The result is a `Plan`: what will be
   read, the sensitivity of every released vector, and what is charged to whom. A refusal here depends on nothing
   but the request, the policy and public metadata, spends nothing, and is written to the audit log with its
   reason;
   A preview stops here: it answers every cell the query would release, derived by the family's own
   post-processing from typical vectors (`Plan.preview`, `plan.Typical`: values from the request or the family's
   defaults, at the scales decided in this step), so each bar is the one the answer would carry; and, asked a
   target, the least epsilon reaching it per cell. It spends nothing and reads no data;
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
segment insight releases two (matched people, and all of the member's users) and gives each half; value releases
one histogram of people by group and number of orders (people, buyers and orders are its sums) and the sum per
group, half each (`goal.VALUE_SPLIT`); loyalty releases one histogram (group x state) and spends all of it;
attribution halves (conversions, revenue); lift releases a histogram of people by test group and conversion
(people, converters), revenue and revenue squared at 0.36 / 0.54 / 0.10 (`lift.LIFT_SPLIT`); lookalike
spends 40% on its quality estimate and the rest on DP-SGD; activation spends it all on the noisy size that gates
the release. Value's and lift's counts get the least share that keeps each count's bar no wider than at a quarter
of epsilon (the split before issue 31), the money the rest (docs/privacy.md, "Money"); the shares are constants,
so a preview states every bar from the request and the policy alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cleanroom_client.policy import Ability, Policy, RefreshBudget

from ..audit import AuditLog
from ..collaborations import Collaboration, Collaborations
from ..errors import CleanroomError, InvalidArgumentError, PermissionDeniedError, QueryFailedError
from ..matching.periods import budget_start
from ..principals import Principal
from ..privacy import BudgetAccountant, NoiseMechanism
from ..privacy.budget import Charge, Limits
from ..storage import Store
from . import activation as activation_family
from . import attribution as attribution_family
from . import funnel as funnel_family
from . import goal as goal_family
from . import lift as lift_family
from . import lookalike as lookalike_family
from . import overlap as overlap_family
from .audiences import AudienceInfo
from .audiences import store as store_audience
from .cells import Cell
from .lift import lift_cells
from .matched import Catalog, MatchedData, clamp
from .plan import (
    AudienceRelease,
    Measurement,
    Noisy,
    Outcome,
    Plan,
    Previewed,
    QueryAnswer,
    Typical,
    VectorKeys,
    activation_threshold,
    histogram_preview,
)
from .queries import Scoped

__all__ = ["AudienceRelease", "Noisy", "Plan", "QueryAnswer", "QueryEngine", "activation_threshold", "lift_cells"]

log = logging.getLogger(__name__)


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

    @property
    def noise(self) -> NoiseMechanism:
        """The noise mechanism every release draws from."""
        return self._noise

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

    def release(
        self,
        principal: Principal,
        collaboration_id: str,
        q: Scoped,
        query_type: str,
        parameters: Mapping[str, Any],
        build: Callable[[Collaboration, Catalog], Plan],
        delta: float = 0.0,
        preview: bool | Typical = False,
    ) -> QueryAnswer:
        """One query through the pipeline of the module's docstring; a preview stops after the plan.

        `preview`: True, or the `Typical` values (and target) the preview assumes.

        `q` is the query (its epsilon, refresh period and population); `build` is its family's validation into a
        `Plan` (`overlap`, `funnel`, `goal`, `attribution`, `lookalike`, `activation`): it reads the request, the
        policy and the catalog only.
        """
        action = f"query.{query_type}"
        epsilon, period, population = q.epsilon, q.refresh_period, q.with_members
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
                typical = preview if isinstance(preview, Typical) else Typical()
                return self._preview(principal, collaboration, query_type, params, plan, typical, epsilon)
            limits = self._limits(collaboration)
            reservation = self._budget.reserve(collaboration.id, plan.charges, limits, query_type, params)
        except CleanroomError as exc:
            refused = {"query": query_type, **params, "reason": str(exc)}  # the type: an auditor reads what was refused
            self._audit.record(collaboration.id, principal.name, "query.refuse", refused)
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

            entry, status = self._budget.commit_with_status(
                reservation, action, params, released, limits, also=write_audience
            )
        except Exception:
            log.exception("%s failed after its budget was reserved; charging it", action)
            failed = self._budget.charge_failure(reservation, "query.failed", {"query": query_type, **params})
            raise QueryFailedError(
                f"the {query_type} query failed after its budget was reserved, so it was charged "
                f"(audit entry {failed.sequence}); nothing was released. The operator's log has the details."
            ) from None
        assert status is not None  # asked for with the limits (after the try: the debit is written by now)
        return QueryAnswer(
            dimensions=outcome.dimensions,
            cells=outcome.cells,
            epsilon_spent=entry.epsilon,
            epsilon_remaining=status.remaining,
            noise_scale=outcome.noise_scale,
            audit_sequence=entry.sequence,
            own_set_size=catalog.set_size(principal.name),
            audience=stored[0].name if stored else "",
            refresh_period=catalog.period,
        )

    def _preview(
        self,
        principal: Principal,
        collaboration: Collaboration,
        query_type: str,
        params: Mapping[str, Any],
        plan: Plan,
        typical: Typical,
        epsilon: float,
    ) -> QueryAnswer:
        """Every cell the query would release, at typical values, with the bar the answer would carry.

        The plan depends on the request, the policy and the catalog only, the typical values on the request and the
        policy: nothing is read, nothing is spent, and the answer is the same for any data.
        """
        if plan.preview is None:
            raise QueryFailedError(f"{query_type} has no preview")  # every family states one (tests walk them all)
        check_typical(typical)  # first: the bound on names, so the refusal below echoes a few short ones at most
        vectors = [s.name for s in plan.stated]
        unknown = sorted(set(typical.values) - set(vectors))
        if unknown:
            raise InvalidArgumentError(
                f"typical: {unknown} are not vectors {query_type} releases (it releases {vectors})"
            )
        previewed = plan.preview(typical, epsilon)
        if typical.within > 0 and len(previewed.cells) > MAX_SOLVED_CELLS:
            raise InvalidArgumentError(
                f"within: this {query_type} has {len(previewed.cells)} cells, and the epsilon per cell is solved "
                f"for at most {MAX_SOLVED_CELLS}: group by fewer dimensions, or preview without within"
            )
        audited = {"query": query_type, **params, "typical_group": typical.group}
        if typical.values:
            audited["typical"] = {k: list(v) if isinstance(v, tuple) else float(v) for k, v in typical.values.items()}
        if typical.within:
            audited["within"] = typical.within
        entry = self._audit.record(collaboration.id, principal.name, "query.preview", audited)
        policy = collaboration.policy
        needed = (
            epsilon_needed(plan.preview, typical, previewed, policy.epsilon_per_query_min, policy.epsilon_per_query_max)
            if typical.within > 0
            else ()
        )
        status = self._budget.status(collaboration.id, principal.name, self._limits(collaboration))
        return QueryAnswer(
            dimensions=plan.dimensions,
            cells=previewed.cells,
            epsilon_spent=0.0,
            epsilon_remaining=status.remaining,
            noise_scale={s.name: s.sensitivity / s.epsilon for s in plan.stated},
            audit_sequence=entry.sequence,
            typical=previewed.typical,
            epsilon_needed=needed,
        )

    def _measure(self, data: MatchedData, measurements: Sequence[Measurement]) -> dict[str, Noisy]:
        """Read each vector exactly, add its noise; the exact values end here."""
        noisy: dict[str, Noisy] = {}
        for m in measurements:
            histogram = m.read(data)
            values, scale = self._noise.release([clamp(v) for v in histogram.counts], m.sensitivity, m.epsilon)
            noisy[m.name] = Noisy(histogram.keys, tuple(values), scale)
        return noisy

    def histograms(
        self,
        principal: Principal,
        collaboration: Collaboration,
        epsilon: float,
        measurements: Sequence[Measurement],
        dimensions: tuple[str, ...],
        finish: Callable[[Mapping[str, Noisy], int], list[Cell]],
        keys: VectorKeys = (),
        typical: Callable[[float], Mapping[str, float | tuple[float, ...]]] | None = None,
    ) -> Plan:
        """A plan that releases noisy vectors and cells derived from them, charged to the requester.

        `keys`: the cells of every vector, or per vector name (from the axes' domains: the policy's), for the
        preview; `typical(group)`:
        the family's typical value per vector (released unit) for a group of that many people (default: `group`).
        """
        min_group = collaboration.policy.min_group_size

        def run(data: MatchedData) -> Outcome:
            noisy = self._measure(data, measurements)
            cells = tuple(finish(noisy, min_group))
            return Outcome(dimensions, cells, {name: n.scale for name, n in noisy.items()})

        stated = tuple(m.stated for m in measurements)
        preview = histogram_preview(stated, epsilon, keys, finish, min_group, typical) if keys else None
        return Plan((Charge(principal.name, epsilon),), run, stated, preview, dimensions)

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

    # -- the queries, each in its family's module, keyed as in cleanroom_client.query_types ----------------------
    overlap = overlap_family.overlap
    venn = overlap_family.venn
    segment_insight = overlap_family.segment_insight
    funnel = funnel_family.funnel
    funnel_flow = funnel_family.funnel_flow
    value = goal_family.value
    loyalty = goal_family.loyalty
    attribution = attribution_family.attribution
    lift = lift_family.lift
    lookalike = lookalike_family.lookalike
    activate = activation_family.activate

    def budget(self, principal: Principal, collaboration_id: str) -> tuple[Collaboration, list[Any]]:
        """Each member's budget status (members and assigned auditors may read it)."""
        collaboration = self._collaborations.get(principal, collaboration_id, "budget.get")
        limits = self._limits(collaboration)
        return collaboration, [self._budget.status(collaboration.id, m.name, limits) for m in collaboration.members]


#: The largest |typical value| (and typical group) a preview takes: every exact value is clamped to +-2^53 in its
#: integer unit before noise, so no released cell is larger; beyond it, a family's arithmetic overflowed (a typical
#: sum of 1e308 reached `round(inf)`: INTERNAL, after the preview's audit entry was written).
MAX_TYPICAL = float(2**53)
#: The most entries a preview's typical map may hold, and the longest name: a preview needs one per vector its
#: query releases (three at most today: lift's; `tests/privacy/test_preview.py` holds every family to these), and
#: the edge alone admitted 1,000 names of 1,024 characters, echoed into the refusal of names the query does not
#: release and into the shared audit log.
MAX_TYPICAL_VECTORS = 8
MAX_VECTOR_NAME = 64
#: The most cells a preview solves `within` for: `epsilon_needed` runs the family's whole post-processing some
#: 32 + 12 x (kinds of cells) times, so its work grows with the cells; a value preview of 8,000 groups (56,000 cells)
#: held a worker for 35-43 s per request (red team, issue 31), and previews are rated at a burst of 20.
MAX_SOLVED_CELLS = 2_000


def check_typical(typical: Typical) -> None:
    """INVALID_ARGUMENT unless every assumption of a preview is a finite number a release could hold.

    At most `MAX_TYPICAL_VECTORS` typical values, named in at most `MAX_VECTOR_NAME` characters (the refusal names
    the rule, not the names); the group and `within` must be positive, every typical value at most `MAX_TYPICAL` in
    magnitude (negative values are allowed: a measure may be negative). Request-only: a refusal here is the same
    whatever the data.
    """
    if len(typical.values) > MAX_TYPICAL_VECTORS:
        raise InvalidArgumentError(
            f"typical names {len(typical.values)} vectors; a preview takes at most {MAX_TYPICAL_VECTORS}, one per "
            "vector the query releases (its noise_scale names them)"
        )
    if any(len(name) > MAX_VECTOR_NAME for name in typical.values):
        raise InvalidArgumentError(
            f"typical: a vector's name is at most {MAX_VECTOR_NAME} characters (the query's noise_scale names them)"
        )
    if not (math.isfinite(typical.group) and 0 < typical.group <= MAX_TYPICAL):
        raise InvalidArgumentError(f"typical_group must be in (0, {MAX_TYPICAL:.0f}], got {typical.group:g}")
    if not (math.isfinite(typical.within) and 0 <= typical.within <= MAX_TYPICAL):
        raise InvalidArgumentError(f"within must be a positive finite number, got {typical.within:g}")
    for name, v in typical.values.items():
        for x in v if isinstance(v, tuple) else (v,):
            if not (math.isfinite(x) and abs(x) <= MAX_TYPICAL):
                raise InvalidArgumentError(
                    f"typical[{name!r}] must be a finite number of magnitude at most {MAX_TYPICAL:.0f}, got {x:g}"
                )


#: Points of the geometric grid over the policy's epsilon range that `epsilon_needed` first searches.
GRID = 32
#: Bisection steps after the grid, for each kind of cell (cells whose bars agree at every grid point share them).
BISECTIONS = 12


def epsilon_needed(
    preview: Callable[[Typical, float], Previewed], typical: Typical, at: Previewed, low: float, high: float
) -> tuple[float, ...]:
    """Per cell of `at`: the least epsilon in [low, high] whose preview bar is within `typical.within` x |value|.

    Bars shrink as epsilon grows (every noise scale is sensitivity over its share of epsilon), so the first point of
    a geometric grid that meets the target, then bisection between it and the point before, finds it; the answer
    errs up (at it the target is met). Cells whose bars and values agree at every grid point (one measure at
    uniform typical values) are one kind and share the bisection, so the work grows with the kinds of cells, not
    their number. 0 where no epsilon in the range meets the target, the cell is withheld at the typical values, or
    has no bar or a typical value of 0.
    """
    grid = [low * (high / low) ** (i / (GRID - 1)) for i in range(GRID)] if high > low else [high]
    runs = [preview(typical, e).cells for e in grid]

    def meets(cell: Cell) -> bool:
        return not cell.suppressed and cell.error_95 <= typical.within * abs(cell.value)

    solved: dict[tuple[object, ...], float] = {}
    out = []
    for i, cell in enumerate(at.cells):
        if cell.suppressed or cell.value == 0 or cell.error_95 == 0:
            out.append(0.0)
            continue
        kind = (cell.measure, *((c[i].value, c[i].error_95, c[i].suppressed) for c in runs))
        if kind not in solved:
            first = next((j for j, cells in enumerate(runs) if meets(cells[i])), None)
            if first is None:
                solved[kind] = 0.0
            else:
                lo, hi = (grid[first - 1], grid[first]) if first else (grid[0], grid[0])
                for _ in range(BISECTIONS if first else 0):
                    mid = math.sqrt(lo * hi)
                    lo, hi = (lo, mid) if meets(preview(typical, mid).cells[i]) else (mid, hi)
                solved[kind] = hi
        out.append(solved[kind])
    return tuple(out)
