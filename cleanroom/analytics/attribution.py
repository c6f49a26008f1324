"""Attribution and lift: their DuckDB SQL over the join (exact, un-noised, never leaving the engine) and their plans.

`attribution`, `lift` and `lift_cells` at the end are the queries' plans for `QueryEngine.release`. Attribution's
SQL returns the qualifying touches and the conversions' totals; the credits that depend on a conversion's other
touches (positions, weights, the apportioning below) are computed over them in numpy by `credits`, in the engine's
process like every exact aggregate here.

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
- At most `credits.MAX_TOUCHES` touchpoints per conversion are credited (the latest ones); this bounds the work, the
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

import numpy as np

from cleanroom_client.policy import Policy, QueryType, TableSpec, squared_bound

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InternalError, InvalidArgumentError
from ..principals import Principal
from ..storage.database import quote_ident
from . import credits
from .cells import NO_DENOMINATOR, Z95, Cell, below_minimum_group, withheld
from .credits import MILLI
from .matched import Axis, Catalog, Histogram, MatchedData, Sql, axis, cells_of, clamp, fill_histogram
from .plan import Measurement, Noisy, Plan, QueryAnswer, dimension_domain
from .queries import AttributionQuery, LiftQuery

if TYPE_CHECKING:
    from .engine import QueryEngine

CENTS = 100
MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")
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

    `person` is the hub's row: the join is one to one and the hub is in every pair, so it names one person. With
    three or more members, the hub's users matched with any member of the population: one person however many
    platforms know them, so the touches of every platform are credited together (de-duplicated reach).
    """
    conv_side = catalog.side(conv_member)
    rows = ", ".join(catalog.side(m) for m in catalog.members)
    person = catalog.side(catalog.hub)
    return f"SELECT {conv_side} AS conv_row, {rows}, {person} AS person FROM {catalog.pairs(any_of=ANY_OF)}"


def _clamped(column: str) -> str:
    """SQL: a conversion's value clamped to the policy's bounds (the parameters `$lo`, `$hi`)."""
    return f"least(greatest(CAST({column} AS DOUBLE), $lo), $hi)"


def _capped(catalog: Catalog, ev: EventTables) -> str:
    time = ev.conversions.time or ""
    conv = catalog.table(ev.conversions.member, "conversions", [time, ev.value_column])
    t, v = quote_ident(time), quote_ident(ev.value_column)
    return f"""
        SELECT m.person, m.conv_row, c.{t} AS cts, {_clamped(f"c.{v}")} AS value,
               row_number() OVER (PARTITION BY m.person ORDER BY c.{t}, c.{v}, c.rowid) AS rn
        FROM {conv} c JOIN m ON c.row_id = m.conv_row
    """


def _domain_index(column: str, domain_param: str, domain: Sequence[str]) -> str:
    """SQL: the 0-based index of `column`'s value in an axis' domain (NULL: `none`, the last; not in it: -1)."""
    return (
        f"CASE WHEN {column} IS NULL THEN {len(domain) - 1} "
        f"ELSE coalesce(list_position({domain_param}, CAST({column} AS VARCHAR)) - 1, -1) END"
    )


