"""Attribution and lift: their DuckDB SQL over the join (exact, un-noised, never leaving the engine) and their plans.

`attribution`, `lift` and `lift_cells` at the end are the queries' plans for `QueryEngine.release`.

Contribution bounding, which makes the sensitivities exact (per matched pair; the engine multiplies them by the
join's stability constant):
- Each matched person contributes at most `max_per_person` conversions (the policy's cap on the conversions
  table): the earliest ones, ties broken by value then by their row order. Values are clamped to the policy's
  bounds [lo, hi] first.
- A conversion's cents are trunc(100 x value) (rounded toward zero). One person's capped conversions together carry
  at most P = `per_person_bound` cents in absolute value: when their |cents| add up to S > P, each conversion's
  cents are scaled to sign x floor(|cents| x P / S) (integers, so the sum of |cents| is at most P exactly). P is the
  policy's `per_person_max` of the value (in cents, rounded up), else ceil(100 x cap x max(|lo|, |hi|)), which S
  never passes (so without it nothing is scaled and answers are as before).
- Each conversion hands out exactly 1000 thousandths of a conversion, and exactly its cents, across its
  touchpoints, or the whole of both to the `none` cell when no touchpoint qualifies (unattributed). Integer shares
  are apportioned by largest remainder (ties by touch order), so the integers of one conversion add up to exactly
  those totals whatever the number of touches, and all of them have the sign of the value. So one person moves the
  conversion vector by at most 1000 x cap (L1) and the revenue vector by at most P.
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
campaign); per group the number of people, of converters (at least one conversion), and the sum and sum of squares
of their capped, clamped revenue (cents rounded toward zero).

Everything here is total: given data that passed the upload checks, no statement can fail because of the values.
Time columns are timestamps within a fixed window (checked at upload), per-person values are bounded by the policy
(whose sensitivities are capped at 2^53), and every sum over people is a 128-bit integer (HUGEINT), clamped to
+-2^53 before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cleanroom_client.policy import Policy, QueryType, TableSpec

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..principals import Principal
from ..storage.database import quote_ident
from .cells import Z95, Cell, withheld
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
    #: The most |cents| one person's capped conversions carry together (`per_person_bound`): attribution scales a
    #: person's conversions down to it, so it is the revenue vector's L1 sensitivity per matched pair.
    person_cents: int = 0

    @property
    def value_bound(self) -> float:
        """The largest |value| after clamping."""
        return max(abs(self.lo), abs(self.hi))

    @property
    def cents_per_conversion(self) -> int:
        """The most cents one conversion can carry (its value is rounded toward zero)."""
        return math.ceil(CENTS * self.value_bound)


def per_person_bound(conversions: TableSpec, column: str) -> int:
    """The most |cents| one person's conversions may carry together in attribution: the one place it is read.

    The policy's `per_person_max` of the value column in cents, rounded up, when declared; otherwise the bound
    the rows imply, ceil(100 x max_per_person x max(|lo|, |hi|)), which no person's conversions reach (each carries
    at most trunc(100 x max(|lo|, |hi|)) cents), so a policy without it keeps today's answers exactly.
    """
    return conversions.person_cents(column)


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
    return EventTables(conv, expo, column, lo, hi, conv.max_per_person, every, per_person_bound(conv, column))


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
            f"""SELECT c.person, c.rn, c.cts, c.cents, e.{et} AS ets, CAST(e.{g} AS VARCHAR) AS g,
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
        kept_conv AS (
            SELECT *, CAST(trunc(value * {CENTS}) AS BIGINT) AS raw_cents FROM conv WHERE rn <= $cap
        ),
        capped AS (
            SELECT *, CASE WHEN person_abs <= $person THEN raw_cents
                           ELSE CAST(sign(raw_cents) * (CAST(abs(raw_cents) AS HUGEINT) * $person // person_abs)
                                     AS BIGINT) END AS cents
            FROM (SELECT *, sum(abs(raw_cents)) OVER (PARTITION BY person) AS person_abs FROM kept_conv)
        ),
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
            SELECT person, rn, pos, g, {weight} AS w, cents AS total_cents
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
            SELECT person, NULL, {MILLI}, cents
            FROM capped c WHERE NOT EXISTS (SELECT 1 FROM touches t WHERE t.person = c.person AND t.rn = c.rn)
        )
        SELECT credits.g{brand_select}, sum(milli), sum(cents) FROM credits {brand_join} GROUP BY 1{brand_group}
    """
    params = {
        "collab": catalog.id,
        "lo": ev.lo,
        "hi": ev.hi,
        "cap": ev.cap,
        "person": ev.person_cents,
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
    """Per test group: people, converters, revenue (cents) and revenue squared (currency units squared)."""
    tg = catalog.table(groups.member, "test_groups", ["campaign", "test_group"])
    side = catalog.side(groups.member)
    text = f"""
        WITH m AS ({_matched(catalog, ev.conversions.member)}),
        conv AS ({_capped(catalog, ev)}),
        per_person AS (SELECT person, count(*) AS conversions, sum(value) AS revenue FROM conv WHERE rn <= $cap
                       GROUP BY person),
        grouped AS (
            SELECT m.person, arg_min(CAST(t.test_group AS VARCHAR), t.rowid) AS test_group
            FROM m JOIN {tg} t ON t.row_id = m.{side}
            WHERE CAST(t.campaign AS VARCHAR) = $campaign GROUP BY m.person
        )
        SELECT g.test_group, count(*), count(p.person),
               coalesce(sum(CAST(trunc(p.revenue * {CENTS}) AS HUGEINT)), 0),
               coalesce(sum(CAST(round(p.revenue * p.revenue) AS HUGEINT)), 0)
        FROM grouped g LEFT JOIN per_person p ON p.person = g.person
        GROUP BY 1
    """
    return Sql(text, {"collab": catalog.id, "lo": ev.lo, "hi": ev.hi, "cap": ev.cap, "campaign": campaign})


def group_axis(groups: TableSpec) -> Axis:
    """The test groups, in the policy's fixed order (exposed, holdout)."""
    return Axis("test_group", groups.member, "test_group", ("exposed", "holdout"))


