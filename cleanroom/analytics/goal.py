"""The second half of the GOAL method as SQL over the join: value ("A") and loyalty ("L"), exact and un-noised.

Value, per group of declared dimensions: the matched people, the buyers among them (people with at least one row of
the measure's table), their orders (rows, at most the table's `max_per_person` each: the earliest, ties broken by
value then row order, as attribution caps conversions) and the sum of the measure, each value clamped to the
policy's bounds [lo, hi] and rounded toward zero to cents. A measure of a users table is one row per person (cap 1).
One matched pair is in one group, so it moves those four vectors by at most 1, 1, cap and
cap x ceil(100 x max(|lo|, |hi|)) cents (L1): the per-pair sensitivities the engine multiplies by the join's
stability constant.

Loyalty, per group: each matched person falls in exactly one state by their conversions (rows of the conversions
table, uncapped: only "at least one" and "at least two" count) in two periods, each from its start date
(inclusive) to its end date (exclusive): `none` (no conversion in period 1), `once` / `repeat` (one / two or more
in period 1), with `_retained` when they also converted in period 2. One histogram over group x state: one pair
moves one cell by 1 (sensitivity 1 per pair). Repurchase rate = repeat states / converters; retention = retained
states / converters.

Everything here is total: given data that passed the upload checks, no statement can fail because of the values.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from cleanroom_client.policy import Policy

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..storage.database import quote_ident
from .attribution import CENTS
from .matched import NONE, Axis, Catalog, Sql, grouping

#: Loyalty states of a matched person, in release order (then `none`: no conversion in period 1).
LOYALTY_STATES = ("once", "once_retained", "repeat", "repeat_retained")


@dataclass(frozen=True)
class MeasureSpec:
    """A declared measure: where it lives, its bounds, how many rows one person may contribute."""

    member: str
    table: str
    column: str
    time: str | None
    lo: float
    hi: float
    cap: int

    @property
    def name(self) -> str:
        """`member.table.column`."""
        return f"{self.member}.{self.table}.{self.column}"

    @property
    def cents_per_row(self) -> int:
        """The most cents one row can carry (its clamped value is rounded toward zero)."""
        return math.ceil(CENTS * max(abs(self.lo), abs(self.hi)))

    def per_person_range(self) -> tuple[float, float]:
        """The range of one person's total: cap rows, each in [lo, hi] (or none at all, 0)."""
        return min(0.0, self.cap * self.lo), max(0.0, self.cap * self.hi)


def measure_spec(policy: Policy, name: str) -> MeasureSpec:
    """The policy's measure `member.table.column`; event tables must cap rows per person (`max_per_person`)."""
    parts = name.split(".")
    declared = [f"{t.qualified_name}.{m}" for t in policy.tables.values() for m in t.measures]
    if len(parts) != 3:
        raise InvalidArgumentError(f"measure {name!r}: name it member.table.column (declared: {declared})")
    member, table, column = parts
    spec = policy.table(member, table)
    if spec is None or column not in spec.measures:
        raise InvalidArgumentError(f"measure {name!r} is not declared in the policy (declared: {declared})")
    lo, hi = spec.measures[column]
    if table == "users":
        return MeasureSpec(member, table, column, None, lo, hi, 1)
    if spec.max_per_person is None:
        raise FailedPreconditionError(
            f"the policy must cap {spec.qualified_name}.max_per_person: the most rows one person contributes"
        )
    return MeasureSpec(member, table, column, spec.time, lo, hi, spec.max_per_person)


def value_sql(catalog: Catalog, axes: tuple[Axis, ...], measure: MeasureSpec) -> Sql:
    """Rows: (keys..., people, buyers, orders, cents) per group of matched people."""
    time = [measure.time] if measure.time else []
    table = catalog.table(measure.member, measure.table, [*time, measure.column])
    v = quote_ident(measure.column)
    order = ", ".join([*(quote_ident(t) for t in time), v, "rowid"])
    g = grouping(catalog, axes)
    keys = "".join(f"{k}, " for k in g.keys)
    text = f"""
        WITH r AS (
            SELECT row_id, least(greatest(CAST({v} AS DOUBLE), $lo), $hi) AS v,
                   row_number() OVER (PARTITION BY row_id ORDER BY {order}) AS rn
            FROM {table} WHERE {v} IS NOT NULL
        ),
        p AS (
            SELECT row_id, count(*) AS orders, sum(CAST(trunc(v * {CENTS}) AS BIGINT)) AS cents
            FROM r WHERE rn <= $cap GROUP BY row_id
        )
        SELECT {keys}count(*), count(p.row_id), coalesce(sum(p.orders), 0), coalesce(sum(p.cents), 0)
        FROM {catalog.pairs()} m {g.joins} LEFT JOIN p ON p.row_id = m.{catalog.side(measure.member)}
        {g.group_by}
    """
    return Sql(text, {"collab": catalog.id, "lo": measure.lo, "hi": measure.hi, "cap": measure.cap})


def conversions_table(policy: Policy) -> tuple[str, str]:
    """The member and time column of the policy's conversions table."""
    conv = next((t for t in policy.tables.values() if t.table == "conversions"), None)
    if conv is None or conv.time is None:
        raise FailedPreconditionError("the policy must declare a conversions table with a time column")
    return conv.member, conv.time


def loyalty_sql(
    catalog: Catalog,
    axes: tuple[Axis, ...],
    member: str,
    time: str,
    period1: tuple[dt.date, dt.date],
    period2: tuple[dt.date, dt.date],
) -> Sql:
    """Rows: (keys..., state, people) per group of matched people; state NULL (`none`) without a period-1 conversion."""
    table = catalog.table(member, "conversions", [time])
    t = f"CAST({quote_ident(time)} AS DATE)"
    g = grouping(catalog, axes)
    keys = "".join(f"{k}, " for k in g.keys)
    group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(axes) + 1))}"
    text = f"""
        WITH p AS (
            SELECT row_id,
                   count(*) FILTER (WHERE {t} >= $s1 AND {t} < $e1) AS n1,
                   count(*) FILTER (WHERE {t} >= $s2 AND {t} < $e2) AS n2
            FROM {table} GROUP BY row_id
        ),
        s AS (
            SELECT row_id,
                   CASE WHEN n1 = 0 THEN NULL
                        ELSE (CASE WHEN n1 = 1 THEN 'once' ELSE 'repeat' END)
                             || (CASE WHEN n2 > 0 THEN '_retained' ELSE '' END) END AS state
            FROM p
        )
        SELECT {keys}s.state, count(*)
        FROM {catalog.pairs()} m {g.joins} LEFT JOIN s ON s.row_id = m.{catalog.side(member)}
        {group}
    """
    params = {
        "collab": catalog.id,
        "s1": period1[0],
        "e1": period1[1],
        "s2": period2[0],
        "e2": period2[1],
    }
    return Sql(text, params)


def state_axis(member: str) -> Axis:
    """The loyalty states, fixed (not data): `none` last."""
    return Axis("loyalty_state", member, "state", (*LOYALTY_STATES, NONE))