def attribution_sql(catalog: Catalog, ev: EventTables, group: Axis, brand_axis: Axis | None, lookback_days: int) -> Sql:
    """The touches of the capped conversions, for `credits`, and the capped conversions' totals per brand cell.

    Rows with `attributed`: one per (conversion, qualifying touch), in no order (`credits.touches_of` orders
    them), with `conversion` (the conversion's stored row), `ts_us` the touch's time in microseconds, `click`,
    `campaign` and `channel` (ranks in their sorted domains, for the touch order), `group` and `brand` (indices
    into the axes' domains; 0 without a brand axis), `cents` the conversion's value in cents. Rows without: per
    brand cell, `conversions` conversions carrying `high` x 2^32 + `cents` cents (split so that no sum overflows):
    the capped conversions, each person's cents scaled down to the per-person bound.

    Cheap where it can be: the cap ranks only the conversions of people over it (most people are not), each
    conversion carries its person's rows of the exposures' members from its one join with the people, and
    nothing is sorted here. What depends on a conversion's other touches is `credits`' business.
    """
    time, value = ev.conversions.time or "", ev.value_column
    conv = catalog.table(ev.conversions.member, "conversions", [time, value])
    t, v = quote_ident(time), quote_ident(value)
    specs = ev.every_exposures or (ev.exposures,)
    carried = "".join(f", m.{side}" for side in dict.fromkeys(catalog.side(spec.member) for spec in specs))
    touch_sources = []
    for spec in specs:
        et, g = quote_ident(spec.time or ""), quote_ident(group.column)
        expo = catalog.table(spec.member, "exposures", [spec.time or "", group.column, "campaign", "channel", "kind"])
        touch_sources.append(
            f"""SELECT true AS attributed, c.conversion, epoch_us(e.{et}) AS ts_us, e.kind = 'click' AS click,
                   coalesce(list_position($campaigns, CAST(e.campaign AS VARCHAR)), 0) AS campaign,
                   coalesce(list_position($channels, CAST(e.channel AS VARCHAR)), 0) AS channel,
                   {_domain_index(f"e.{g}", "$group_domain", group.domain)} AS "group", c.brand, c.cents,
                   0::BIGINT AS high, 1::BIGINT AS conversions
            FROM capped c JOIN {expo} e ON e.row_id = c.{catalog.side(spec.member)}
            WHERE e.{et} <= c.cts AND e.{et} >= c.cts - to_days(CAST($lookback AS INTEGER))"""
        )
    brand_join, brand = "", "0"
    params: dict[str, object] = {"group_domain": list(group.domain)}
    if brand_axis is not None:
        users = catalog.table(brand_axis.member, "users", [brand_axis.column])
        brand_join = f"LEFT JOIN {users} u ON u.row_id = m.{catalog.side(brand_axis.member)}"
        brand = _domain_index(f"u.{quote_ident(brand_axis.column)}", "$brand_domain", brand_axis.domain)
        params["brand_domain"] = list(brand_axis.domain)
    params["campaigns"] = sorted(exposure_domain(ev, "campaign"))
    params["channels"] = sorted(exposure_domain(ev, "channel"))
    split = "CAST(sum({0} % 4294967296) AS BIGINT), CAST(sum({0} // 4294967296) AS BIGINT)"
    # Each person's kept conversions carry at most $person cents together: over it, each is scaled down to
    # sign x floor(|cents| x P / S), S the person's sum of |cents|. Without a per-person bound below what the rows
    # imply nobody is over it, and the step is left out.
    scaled = (
        """
        over AS (
            SELECT person, sum(abs(cents)) AS person_abs FROM kept GROUP BY person HAVING sum(abs(cents)) > $person
        ),
        capped AS (
            SELECT k.* EXCLUDE (cents),
                   CASE WHEN o.person_abs IS NULL THEN k.cents
                        ELSE CAST(sign(k.cents) * (CAST(abs(k.cents) AS HUGEINT) * $person // o.person_abs) AS BIGINT)
                   END AS cents
            FROM kept k LEFT JOIN over o USING (person)
        )"""
        if ev.person_cents < ev.cap * ev.cents_per_conversion
        else "\n        capped AS (SELECT * FROM kept)"
    )
    text = f"""
        WITH m AS ({_matched(catalog, ev.conversions.member)}),
        conv AS (
            SELECT m.person, m.conv_row{carried}, c.rowid AS conversion, c.{t} AS cts, c.{v} AS raw,
                   CAST(trunc({_clamped(f"c.{v}")} * {CENTS}) AS BIGINT) AS cents, {brand} AS brand
            FROM {conv} c JOIN m ON c.row_id = m.conv_row {brand_join}
        ),
        heavy AS (SELECT unnest(CAST($heavy AS BIGINT[])) AS conv_row),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY person ORDER BY cts, raw, conversion) AS rn
            FROM conv SEMI JOIN heavy USING (conv_row)
        ),
        kept AS (
            SELECT * FROM conv ANTI JOIN heavy USING (conv_row)
            UNION ALL
            SELECT * EXCLUDE (rn) FROM ranked WHERE rn <= $cap
        ),{scaled}
        {" UNION ALL ".join(touch_sources)}
        UNION ALL
        SELECT false, 0, 0, false, 0, 0, {len(group.domain) - 1}, brand, {split.format("cents")}, count(*)
        FROM capped GROUP BY brand
    """
    params |= {
        "collab": catalog.id,
        "lo": ev.lo,
        "hi": ev.hi,
        "cap": ev.cap,
        "lookback": lookback_days,
    }
    if "$person" in scaled:
        params["person"] = ev.person_cents
    return Sql(text, params)