# -- the queries ------------------------------------------------------------------------------------------------
def attribution(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: AttributionQuery, preview: bool = False
) -> QueryAnswer:
    """Attributed conversions and revenue (and ROAS where spend is public) per campaign or channel.

    Epsilon is split in half between the conversions vector (sensitivity c x 1000 x cap thousandths) and the
    revenue vector (c x P cents, P the per-person bound); see the module docstring for the bounding. Both are
    discrete Laplace: one person's credit may sit in one cell, so a vector's L2 sensitivity is as large as its L1
    and the Gaussian gives wider bars at any ε and δ the policies allow (docs/privacy.md, "Attribution's
    revenue"). The half leaves the conversions' bars as they were; the per-person bound is what narrows revenue's.
    The group `none` holds the unattributed conversions.
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
            Measurement("revenue", revenue, half, c * ev.person_cents, CENTS),
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
        return engine.histograms(principal, collaboration, q.epsilon, measurements, dims, finish)

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
            raise FailedPreconditionError("the policy must declare a test_groups table with campaign and test_group")
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
        c = engine.stability(catalog, any_of=ANY_OF)
        measurements = (
            Measurement("people", column(1), quarter, c),
            Measurement("converters", column(2), quarter, c),
            Measurement("revenue", column(3), quarter, c * math.ceil(CENTS * bound), CENTS),
            Measurement("revenue_sq", column(4), quarter, c * (math.ceil(bound**2) + 1)),
        )
        floor = 0.0 if ev.lo >= 0 else -math.inf

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            return lift_cells(noisy, min_group, floor)

        return engine.histograms(principal, collaboration, q.epsilon, measurements, ("test_group",), finish)

    return engine.release(
        principal, collaboration_id, q, QueryType.LIFT, {"campaign": q.campaign}, build, preview=preview
    )


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
