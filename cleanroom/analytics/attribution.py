"""Attribution and lift: their DuckDB SQL over the join (exact, un-noised, never leaving the engine) and their plans.

`attribution`, `lift` and `lift_cells` at the end are the queries' plans for `QueryEngine.release`.

Contribution bounding, which makes the sensitivities exact (per matched pair; the engine multiplies them by the
join's stability constant):
- Each matched person contributes at most `max_per_person` conversions (the policy's cap on the conversions
  table): the earliest ones, ties broken by value then by their row order. Values are clamped to the policy's
  bounds [lo, hi] first.
- Each conversion hands out exactly 1000 thousandths of a conversion, and exactly trunc(100 x value) cents (rounded
  toward zero, so |cents| <= 100 x max(|lo|, |hi|)), across its touchpoints, or the whole of both to the `none`
  cell when no touchpoint qualifies (unattributed). Integer shares are apportioned by largest remainder (ties by
  touch order), so the integers of one conversion add up to exactly those totals whatever the number of touches,
  and all of them have the sign of the value. So one person moves the conversion vector by at most 1000 x cap (L1)
  and the revenue vector by at most cap x ceil(100 x max(|lo|, |hi|)).
- At most `MAX_TOUCHES` touchpoints per conversion are credited (the latest ones); this bounds the work, the
  apportioning above bounds the sensitivity.

A touchpoint qualifies for a conversion when it is the same person's exposure at or before the conversion and no
more than `lookback_days` before it (both ends inclusive). With click-over-view, a conversion that has any
qualifying click is credited to its clicks only. Touchpoints of one conversion are ordered by time; at the same
instant an impression comes before a click (so a tie goes to the click for last touch), then by campaign and
channel name. That order decides first and last touch and the positions. Time decay weighs a touch by
2^(-(newest - its time) / half_life), relative to the conversion's newest credited touch, whose weight is 1: the
weights never all underflow, whatever the data.

Lift: each matched person with a test group for the campaign falls in one group (the first row uploaded for that
campaign); per group and conversion (at least one, or none) the number of people, and per group the sum and sum
of squares of their capped, clamped revenue (cents rounded toward zero), each person's total clipped to the
policy's per-person bound (`TableSpec.person_cents`, as value's), which bounds one person's move of the revenue
vector.

Everything here is total: given data that passed the upload checks, no statement can fail because of the values.
Time columns are timestamps within a fixed window (checked at upload), per-person values are bounded by the policy
(whose sensitivities are capped at 2^53), and every sum over people is a 128-bit integer (HUGEINT), clamped to
+-2^53 before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cleanroom_client.policy import Policy, QueryType, TableSpec

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..principals import Principal
from ..storage.database import quote_ident
from .cells import NO_DENOMINATOR, Z95, Cell, below_minimum_group, withheld
from .matched import Axis, Catalog, Histogram, MatchedData, Sql, axis, cells_of, fill_histogram
from .plan import Measurement, Noisy, Plan, QueryAnswer, dimension_domain
from .queries import AttributionQuery, LiftQuery

if TYPE_CHECKING:
    from .engine import QueryEngine

MILLI = 1000
CENTS = 100
MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")
#: Most touchpoints credited per conversion (the latest ones).
MAX_TOUCHES = 100
#: Attribution and lift count the hub's users matched with any member of the population, not every member: one
#: person however many platforms reached them (the engine states their sensitivity for that population).
ANY_OF = True
#: Lift's histogram of people by test group and whether they converted (`yes`, `no`): one pair is in one cell
#: (sensitivity c); people and converters are post-processing of it.
CONVERSION = "people_by_conversion"
#: How lift splits its epsilon (docs/privacy.md, "Money"). The conversion histogram gets what keeps people and
#: converters no wider than at a quarter of epsilon each (people sum two cells: sqrt(2) x e95(c / 0.36) <
#: e95(c / 0.25)); incremental revenue, (exposed - holdout revenue per person) x exposed people, the money a user
#: reads, is dominated by the holdout's revenue noise over its (smaller) size, so revenue gets the rest but what the
#: revenue squared needs for the sampling term. (benchmarks/bench_accuracy.py measures them.)
LIFT_SPLIT: tuple[tuple[str, float], ...] = ((CONVERSION, 0.36), ("revenue", 0.59), ("revenue_sq", 0.05))
#: The shortest half-life time decay accepts (an hour).
MIN_HALF_LIFE_DAYS = 1 / 24


@dataclass(frozen=True)
class EventTables:
    """Where conversions and exposures live, and the bounds the policy sets on them.

    With three or more members, `exposures` is the first of `every_exposures`: the exposures tables of every member
    in the query's population, whose touches are credited together (one person, however many platforms reached
    them).
    """

    conversions: TableSpec
    exposures: TableSpec
    value_column: str
    lo: float
    hi: float
    cap: int
    every_exposures: tuple[TableSpec, ...] = ()

    @property
    def value_bound(self) -> float:
        """The largest |value| after clamping."""
        return max(abs(self.lo), abs(self.hi))

    @property
    def cents_per_conversion(self) -> int:
        """The most cents one conversion can carry (its value is rounded toward zero)."""
        return math.ceil(CENTS * self.value_bound)


def event_tables(policy: Policy, members: Sequence[str] | None = None) -> EventTables:
    """The conversions and exposures tables the policy declares, with their time columns, bounds and cap.

    `members`: the query's population (the hub first); exposures tables of these members only, in this order.
    """
    conv = next((t for t in policy.tables.values() if t.table == "conversions"), None)
    every = tuple(
        t
        for m in (members if members is not None else [m.name for m in policy.members])
        for t in policy.tables.values()
        if t.table == "exposures" and t.member == m
    )
    expo = every[0] if every else None
    if conv is None or conv.time is None or not conv.measures:
        raise FailedPreconditionError(
            "the policy must declare a conversions table with a time column and a value measure"
        )
    if conv.max_per_person is None:
        raise FailedPreconditionError(
            f"the policy must cap {conv.qualified_name}.max_per_person: the most conversions one person may contribute"
        )
    if expo is None or expo.time is None or not {"campaign", "channel", "kind"} <= set(expo.dimensions):
        raise FailedPreconditionError(
            "the policy must declare an exposures table with a time column and campaign, channel and kind dimensions"
        )
    for t in every:
        if t.time is None or not {"campaign", "channel", "kind"} <= set(t.dimensions):
            raise FailedPreconditionError(
                f"{t.qualified_name} needs a time column and campaign, channel and kind dimensions for attribution"
            )
    column = "value" if "value" in conv.measures else next(iter(conv.measures))
    lo, hi = conv.measures[column]
    return EventTables(conv, expo, column, lo, hi, conv.max_per_person, every)


def exposure_domain(ev: EventTables, column: str) -> tuple[str, ...]:
    """The values of an exposures dimension across every exposures table of the population, in order, once each."""
    return tuple(dict.fromkeys(v for t in ev.every_exposures or (ev.exposures,) for v in t.dimensions[column]))


def _matched(catalog: Catalog, conv_member: str) -> str:
    """The people with their rows: `conv_row` (the conversions' member), `row_<member>` for every member, `person`.

    With three or more members, the hub's users matched with any member of the population: one person however many
    platforms know them, so the touches of every platform are credited together (de-duplicated reach).
    """
    conv_side = catalog.side(conv_member)
    rows = ", ".join(catalog.side(m) for m in catalog.members)
    return (
        f"SELECT {conv_side} AS conv_row, {rows}, row_number() OVER (ORDER BY {conv_side}) AS person "
        f"FROM {catalog.pairs(any_of=ANY_OF)}"
    )


def _capped(catalog: Catalog, ev: EventTables) -> str:
    time = ev.conversions.time or ""
    conv = catalog.table(ev.conversions.member, "conversions", [time, ev.value_column])
    t, v = quote_ident(time), quote_ident(ev.value_column)
    return f"""
        SELECT m.person, m.conv_row, c.{t} AS cts,
               least(greatest(CAST(c.{v} AS DOUBLE), $lo), $hi) AS value,
               row_number() OVER (PARTITION BY m.person ORDER BY c.{t}, c.{v}, c.rowid) AS rn
        FROM {conv} c JOIN m ON c.row_id = m.conv_row
    """


def attribution_sql(
    catalog: Catalog,
    ev: EventTables,
    group: Axis,
    brand_axis: Axis | None,
    model: str,
    lookback_days: int,
    click_over_view: bool,
    half_life_days: float,
) -> Sql:
    """Attributed conversions (thousandths) and revenue (cents) per group value (and brand dimension value).

    Rows: (group, [brand value,] thousandths, cents).
    """
    touch_sources = []
    for spec in ev.every_exposures or (ev.exposures,):
        et, g = quote_ident(spec.time or ""), quote_ident(group.column)
        expo = catalog.table(spec.member, "exposures", [spec.time or "", group.column, "campaign", "channel", "kind"])
        touch_sources.append(
            f"""SELECT c.person, c.rn, c.cts, c.value, e.{et} AS ets, CAST(e.{g} AS VARCHAR) AS g,
                   e.kind = 'click' AS is_click, CAST(e.campaign AS VARCHAR) AS campaign,
                   CAST(e.channel AS VARCHAR) AS channel
            FROM capped c JOIN m ON m.person = c.person JOIN {expo} e ON e.row_id = m.{catalog.side(spec.member)}
            WHERE e.{et} <= c.cts AND e.{et} >= c.cts - to_days(CAST($lookback AS INTEGER))"""
        )
    weight = {
        "last_touch": "CASE WHEN pos = n THEN 1.0 ELSE 0.0 END",
        "first_touch": "CASE WHEN pos = 1 THEN 1.0 ELSE 0.0 END",
        "linear": "1.0 / n",
        "time_decay": "decay / sum(decay) OVER (PARTITION BY person, rn)",
        "position_based": (
            "CASE WHEN n = 1 THEN 1.0 WHEN n = 2 THEN 0.5 WHEN pos = 1 OR pos = n THEN 0.4 ELSE 0.2 / (n - 2) END"
        ),
    }[model]
    brand_join = brand_select = brand_group = ""
    if brand_axis is not None:
        users = catalog.table(brand_axis.member, "users", [brand_axis.column])
        row = catalog.side(brand_axis.member)
        brand_join = f"JOIN m mm ON mm.person = credits.person LEFT JOIN {users} u ON u.row_id = mm.{row}"
        brand_select = f", u.{quote_ident(brand_axis.column)}"
        brand_group = ", 2"
    text = f"""
        WITH m AS ({_matched(catalog, ev.conversions.member)}),
        conv AS ({_capped(catalog, ev)}),
        capped AS (SELECT * FROM conv WHERE rn <= $cap),
        touches AS ({" UNION ALL ".join(touch_sources)}),
        kept AS (
            SELECT *, max(CAST(is_click AS INTEGER)) OVER (PARTITION BY person, rn) AS any_click FROM touches
        ),
        latest AS (
            SELECT *, row_number() OVER (
                PARTITION BY person, rn ORDER BY ets DESC, is_click DESC, campaign DESC, channel DESC) AS recency
            FROM kept WHERE NOT $cov OR any_click = 0 OR is_click
        ),
        ordered AS (
            SELECT *,
                   row_number() OVER (PARTITION BY person, rn ORDER BY ets, is_click, campaign, channel) AS pos,
                   count(*) OVER (PARTITION BY person, rn) AS n,
                   pow(2.0, -(epoch(max(ets) OVER (PARTITION BY person, rn)) - epoch(ets))
                            / ($half_life * 86400.0)) AS decay
            FROM latest WHERE recency <= {MAX_TOUCHES}
        ),
        weighted AS (
            SELECT person, rn, pos, g, {weight} AS w, CAST(trunc(value * {CENTS}) AS BIGINT) AS total_cents
            FROM ordered
        ),
        floored AS (
            SELECT *, w * {MILLI} AS m_exact, w * abs(total_cents) AS c_exact,
                   CAST(floor(w * {MILLI}) AS BIGINT) AS m0, CAST(floor(w * abs(total_cents)) AS BIGINT) AS c0
            FROM weighted
        ),
        ranked AS (
            SELECT *,
                   {MILLI} - sum(m0) OVER conv AS m_left, abs(total_cents) - sum(c0) OVER conv AS c_left,
                   row_number() OVER (PARTITION BY person, rn ORDER BY m_exact - m0 DESC, pos) AS m_rank,
                   row_number() OVER (PARTITION BY person, rn ORDER BY c_exact - c0 DESC, pos) AS c_rank
            FROM floored WINDOW conv AS (PARTITION BY person, rn)
        ),
        credits AS (
            SELECT person, g, m0 + CAST(m_rank <= m_left AS BIGINT) AS milli,
                   sign(total_cents) * (c0 + CAST(c_rank <= c_left AS BIGINT)) AS cents
            FROM ranked
            UNION ALL
            SELECT person, NULL, {MILLI}, CAST(trunc(value * {CENTS}) AS BIGINT)
            FROM capped c WHERE NOT EXISTS (SELECT 1 FROM touches t WHERE t.person = c.person AND t.rn = c.rn)
        )
        SELECT credits.g{brand_select}, sum(milli), sum(cents) FROM credits {brand_join} GROUP BY 1{brand_group}
    """
    params = {
        "collab": catalog.id,
        "lo": ev.lo,
        "hi": ev.hi,
        "cap": ev.cap,
        "lookback": lookback_days,
        "cov": click_over_view,
        "half_life": half_life_days,
    }
    return Sql(text, params)


def check_attribution(model: str, lookback_days: int, half_life_days: float) -> None:
    """The request's own shape."""
    if model not in MODELS:
        raise InvalidArgumentError(f"model must be one of {', '.join(MODELS)}")
    if not 1 <= lookback_days <= 365:
        raise InvalidArgumentError("lookback_days must be between 1 and 365")
    if model == "time_decay" and not (MIN_HALF_LIFE_DAYS <= half_life_days <= 365 and math.isfinite(half_life_days)):
        raise InvalidArgumentError(
            f"time_decay needs half_life_days between {MIN_HALF_LIFE_DAYS:.4g} (an hour) and 365"
        )


def lift_sql(catalog: Catalog, ev: EventTables, groups: TableSpec, campaign: str) -> Sql:
    """Per test group and whether they converted: people, revenue (cents), revenue squared (currency units squared).

    Each person's revenue (their at most cap conversions, each clipped to [lo, hi]) is in whole cents rounded
    toward zero, clipped to the policy's per-person bound (`TableSpec.person_cents`); revenue squared is that
    clipped total's square, rounded.
    """
    tg = catalog.table(groups.member, "test_groups", ["campaign", "test_group"])
    side = catalog.side(groups.member)
    text = f"""
        WITH m AS ({_matched(catalog, ev.conversions.member)}),
        conv AS ({_capped(catalog, ev)}),
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
               coalesce(sum(CAST(round(CAST(p.cents AS DOUBLE) * p.cents / {CENTS * CENTS}) AS HUGEINT)), 0)
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
def attribution(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: AttributionQuery, preview: bool = False
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
            brand = axis(str(d), d.member, d.column, dimension_domain(policy, d))
        axes = (group,) if brand is None else (group, brand)
        cells_of(axes)
        sql = attribution_sql(catalog, ev, group, brand, q.model, q.lookback_days, q.click_over_view, q.half_life_days)
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

        c = engine.stability(catalog, any_of=ANY_OF)
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
                    small = below_minimum_group(min_group)
                    out += [withheld(keys, m, small) for m in ("attributed_conversions", "attributed_revenue", "roas")]
                    continue
                out.append(Cell(keys, "attributed_conversions", vc / MILLI, conv.error_95 / MILLI, False))
                revenue = max(vr / CENTS, floor)
                out.append(Cell(keys, "attributed_revenue", revenue, rev.error_95 / CENTS, False))
                cost = spend.get(keys[0])
                if cost:
                    out.append(Cell(keys, "roas", revenue / cost, rev.error_95 / CENTS / cost, False))
                else:
                    out.append(withheld(keys, "roas", "the policy states no spend for it (campaign_spend)"))
            return out

        def typical(group: float) -> dict[str, float | tuple[float, ...]]:
            # one conversion per person, at the middle of the value bounds
            return {"conversions": group, "revenue": group * (ev.lo + ev.hi) / 2}

        dims = (q.by,) if brand is None else (q.by, brand.label)
        return engine.histograms(
            principal, collaboration, q.epsilon, measurements, dims, finish, cells_of(axes), typical
        )

    params = {
        "model": q.model,
        "lookback_days": q.lookback_days,
        "by": q.by,
        "brand_dimension": str(q.brand_dimension or ""),
        "click_over_view": q.click_over_view,
        "half_life_days": q.half_life_days,
    }
    return engine.release(principal, collaboration_id, q, QueryType.ATTRIBUTION, params, build, preview=preview)


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
            Measurement("revenue_sq", read_squares, eps["revenue_sq"], c * (math.ceil((person / CENTS) ** 2) + 1)),
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
