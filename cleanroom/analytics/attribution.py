"""Attribution and lift as DuckDB SQL over the join: exact, un-noised, and never leaving the engine.

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
campaign); per group the number of people, of converters (at least one conversion), and the sum and sum of squares
of their capped, clamped revenue (cents rounded toward zero).

Everything here is total: given data that passed the upload checks, no statement can fail because of the values.
Time columns are timestamps within a fixed window (checked at upload), per-person values are bounded by the policy
(whose sensitivities are capped at 2^53), and every sum over people is a 128-bit integer (HUGEINT), clamped to
+-2^53 before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cleanroom_client.policy import Policy, TableSpec

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..storage.database import quote_ident
from .matched import Axis, Catalog, Sql

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
