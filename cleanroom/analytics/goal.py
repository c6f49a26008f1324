"""The second half of the GOAL method: value ("A") and loyalty ("L"), their SQL over the join and their plans.

The SQL is exact and un-noised; `value` and `loyalty` at the end are the queries' plans for `QueryEngine.release`
(vectors, epsilon split, sensitivities, derived cells).

Value, per group of declared dimensions: the matched people, the buyers among them (people with at least one row of
the measure's table), their orders (rows, at most the table's `max_per_person` each: the earliest, ties broken by
value then row order, as attribution caps conversions) and the sum of the measure, each value clamped to the
policy's bounds [lo, hi] and rounded toward zero to cents, each person's total cents then clipped to
[-P, P] with P = `TableSpec.person_cents` (the policy's `per_person_max`; without one the rows' own bound
ceil(100 x cap x max(|lo|, |hi|)), which never binds). A measure of a users table is one row per person (cap 1).
Two vectors: matched people per group x number of orders (0 to cap; people, buyers and orders are its sums) and
the sum per group. One matched pair is in one group and has one number of orders, so it moves them by at most 1
and P cents (L1): the per-pair sensitivities the engine multiplies by the join's stability constant.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cleanroom_client.policy import Policy, QueryType

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..principals import Principal
from ..storage.database import quote_ident
from .attribution import CENTS
from .cells import NO_DENOMINATOR, Cell, below_minimum_group, fraction, quotient, withheld
from .matched import NONE, Axis, Catalog, Histogram, MatchedData, Sql, axis, cells_of, fill_histogram, grouping
from .person_total import person_range
from .plan import Measurement, Noisy, Plan, QueryAnswer, dimension_domain, read_once, reader
from .queries import DimensionRef, LoyaltyQuery, ValueQuery

if TYPE_CHECKING:
    from .engine import QueryEngine

#: Value's histogram of matched people by group and number of orders (0: not a buyer; at most the table's cap):
#: one pair is in one cell, so it has the sensitivity of one count (c), and people, buyers and orders are sums of
#: its cells (docs/privacy.md, "Money").
BASKETS = "people_by_orders"
#: How the value query splits its epsilon over its two vectors. Half to the histogram gives people, buyers and
#: orders bars no wider than a quarter each gave the three count vectors (people: 2 x e95(c / (eps/2)) =
#: e95(c / (eps/4))), and the sum, which enters itself and all three means, the other half (docs/privacy.md,
#: "Money"; benchmarks/bench_accuracy.py measures them).
VALUE_SPLIT: tuple[tuple[str, float], ...] = ((BASKETS, 0.5), ("sum", 0.5))


def orders_axis(member: str, cap: int) -> Axis:
    """The number of orders a matched person has, 1 to cap, then 0 (not a buyer): fixed by the policy."""
    return Axis("orders", member, "orders", (*(str(k) for k in range(1, cap + 1)), "0"))


def basket_counts(hist: Noisy, cap: int) -> dict[tuple[str, ...], dict[str, tuple[float, float]]]:
    """Per group: people, buyers and orders (value, 95% bar) from the noisy people-by-orders histogram.

    Post-processing: people sum the group's cap + 1 cells, buyers the cap cells with an order, orders weight the
    cell of k orders by k. The cells' noise is independent with bar e95 each, so a sum weighted by w_k has the bar
    e95 x sqrt(sum w_k^2) (the quadrature `cells.py` uses: with several terms, slightly conservative).
    """
    cells: dict[tuple[str, ...], list[float]] = {}
    for keys, v in zip(hist.keys, hist.values, strict=True):
        cells.setdefault(keys[:-1], [0.0] * (cap + 1))[int(keys[-1])] = float(v)
    e95 = float(hist.error_95)
    weights = range(cap + 1)
    orders_bar = e95 * math.sqrt(sum(k * k for k in weights))
    return {
        group: {
            "people": (sum(n), e95 * math.sqrt(cap + 1)),
            "buyers": (sum(n[1:]), e95 * math.sqrt(cap)),
            "orders": (sum(k * x for k, x in zip(weights, n, strict=True)), orders_bar),
        }
        for group, n in cells.items()
    }


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
    #: The most |cents| one person's total counts (`TableSpec.person_cents`: the policy's `per_person_max`, or
    #: the rows' bound): each person's total cents are clipped to [-person_cents, person_cents].
    person_cents: int

    @property
    def name(self) -> str:
        """`member.table.column`."""
        return f"{self.member}.{self.table}.{self.column}"

    def per_person_range(self) -> tuple[float, float]:
        """The range of one person's total in currency units (`person_total.person_range`)."""
        return person_range(self.cap, self.lo, self.hi, self.person_cents)


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
        return MeasureSpec(member, table, column, None, lo, hi, 1, spec.person_cents(column))
    if spec.max_per_person is None:
        raise FailedPreconditionError(
            f"the policy must cap {spec.qualified_name}.max_per_person: the most rows one person contributes"
        )
    return MeasureSpec(member, table, column, spec.time, lo, hi, spec.max_per_person, spec.person_cents(column))


