"""Attribution and lift as DuckDB SQL over the join: exact, un-noised, and never leaving the engine.

Contribution bounding, which makes the sensitivities exact:
- Each matched person contributes at most `max_per_person` conversions (the policy's cap on the conversions
  table): the earliest ones, ties broken by value then by their row order. Values are clamped to the policy's
  bounds [lo, hi] first.
- Credit is then split so that each conversion hands out exactly 1 conversion of credit (or less, after rounding
  down) across touchpoints, or the whole 1 to the `none` cell when no touchpoint qualifies (unattributed).
  Credits are counted in integer thousandths of a conversion and revenue in integer cents, both rounded down per
  touch. So one person moves the conversion vector by at most 1000 x cap (L1) and the revenue vector by at most
  100 x cap x max(|lo|, |hi|): those are the sensitivities handed to the noise.

A touchpoint qualifies for a conversion when it is the same person's exposure at or before the conversion and no
more than `lookback_days` before it (both ends inclusive). With click-over-view, a conversion that has any
qualifying click is credited to its clicks only. Touchpoints of one conversion are ordered by time; at the same
instant an impression comes before a click (so a tie goes to the click for last touch), then by campaign and
channel name. That order decides first and last touch and the positions.

Lift: each matched person with a test group for the campaign falls in one group; per group the number of people,
of converters (at least one conversion), and the sum and sum of squares of their capped, clamped revenue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb

from cleanroom_client.policy import Policy, TableSpec

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..storage.database import quote_ident
from .matched import NONE, Axis, Histogram, data_table, fill_histogram, match_side

MILLI = 1000
CENTS = 100
MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")


@dataclass(frozen=True)
class EventTables:
    """Where conversions and exposures live, and the bounds the policy sets on them."""

    conversions: TableSpec
    exposures: TableSpec
    value_column: str
    lo: float
    hi: float
    cap: int

    @property
    def value_bound(self) -> float:
        """The largest |value| after clamping."""
        return max(abs(self.lo), abs(self.hi))


def event_tables(policy: Policy) -> EventTables:
    """The conversions and exposures tables the policy declares, with their time columns, bounds and cap."""
    conv = next((t for t in policy.tables.values() if t.table == "conversions"), None)
    expo = next((t for t in policy.tables.values() if t.table == "exposures"), None)
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
    column = "value" if "value" in conv.measures else next(iter(conv.measures))
    lo, hi = conv.measures[column]
    return EventTables(conv, expo, column, lo, hi, conv.max_per_person)


def _matched(cur: duckdb.DuckDBPyConnection, collab: str, conv_member: str, exp_member: str) -> str:
    conv_side = match_side(cur, collab, conv_member)
    exp_side = "row_b" if conv_side == "row_a" else "row_a"
    return (
        f"SELECT {conv_side} AS conv_row, {exp_side} AS exp_row, row_number() OVER (ORDER BY {conv_side}) AS person "
        "FROM matches WHERE collab = $collab"
    )


def _capped(cur: duckdb.DuckDBPyConnection, collab: str, ev: EventTables) -> str:
    conv = data_table(cur, collab, ev.conversions.member, "conversions")
    t, v = quote_ident(ev.conversions.time or ""), quote_ident(ev.value_column)
    return f"""
        SELECT m.person, m.conv_row, c.{t} AS cts,
               least(greatest(CAST(c.{v} AS DOUBLE), $lo), $hi) AS value,
               row_number() OVER (PARTITION BY m.person ORDER BY c.{t}, c.{v}, c.rowid) AS rn
        FROM {conv} c JOIN m ON c.row_id = m.conv_row
    """


def attribution_histograms(
    cur: duckdb.DuckDBPyConnection,
    collab: str,
    ev: EventTables,
    group: Axis,
    brand_axis: Axis | None,
    model: str,
    lookback_days: int,
    click_over_view: bool,
    half_life_days: float,
) -> tuple[Histogram, Histogram]:
    """Attributed conversions (thousandths) and revenue (cents) per group value (and brand dimension value)."""
    expo = data_table(cur, collab, ev.exposures.member, "exposures")
    et = quote_ident(ev.exposures.time or "")
    g = quote_ident(group.column)
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
        users = data_table(cur, collab, brand_axis.member, "users")
        side = "conv_row" if brand_axis.member == ev.conversions.member else "exp_row"
        brand_join = f"JOIN m mm ON mm.person = credits.person LEFT JOIN {users} u ON u.row_id = mm.{side}"
        brand_select = f", coalesce(CAST(u.{quote_ident(brand_axis.column)} AS VARCHAR), '{NONE}')"
        brand_group = ", 2"
    sql = f"""
        WITH m AS ({_matched(cur, collab, ev.conversions.member, ev.exposures.member)}),
        conv AS ({_capped(cur, collab, ev)}),
        capped AS (SELECT * FROM conv WHERE rn <= $cap),
        touches AS (
            SELECT c.person, c.rn, c.cts, c.value, e.{et} AS ets, CAST(e.{g} AS VARCHAR) AS g,
                   e.kind = 'click' AS is_click, CAST(e.campaign AS VARCHAR) AS campaign,
                   CAST(e.channel AS VARCHAR) AS channel
            FROM capped c JOIN m ON m.person = c.person JOIN {expo} e ON e.row_id = m.exp_row
            WHERE e.{et} <= c.cts AND e.{et} >= c.cts - to_days(CAST($lookback AS INTEGER))
        ),
        kept AS (
            SELECT *, max(CAST(is_click AS INTEGER)) OVER (PARTITION BY person, rn) AS any_click FROM touches
        ),
        ordered AS (
            SELECT *,
                   row_number() OVER (PARTITION BY person, rn ORDER BY ets, is_click, campaign, channel) AS pos,
                   count(*) OVER (PARTITION BY person, rn) AS n,
                   pow(2.0, -(epoch(cts) - epoch(ets)) / ($half_life * 86400.0)) AS decay
            FROM kept WHERE NOT $cov OR any_click = 0 OR is_click
        ),
        weighted AS (SELECT person, rn, g, value, {weight} AS w FROM ordered),
        credits AS (
            SELECT person, g, CAST(floor(w * {MILLI}) AS BIGINT) AS milli,
                   CAST(floor(w * value * {CENTS}) AS BIGINT) AS cents
            FROM weighted
            UNION ALL
            SELECT person, '{NONE}', {MILLI}, CAST(floor(value * {CENTS}) AS BIGINT)
            FROM capped c WHERE NOT EXISTS (SELECT 1 FROM touches t WHERE t.person = c.person AND t.rn = c.rn)
        )
        SELECT credits.g{brand_select}, sum(milli), sum(cents) FROM credits {brand_join} GROUP BY 1{brand_group}
    """
    params = {
        "collab": collab,
        "lo": ev.lo,
        "hi": ev.hi,
        "cap": ev.cap,
        "lookback": lookback_days,
        "cov": click_over_view,
        "half_life": half_life_days,
    }
    rows = cur.execute(sql, params).fetchall()
    axes = (group,) if brand_axis is None else (group, brand_axis)
    width = len(axes)
    conversions = fill_histogram(axes, [(*r[:width], r[width]) for r in rows])
    revenue = fill_histogram(axes, [(*r[:width], r[width + 1]) for r in rows])
    return conversions, revenue


def check_attribution(model: str, lookback_days: int, half_life_days: float) -> None:
    """The request's own shape."""
    if model not in MODELS:
        raise InvalidArgumentError(f"model must be one of {', '.join(MODELS)}")
    if not 1 <= lookback_days <= 365:
        raise InvalidArgumentError("lookback_days must be between 1 and 365")
    if model == "time_decay" and not (half_life_days > 0 and math.isfinite(half_life_days)):
        raise InvalidArgumentError("time_decay needs half_life_days > 0")