def conversion_rows_sql(catalog: Catalog, ev: EventTables) -> Sql:
    """The conversions' `row_id` (the member's user row), one row per conversion: who may be over the cap."""
    conv = catalog.table(ev.conversions.member, "conversions", [ev.conversions.time or "", ev.value_column])
    return Sql(f"SELECT row_id FROM {conv} c WHERE row_id IS NOT NULL")


def over_cap(data: MatchedData, rows: Sql, cap: int) -> list[int]:
    """The users rows with more than `cap` conversions, counted in numpy (one pass, no hash table in DuckDB).

    Only their conversions are ranked for the cap (`attribution_sql`'s `$heavy`). A row retired between this read
    and the next only lowers a count, so everyone over the cap in the next read is in this list.
    """
    row_id = np.asarray(data.columns(rows)["row_id"], dtype=np.int64)
    if len(row_id) == 0:
        return []
    counts = np.bincount(row_id - row_id.min())
    return (np.flatnonzero(counts > cap) + row_id.min()).tolist()


def attribution_histograms(
    data: MatchedData,
    sql: Sql,
    rows: Sql,
    cap: int,
    axes: tuple[Axis, ...],
    model: str,
    click_over_view: bool,
    half_life_days: float,
) -> tuple[Histogram, Histogram]:
    """Attributed thousandths of a conversion and cents per cell, exact: `attribution_sql`'s rows through `credits`.

    A conversion no touch qualifies for hands its thousandths and cents to its brand cell's `none` group: the
    capped conversions' totals less those of the conversions with a touch.
    """
    assert isinstance(sql.params, Mapping)  # attribution_sql names its parameters
    arrays = data.columns(Sql(sql.text, {**sql.params, "heavy": over_cap(data, rows, cap)}))
    attributed = np.asarray(arrays["attributed"], dtype=bool)
    totals = np.flatnonzero(~attributed)
    brand_cells = len(axes[1].domain) if len(axes) > 1 else 1
    touches = credits.touches_of({name: column[attributed] for name, column in arrays.items()}, brand_cells)
    cell, milli, cents = credits.credit(touches, model, click_over_view, half_life_days)
    keys = cells_of(axes)
    milli_sums = credits.cell_sums(cell, milli, len(keys))
    cents_sums = credits.cell_sums(cell, cents, len(keys))
    first = credits.Segments.of(touches.conversion).start
    brand_of = touches.cell[first] % brand_cells
    touched_count = np.bincount(brand_of, minlength=brand_cells).tolist()
    touched_cents = credits.cell_sums(brand_of, touches.cents[first], brand_cells)
    none = (len(axes[0].domain) - 1) * brand_cells
    for brand in range(brand_cells):
        milli_sums[none + brand] -= MILLI * touched_count[brand]
        cents_sums[none + brand] -= touched_cents[brand]
    for i in totals.tolist():
        brand = int(arrays["brand"][i])
        if brand < 0:
            raise InternalError("values outside the declared domains reached an aggregate")
        milli_sums[none + brand] += MILLI * int(arrays["conversions"][i])
        cents_sums[none + brand] += int(arrays["high"][i]) * 2**32 + int(arrays["cents"][i])
    return (
        Histogram(axes, keys, tuple(clamp(v) for v in milli_sums)),
        Histogram(axes, keys, tuple(clamp(v) for v in cents_sums)),
    )


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
    clipped total's square, rounded half up in 128-bit integers (`squared_bound`: a double's rounding passed it).
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
        sql = attribution_sql(catalog, ev, group, brand, q.lookback_days)
        rows = conversion_rows_sql(catalog, ev)
        cached: dict[str, tuple[Histogram, Histogram]] = {}

        def both(data: MatchedData) -> tuple[Histogram, Histogram]:
            if "both" not in cached:
                cached["both"] = attribution_histograms(
                    data, sql, rows, ev.cap, axes, q.model, q.click_over_view, q.half_life_days
                )
            return cached["both"]

        def conversions(data: MatchedData) -> Histogram:
            return both(data)[0]

        def revenue(data: MatchedData) -> Histogram:
            return both(data)[1]

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