def value_sql(catalog: Catalog, axes: tuple[Axis, ...], measure: MeasureSpec) -> Sql:
    """Rows: (keys..., orders, people, cents) per group of matched people and their number of orders (0: none)."""
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
            SELECT row_id, count(*) AS orders,
                   least(greatest(sum(CAST(trunc(v * {CENTS}) AS BIGINT)), -$person), $person) AS cents
            FROM r WHERE rn <= $cap GROUP BY row_id
        )
        SELECT {keys}coalesce(p.orders, 0), count(*), coalesce(sum(p.cents), 0)
        FROM {catalog.pairs()} m {g.joins} LEFT JOIN p ON p.row_id = m.{catalog.side(measure.member)}
        GROUP BY {", ".join(str(i + 1) for i in range(len(axes) + 1))}
    """
    params = {"collab": catalog.id, "lo": measure.lo, "hi": measure.hi, "cap": measure.cap}
    return Sql(text, params | {"person": measure.person_cents})


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


# -- the queries ------------------------------------------------------------------------------------------------
def group_axes(policy: Policy, by: tuple[DimensionRef, ...]) -> tuple[Axis, ...]:
    """The axes of up to three grouping dimensions, each declared, their cells within the limit."""
    axes = tuple(axis(str(d), d.member, d.column, dimension_domain(policy, d)) for d in by)
    cells_of(axes)
    return axes


def value(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: ValueQuery, preview: bool = False
) -> QueryAnswer:
    """GOAL's "A": per group, people, buyers, orders, the sum of a measure, its means per person, buyer, order.

    Privacy unit: one users row of either member with its events. Two vectors (`goal.py` bounds each person's
    contribution): `people_by_orders`, matched people per group x number of orders 0..cap (sensitivity c: one pair
    in one cell), and the sum per group in cents (c x person_cents: each person's total clipped to the policy's
    `per_person_max`, or to cap x max(|lo|, |hi|) without one), cap being the measure table's `max_per_person` (1
    for a users measure). Epsilon is split by `VALUE_SPLIT`, half each. Post-processing: people, buyers and
    orders are sums of the histogram's cells (`basket_counts`), shown at >= 0, the sum at >= 0 when lo >= 0, each
    mean within the range its definition allows; the means' bounds propagate their inputs' bounds
    (`cells.quotient`).
    """

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        policy = collaboration.policy
        axes = group_axes(policy, q.by)
        measure = measure_spec(policy, q.measure)
        sql = value_sql(catalog, axes, measure)
        width = len(axes)
        rows = read_once(lambda data: data.rows(sql))

        def read_baskets(data: MatchedData) -> Histogram:
            state = orders_axis(measure.member, measure.cap)
            return fill_histogram((*axes, state), [r[: width + 2] for r in rows(data)])

        def read_sum(data: MatchedData) -> Histogram:
            return fill_histogram(axes, [(*r[:width], r[width + 2]) for r in rows(data)])

        c = engine.stability(catalog)
        share = dict(VALUE_SPLIT)
        cap = measure.cap
        full = (*axes, orders_axis(measure.member, cap))
        measurements = (
            Measurement(BASKETS, read_baskets, q.epsilon * share[BASKETS], c),
            Measurement("sum", read_sum, q.epsilon * share["sum"], c * measure.person_cents, CENTS),
        )
        lo, hi = measure.lo, measure.hi
        person_lo, person_hi = measure.per_person_range()
        # A clipped total lies between 0 and the unclipped one, so a mean per order stays within [lo, hi] widened
        # to 0, and a buyer's total within the person's range widened by one row's bounds.
        means = (
            ("per_person", "people", person_lo, person_hi),
            ("per_buyer", "buyers", min(lo, person_lo), max(hi, person_hi)),
            ("per_order", "orders", min(lo, 0.0), max(hi, 0.0)),
        )

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            total = noisy["sum"]
            counts = basket_counts(noisy[BASKETS], cap)
            out: list[Cell] = []
            for i, keys in enumerate(total.keys):
                small = below_minimum_group(min_group)
                n = counts[keys]
                if n["people"][0] < min_group:
                    out += [withheld(keys, m, small) for m in ("people", "buyers", "orders", "sum")]
                    out += [withheld(keys, m, small) for m, *_ in means]
                    continue
                for name in ("people", "buyers", "orders"):
                    out.append(Cell(keys, name, max(n[name][0], 0.0), n[name][1], False))
                s = total.values[i] / CENTS
                shown = max(s, 0.0) if lo >= 0 else s
                out.append(Cell(keys, "sum", shown, total.error_95 / CENTS, False))
                for name, denominator, low, high in means:
                    count, bar = n[denominator]
                    mean = quotient(s, total.error_95 / CENTS, count, bar)
                    if mean is None or count < min_group:
                        out.append(withheld(keys, name, small if count > 0 else NO_DENOMINATOR))
                    else:
                        out.append(Cell(keys, name, min(max(mean[0], low), high), mean[1], False))
            return out

        baskets = cells_of(full)

        def typical(group: float) -> dict[str, float | tuple[float, ...]]:
            # every person a buyer, as many with each number of rows (the middle number on average), each row at
            # the middle of the bounds
            orders = group * (1 + cap) / 2
            per_state = tuple(0.0 if k[-1] == "0" else group / cap for k in baskets)
            return {BASKETS: per_state, "sum": orders * (lo + hi) / 2}

        dims = tuple(a.label for a in axes)
        keys = {BASKETS: baskets, "sum": cells_of(axes)}
        return engine.histograms(principal, collaboration, q.epsilon, measurements, dims, finish, keys, typical)

    params = {"by": [str(d) for d in q.by], "measure": q.measure}
    return engine.release(principal, collaboration_id, q, QueryType.VALUE, params, build, preview=preview)


def loyalty(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: LoyaltyQuery, preview: bool = False
) -> QueryAnswer:
    """GOAL's "L": per group, converters, repeaters and the retained; repurchase and retention rates.

    Converters bought in period 1, repeaters two or more times in it, the retained again in period 2.

    Privacy unit: one users row of either member with its events. One histogram over group x loyalty state
    (`goal.py`: each matched person in exactly one state): sensitivity c, all of epsilon. Counts and rates are
    post-processing of its cells (each clamped at 0); a count summing k cells has bound sqrt(k) x e95, a rate
    the bound of `cells.fraction`, within [0, 1].
    """

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        policy = collaboration.policy
        axes = group_axes(policy, q.by)
        member, time = conversions_table(policy)
        state = state_axis(member)
        full = (*axes, state)
        cells_of(full)
        sql = loyalty_sql(catalog, axes, member, time, q.period1, q.period2)
        people = Measurement("people", reader(full, sql), q.epsilon, engine.stability(catalog))

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            n = noisy["people"]
            e95 = float(n.error_95)
            by_group: dict[tuple[str, ...], dict[str, float]] = {}
            for keys, value in zip(n.keys, n.values, strict=True):
                by_group.setdefault(keys[:-1], {})[keys[-1]] = float(max(value, 0))
            out: list[Cell] = []
            for keys, v in by_group.items():
                repeat = v["repeat"] + v["repeat_retained"]
                once = v["once"] + v["once_retained"]
                retained = v["once_retained"] + v["repeat_retained"]
                converters = repeat + once
                if converters < min_group:
                    names = ("converters", "repeaters", "retained", "repurchase_rate", "retention_rate")
                    out += [withheld(keys, m, below_minimum_group(min_group)) for m in names]
                    continue
                out.append(Cell(keys, "converters", converters, 2 * e95, False))
                out.append(Cell(keys, "repeaters", repeat, math.sqrt(2) * e95, False))
                out.append(Cell(keys, "retained", retained, math.sqrt(2) * e95, False))
                for name, part in (("repurchase_rate", repeat), ("retention_rate", retained)):
                    f = fraction(part, 2, converters - part, 2, e95)
                    out.append(
                        withheld(keys, name, NO_DENOMINATOR) if f is None else Cell(keys, name, f[0], f[1], False)
                    )
            return out

        keys = cells_of(full)

        def typical(group: float) -> dict[str, float | tuple[float, ...]]:
            # a group of `group` converters spread evenly over the four states, and as many without a conversion
            return {"people": tuple(group if k[-1] == NONE else group / 4 for k in keys)}

        dims = tuple(a.label for a in axes)
        return engine.histograms(principal, collaboration, q.epsilon, (people,), dims, finish, keys, typical)

    params = {
        "by": [str(d) for d in q.by],
        "period1": [d.isoformat() for d in q.period1],
        "period2": [d.isoformat() for d in q.period2],
    }
    return engine.release(principal, collaboration_id, q, QueryType.LOYALTY, params, build, preview=preview)