def lift_histograms(
    cur: duckdb.DuckDBPyConnection, collab: str, ev: EventTables, groups: TableSpec, campaign: str
) -> dict[str, Histogram]:
    """Per test group: people, converters, revenue (cents) and revenue squared (dollars squared)."""
    tg = data_table(cur, collab, groups.member, "test_groups")
    side = "conv_row" if groups.member == ev.conversions.member else "exp_row"
    sql = f"""
        WITH m AS ({_matched(cur, collab, ev.conversions.member, ev.exposures.member)}),
        conv AS ({_capped(cur, collab, ev)}),
        per_person AS (SELECT person, count(*) AS conversions, sum(value) AS revenue FROM conv WHERE rn <= $cap
                       GROUP BY person),
        grouped AS (
            SELECT m.person, arg_min(CAST(t.test_group AS VARCHAR), t.rowid) AS test_group
            FROM m JOIN {tg} t ON t.row_id = m.{side}
            WHERE CAST(t.campaign AS VARCHAR) = $campaign GROUP BY m.person
        )
        SELECT g.test_group, count(*), count(p.person),
               CAST(coalesce(sum(floor(p.revenue * {CENTS})), 0) AS BIGINT),
               CAST(coalesce(sum(round(p.revenue * p.revenue)), 0) AS BIGINT)
        FROM grouped g LEFT JOIN per_person p ON p.person = g.person
        GROUP BY 1
    """
    params = {"collab": collab, "lo": ev.lo, "hi": ev.hi, "cap": ev.cap, "campaign": campaign}
    rows = cur.execute(sql, params).fetchall()
    ax = Axis("test_group", groups.member, "test_group", ("exposed", "holdout"))
    unknown = {r[0] for r in rows} - set(ax.domain)
    if unknown:
        raise FailedPreconditionError(f"test_group values must be exposed or holdout, found {sorted(unknown)}")
    return {
        name: fill_histogram((ax,), [(r[0], r[i]) for r in rows])
        for i, name in enumerate(("people", "converters", "revenue_cents", "revenue_sq"), start=1)
    }
