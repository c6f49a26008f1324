"""Attribution: its DuckDB SQL over the join (exact, un-noised, never leaving the engine) and its plan.

`attribution` at the end is the query's plan for `QueryEngine.release` (lift, which shares the conversions' capping
and clamping, is in `lift`). Its SQL returns the qualifying touches and the conversions' totals; the credits that
depend on a conversion's other touches (positions, weights, the apportioning below) are computed over them in numpy
by `credits`, in the engine's process like every exact aggregate here.

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

Everything here is total: given data that passed the upload checks, no statement can fail because of the values.
Time columns are timestamps within a fixed window (checked at upload), per-person values are bounded by the policy
(whose sensitivities are capped at 2^53), and every sum over people is a 128-bit integer (HUGEINT), clamped to
+-2^53 before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cleanroom_client.policy import Policy, QueryType, TableSpec

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InternalError, InvalidArgumentError
from ..principals import Principal
from ..storage.database import quote_ident
from . import credits
from .cells import Cell, below_minimum_group, withheld
from .credits import MILLI
from .matched import Axis, Catalog, Histogram, MatchedData, Sql, axis, cells_of, clamp
from .plan import Measurement, Noisy, Plan, QueryAnswer, dimension_domain
from .queries import AttributionQuery

if TYPE_CHECKING:
    from .engine import QueryEngine

CENTS = 100
MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")
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


def matched_sql(catalog: Catalog, conv_member: str) -> str:
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


def capped_sql(catalog: Catalog, ev: EventTables) -> str:
    """SQL: every matched person's conversions, clamped, each with its rank `rn` (the cap keeps rn <= cap)."""
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
        WITH m AS ({matched_sql(catalog, ev.conversions.member)}),
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
