"""Lift against a holdout: its DuckDB SQL over the join (exact, un-noised, never leaving the engine) and its plan.

Lift: each matched person with a test group for the campaign falls in one group (the first row uploaded for that
campaign); per group and conversion (at least one, or none) the number of people, and per group the sum and sum
of squares of their capped, clamped revenue (cents rounded toward zero), each person's total clipped to the
policy's per-person bound (`TableSpec.person_cents`, as value's), which bounds one person's move of the revenue
vector.

Everything here is total, as in `attribution`: per-person values are bounded by the policy and every sum over
people is a 128-bit integer, clamped to +-2^53 before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cleanroom_client.policy import QueryType, TableSpec, squared_bound

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..principals import Principal
from .attribution import ANY_OF, CENTS, EventTables, capped_sql, event_tables, matched_sql
from .cells import NO_DENOMINATOR, Z95, Cell, below_minimum_group, withheld
from .matched import Axis, Catalog, Histogram, MatchedData, Sql, cells_of, fill_histogram
from .plan import Measurement, Noisy, Plan, QueryAnswer
from .queries import LiftQuery

if TYPE_CHECKING:
    from .engine import QueryEngine

#: Lift's histogram of people by test group and whether they converted (`yes`, `no`): one pair is in one cell
#: (sensitivity c); people and converters are post-processing of it.
CONVERSION = "people_by_conversion"
#: How lift splits its epsilon (docs/privacy.md, "Money"). The conversion histogram gets what keeps people and
#: converters no wider than at a quarter of epsilon each (people sum two cells: sqrt(2) x e95(c / 0.36) <
#: e95(c / 0.25)); incremental revenue, (exposed - holdout revenue per person) x exposed people, the money a user
#: reads, is dominated by the holdout's revenue noise over its (smaller) size, so revenue gets the rest but what the
#: revenue squared needs for the sampling term. (benchmarks/bench_accuracy.py measures them.)
LIFT_SPLIT: tuple[tuple[str, float], ...] = ((CONVERSION, 0.36), ("revenue", 0.59), ("revenue_sq", 0.05))


def lift_sql(catalog: Catalog, ev: EventTables, groups: TableSpec, campaign: str) -> Sql:
    """Per test group and whether they converted: people, revenue (cents), revenue squared (currency units squared).

    Each person's revenue (their at most cap conversions, each clipped to [lo, hi]) is in whole cents rounded
    toward zero, clipped to the policy's per-person bound (`TableSpec.person_cents`); revenue squared is that
    clipped total's square, rounded half up in 128-bit integers (`squared_bound`: a double's rounding passed it).
    """
    tg = catalog.table(groups.member, "test_groups", ["campaign", "test_group"])
    side = catalog.side(groups.member)
    text = f"""
        WITH m AS ({matched_sql(catalog, ev.conversions.member)}),
        conv AS ({capped_sql(catalog, ev)}),
        per_person AS (SELECT person, count(*) AS conversions,
                              least(greatest(CAST(trunc(sum(value) * {CENTS}) AS HUGEINT), -$person), $person)
                              AS cents
                       FROM conv WHERE rn <= $cap GROUP BY person),
        grouped AS (
            SELECT m.person, arg_min(CAST(t.test_group AS VARCHAR), t.rowid) AS test_group
            FROM m JOIN {tg} t ON t.row_id = m.{side}
            WHERE CAST(t.campaign AS VARCHAR) = $campaign GROUP BY m.person
        )
        SELECT g.test_group, p.person IS NOT NULL, count(*), coalesce(sum(p.cents), 0),
               coalesce(sum((CAST(p.cents AS HUGEINT) * p.cents + {CENTS * CENTS // 2}) // {CENTS * CENTS}), 0)
        FROM grouped g LEFT JOIN per_person p ON p.person = g.person
        GROUP BY 1, 2
    """
    person = ev.conversions.person_cents(ev.value_column)
    params = {"collab": catalog.id, "lo": ev.lo, "hi": ev.hi, "cap": ev.cap, "campaign": campaign}
    return Sql(text, params | {"person": person})


#: The states of lift's conversion histogram.
CONVERTED, NOT_CONVERTED = "yes", "no"


def group_axis(groups: TableSpec) -> Axis:
    """The test groups, in the policy's fixed order (exposed, holdout)."""
    return Axis("test_group", groups.member, "test_group", ("exposed", "holdout"))


# -- the queries ------------------------------------------------------------------------------------------------


def lift(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: LiftQuery, preview: bool = False
) -> QueryAnswer:
    """Conversion rate per test group, absolute and relative lift, incremental conversions and revenue.

    Three vectors (every matched person with a test group is in one group): `people_by_conversion`, people per
    group x converted or not (sensitivity c: one pair in one cell; people and converters are its sums), revenue
    in cents (c x person_cents: each person's revenue clipped to the policy's `per_person_max`, or to
    cap x max|value| without one) and revenue squared in currency units squared (c x (ceil(B^2) + 1),
    B = person_cents / 100). Epsilon is split by `LIFT_SPLIT`: incremental revenue reads revenue in both groups,
    and revenue squared only feeds the sampling term of the intervals. Intervals combine sampling error and DP
    noise.
    """
    share = dict(LIFT_SPLIT)

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        policy = collaboration.policy
        ev = event_tables(policy, catalog.members)
        groups = next((t for t in policy.tables.values() if t.table == "test_groups"), None)
        if groups is None:
            raise FailedPreconditionError("the policy must declare a test_groups table with campaign and test_group")
        if q.campaign not in groups.dimensions["campaign"]:
            raise InvalidArgumentError(
                f"campaign {q.campaign!r} is not in the declared domain {list(groups.dimensions['campaign'])}"
            )
        ax = group_axis(groups)
        sql = lift_sql(catalog, ev, groups, q.campaign)
        converted = Axis("converted", ev.conversions.member, "converted", (CONVERTED, NOT_CONVERTED))
        cached: dict[str, list[tuple[Any, ...]]] = {}

        def rows(data: MatchedData) -> list[tuple[Any, ...]]:
            if "rows" not in cached:
                cached["rows"] = data.rows(sql)
            return cached["rows"]

        def read_conversion(data: MatchedData) -> Histogram:
            return fill_histogram(
                (ax, converted), [(r[0], CONVERTED if r[1] else NOT_CONVERTED, r[2]) for r in rows(data)]
            )

        def read_revenue(data: MatchedData) -> Histogram:
            return fill_histogram((ax,), [(r[0], r[3]) for r in rows(data)])

        def read_squares(data: MatchedData) -> Histogram:
            return fill_histogram((ax,), [(r[0], r[4]) for r in rows(data)])

        person = ev.conversions.person_cents(ev.value_column)
        c = engine.stability(catalog, any_of=ANY_OF)
        eps = {name: q.epsilon * part for name, part in share.items()}
        measurements = (
            Measurement(CONVERSION, read_conversion, eps[CONVERSION], c),
            Measurement("revenue", read_revenue, eps["revenue"], c * person, CENTS),
            Measurement("revenue_sq", read_squares, eps["revenue_sq"], c * squared_bound(person)),
        )
        floor = 0.0 if ev.lo >= 0 else -math.inf
        bound = person / CENTS
        person_range = (max(min(0.0, ev.cap * ev.lo), -bound), min(max(0.0, ev.cap * ev.hi), bound))

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            return lift_cells(noisy, min_group, floor, person_range)

        conversion_keys = cells_of((ax, converted))

        def typical(group: float) -> dict[str, float | tuple[float, ...]]:
            # both groups alike (no lift: the bar is then the smallest detectable one), a tenth converting once at
            # the middle of the value bounds
            converters, mid = group / 10, (ev.lo + ev.hi) / 2
            return {
                CONVERSION: tuple(converters if k[1] == CONVERTED else group - converters for k in conversion_keys),
                "revenue": converters * mid,
                "revenue_sq": converters * mid**2,
            }

        group_keys = cells_of((ax,))
        keys = {CONVERSION: conversion_keys, "revenue": group_keys, "revenue_sq": group_keys}
        return engine.histograms(
            principal, collaboration, q.epsilon, measurements, ("test_group",), finish, keys, typical
        )

    return engine.release(
        principal, collaboration_id, q, QueryType.LIFT, {"campaign": q.campaign}, build, preview=preview
    )


@dataclass(frozen=True)
class _Group:
    """One test group's people and converters (post-processing of the conversion histogram) with their variances."""

    people: float
    people_var: float
    people_e95: float
    converters: float
    converters_var: float
    converters_e95: float


def _groups(hist: Noisy) -> dict[str, _Group]:
    """Per test group: people = converted + not converted cells, converters = the converted cell.

    The two cells' noise is independent with variance v and bar e95 each: people has variance 2v and bar
    sqrt(2) x e95 (the quadrature `cells.py` uses), converters v and e95.
    """
    cells = {k: float(v) for k, v in zip(hist.keys, hist.values, strict=True)}
    v, e95 = hist.variance, float(hist.error_95)
    out = {}
    for (group,) in dict.fromkeys(k[:1] for k in hist.keys):
        yes, no = cells[(group, CONVERTED)], cells[(group, NOT_CONVERTED)]
        out[group] = _Group(yes + no, 2 * v, math.sqrt(2) * e95, yes, v, e95)
    return out


def _rate(g: _Group, v: float) -> tuple[float, float, float] | None:
    """Conversion rate of a group with its variance (sampling + noise), and the group size; None if empty.

    The rate is yes / (yes + no) of two independent noisy cells of variance v: by the delta method its noise
    variance is ((1 - p)^2 + p^2) v / people^2 (people and converters share the `yes` cell's draw).
    """
    people, conv = g.people, max(g.converters, 0.0)
    if people <= 0:
        return None
    p = min(conv / people, 1.0)
    var = p * (1 - p) / people + ((1 - p) ** 2 + p**2) * v / people**2
    return p, var, float(people)


def _mean(
    g: _Group, r: Noisy, i: int, second_sum: float, person_range: tuple[float, float]
) -> tuple[float, float] | None:
    """Revenue per person of group i (currency units) with its variance (sampling + noise).

    The sampling variance of one person's revenue comes from the noisy revenue squared (`second_sum`), capped by
    the most a variable within `person_range` [a, b] with this mean can have, (b - mu)(mu - a) (Bhatia-Davis):
    the cap is post-processing of released values and the policy, and keeps a large noise draw from inflating the
    interval beyond what any data could need.
    """
    people = g.people
    if people <= 0:
        return None
    mu = r.values[i] / CENTS / people
    second = second_sum / people
    a, b = person_range
    m = min(max(mu, a), b)
    spread = min(max(second - mu**2, 0.0), (b - m) * (m - a))
    sampling = spread / people
    noise = (r.variance / CENTS**2 + mu**2 * g.people_var) / people**2
    return mu, sampling + noise


def lift_cells(
    noisy: Mapping[str, Noisy],
    min_group: int,
    revenue_floor: float,
    person_range: tuple[float, float],
) -> list[Cell]:
    """Per group: people, converters, conversion rate, revenue per person; then the lift estimates.

    Revenue per person is shown at `revenue_floor` or above (0 when the value bounds are non-negative).
    `person_range`: the range [a, b] of one person's revenue the policy allows (`_mean` caps the sampling variance
    by it).

    Intervals are normal approximations (1.96 standard deviations) whose variance adds the binomial (or
    empirical) sampling variance to the DP noise variance, by the delta method for the derived ratios. The
    sampling variance is that of the difference between the groups' means (a randomised test's between-group
    error, Neyman's), so the bar covers the campaign's effect, not only this sample's difference. Every
    division is guarded, so any noisy input gives cells (withheld where a denominator is not positive).
    """
    hist, r, sq = noisy[CONVERSION], noisy["revenue"], noisy["revenue_sq"]
    groups = _groups(hist)
    small = below_minimum_group(min_group)
    out: list[Cell] = []
    ok = {}
    stats = {}
    for i, keys in enumerate(r.keys):
        g = groups[keys[0]]
        group_ok = g.people >= min_group and g.converters >= min_group
        ok[keys[0]] = group_ok
        out.append(Cell(keys, "people", g.people, g.people_e95, False) if group_ok else withheld(keys, "people", small))
        out.append(
            Cell(keys, "converters", g.converters, g.converters_e95, False)
            if group_ok
            else withheld(keys, "converters", small)
        )
        rate = _rate(g, hist.variance)
        mean = _mean(g, r, i, max(float(sq.values[i]), 0.0), person_range)
        stats[keys[0]] = (rate, mean)
        if group_ok and rate and mean:
            out.append(Cell(keys, "conversion_rate", rate[0], Z95 * math.sqrt(rate[1]), False))
            per_person = max(mean[0], revenue_floor)
            out.append(Cell(keys, "revenue_per_person", per_person, Z95 * math.sqrt(mean[1]), False))
        else:
            why = small if not group_ok else NO_DENOMINATOR
            out += [withheld(keys, "conversion_rate", why), withheld(keys, "revenue_per_person", why)]
    (re_, me), (rh, mh) = stats["exposed"], stats["holdout"]
    exposed_var = groups["exposed"].people_var
    key = ("lift",)
    names = (
        "absolute_lift",
        "relative_lift",
        "incremental_conversions",
        "incremental_revenue",
        "minimum_detectable_lift",
        "minimum_detectable_revenue",
    )
    if not (ok["exposed"] and ok["holdout"] and re_ and rh and me and mh and rh[0] > 0):
        why = f"a test group is {small}" if not (ok["exposed"] and ok["holdout"]) else NO_DENOMINATOR
        return out + [withheld(key, m, why) for m in names]
    diff, var_diff = re_[0] - rh[0], re_[1] + rh[1]
    rel = re_[0] / rh[0] - 1
    var_rel = re_[1] / rh[0] ** 2 + (re_[0] / rh[0] ** 2) ** 2 * rh[1]
    exposed = re_[2]
    inc_conv, var_inc_conv = diff * exposed, exposed**2 * var_diff + diff**2 * exposed_var
    mdiff, var_mdiff = me[0] - mh[0], me[1] + mh[1]
    inc_rev, var_inc_rev = mdiff * exposed, exposed**2 * var_mdiff + mdiff**2 * exposed_var
    for measure, value, var in (
        ("absolute_lift", diff, var_diff),
        ("relative_lift", rel, var_rel),
        ("incremental_conversions", inc_conv, var_inc_conv),
        ("incremental_revenue", inc_rev, var_inc_rev),
    ):
        out.append(Cell(key, measure, value, Z95 * math.sqrt(max(var, 0.0)), False))
    # The smallest true effect whose 95% interval would exclude zero: the bar of an estimate of zero at these sizes
    # (post-processing of the same noisy vectors; what the test can detect, and what more epsilon would buy).
    out.append(Cell(key, "minimum_detectable_lift", Z95 * math.sqrt(max(var_diff, 0.0)), 0.0, False))
    out.append(Cell(key, "minimum_detectable_revenue", Z95 * exposed * math.sqrt(max(var_mdiff, 0.0)), 0.0, False))
    return out
