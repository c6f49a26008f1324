"""Attribution: its DuckDB SQL over the join (exact, un-noised, never leaving the engine) and its plan.

`attribution` at the end is the query's plan for `QueryEngine.release` (lift, which shares the conversions' capping
and clamping, is in `lift`). It reads the matched people's conversions once (`conversions_sql`), caps them and
scales their cents (`bounded`), then joins what is left with the exposures in one hash join (`touches_sql`,
`Bounded.build`); the credits that depend on a conversion's other touches (positions, weights, the apportioning
below) are computed over the touches by `credit_sums`, in the engine's process like every exact aggregate here. The
bounding and the credits run in the compiled kernels of `_attribution.c` on every core the query is given
(`native`), or in numpy where the install had no C compiler: the same integers either way.

Contribution bounding, which makes the sensitivities exact (per matched pair; the engine multiplies them by the
join's stability constant):
- Each matched person contributes at most `max_per_person` conversions (the policy's cap on the conversions
  table): the earliest ones, ties broken by value then by their row order (which cannot show: one person's
  conversions equal in time and value credit the same touches with the same cents). Values are clamped to the
  policy's bounds [lo, hi] first.
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
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cleanroom_client.policy import Policy, QueryType, TableSpec

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InternalError, InvalidArgumentError
from ..principals import Principal
from ..storage.database import quote_ident
from . import credit_sums, credits
from . import native as kernels
from .cells import Cell, below_minimum_group, withheld
from .credits import MILLI
from .matched import Axis, Catalog, Histogram, MatchedData, Sql, axis, cells_of, clamp
from .plan import Measurement, Noisy, Plan, QueryAnswer, dimension_domain, read_once
from .queries import AttributionQuery

if TYPE_CHECKING:
    import pyarrow as pa

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


def conversions_sql(catalog: Catalog, ev: EventTables, brand_axis: Axis | None) -> Sql:
    """Every matched person's conversions, one row each, in no order: all the cap, the money bound and the totals need.

    Columns, numbers only (they come through Arrow as numpy arrays without a conversion): `person` (the hub's row;
    left out with one other member, whose row names the person as well: the matching is one to one),
    `row_<member>` for each exposures table's member (the person's row in that member's data, -1 where they are not
    matched with it), `ts_us` the conversion's time in microseconds, `value` its value as a float64, as stored (the
    policy's bounds and the cents are applied by `bounded`, on every core, rather than here: in SQL they cost about
    a fifth of this statement), and with a brand axis `brand`, the index of the person's value in its domain. This
    is the one read of the conversions: `bounded` caps them and scales their cents, and the join with the exposures
    (`touches_sql`) reads what is left of them, so neither the cap's rank, the per-person sums nor the totals touch
    the exposures.
    """
    time, value = ev.conversions.time or "", ev.value_column
    conv = catalog.table(ev.conversions.member, "conversions", [time, value])
    t, v = quote_ident(time), quote_ident(value)
    sides = _sides(catalog, ev)
    person = "" if _one_to_one(catalog, ev) else "m.person, "
    rows = ", ".join(f"coalesce(m.{side}, -1) AS {side}" for side in sides)
    brand_join, brand = "", ""
    params: dict[str, object] = {"collab": catalog.id}
    if brand_axis is not None:
        users = catalog.table(brand_axis.member, "users", [brand_axis.column])
        brand_join = f"LEFT JOIN {users} u ON u.row_id = m.{catalog.side(brand_axis.member)}"
        index = _domain_index(f"u.{quote_ident(brand_axis.column)}", "$brand_domain", brand_axis.domain)
        brand = f", CAST({index} AS INTEGER) AS brand"
        params["brand_domain"] = list(brand_axis.domain)
    text = f"""
        WITH m AS ({matched_sql(catalog, ev.conversions.member)})
        SELECT {person}{rows}, epoch_us(c.{t}) AS ts_us, CAST(c.{v} AS DOUBLE) AS value{brand}
        FROM {conv} c JOIN m ON c.row_id = m.conv_row {brand_join}
    """
    return Sql(text, params)


def _one_to_one(catalog: Catalog, ev: EventTables) -> bool:
    """Whether the one exposures table's rows name the people one to one (two members: every person has one)."""
    return len(catalog.spokes) == 1 and len(_sides(catalog, ev)) == 1


def _sides(catalog: Catalog, ev: EventTables) -> list[str]:
    """The people's columns naming their rows in each exposures table's member's data, in `every_exposures` order."""
    return list(dict.fromkeys(catalog.side(spec.member) for spec in ev.every_exposures or (ev.exposures,)))


#: The name under which `touches_sql` reads the capped conversions of the j-th exposures table's member.
BUILD = "attribution_conversions_{}"


def touches_sql(catalog: Catalog, ev: EventTables) -> Sql:
    """The qualifying touches of the capped conversions: one row per (conversion, touch), in no order.

    `conversion` (the conversion's index in `Bounded`), `ts_us` the touch's time in microseconds, and `code`: its
    kind, campaign and channel as one integer (`TouchCode`). The data-dependent parameters of each exposures table j
    (`$row0_j` ...) and the relation `BUILD.format(j)` come from `Bounded.build`.

    Why it is shaped so: the join is a plain hash join on one integer, the person's row and the time bucket
    (`Bounded.build` says why that key finds every qualifying touch), whose build side is three integer columns of
    the conversions that are left after the cap: the key, computed here from the person's row and the time (so in
    DuckDB's threads, not in numpy before the statement), the index and the time; every other column of a
    conversion is attached after, by its index. The exposures read only the rows whose person and time any
    conversion could reach (bounds the scan filters cheaply), three integer columns come out, and nothing here sorts
    or ranks.
    """
    code = TouchCode.of(ev)
    sources = []
    for j, spec in enumerate(ev.every_exposures or (ev.exposures,)):
        et = quote_ident(spec.time or "")
        expo = catalog.table(spec.member, "exposures", [spec.time or "", "campaign", "channel", "kind"])
        sources.append(
            f"""SELECT c.i AS conversion, e.ts_us,
                   CAST(((e.kind = 'click')::INTEGER * {len(code.campaigns) + 1}
                         + coalesce(list_position($campaigns, CAST(e.campaign AS VARCHAR)), 0))
                        * {len(code.channels) + 1}
                        + coalesce(list_position($channels, CAST(e.channel AS VARCHAR)), 0) AS INTEGER) AS code
            FROM (
                SELECT (r - $row0_{j}) * $buckets_{j} + (t - $origin_{j}) // $width_{j} AS k, i, t
                FROM {BUILD.format(j)} WHERE c
                UNION ALL
                SELECT (r - $row0_{j}) * $buckets_{j} + (t - $origin_{j}) // $width_{j} - 1 AS k, i, t
                FROM {BUILD.format(j)} WHERE c AND (t - $origin_{j}) % $width_{j} < $lookback_us
            ) c JOIN (
                SELECT row_id, epoch_us({et}) AS ts_us, campaign, channel, kind FROM {expo}
                WHERE row_id BETWEEN $row0_{j} AND $row1_{j}
                  AND {et} BETWEEN make_timestamp($origin_{j}) AND make_timestamp($end_{j})
            ) e ON (e.row_id - $row0_{j}) * $buckets_{j} + (e.ts_us - $origin_{j}) // $width_{j} = c.k
            WHERE e.ts_us <= c.t AND e.ts_us >= c.t - $lookback_us"""
        )
    return Sql(" UNION ALL ".join(sources), {"campaigns": list(code.campaigns), "channels": list(code.channels)})


@dataclass(frozen=True)
class TouchCode:
    """A touch's kind, campaign and channel as one integer: ((click x (C + 1) + campaign) x (H + 1) + channel).

    `campaign` and `channel` are 1-based ranks in the sorted domains of every exposures table of the population
    (C and H values; 0 for a value outside them, which the upload checks rule out). Ordered by this code, an
    impression comes before a click, then by campaign, then by channel name: the touch order's tie-break.
    """

    campaigns: tuple[str, ...]
    channels: tuple[str, ...]

    @staticmethod
    def of(ev: EventTables) -> TouchCode:
        """The code over the population's exposures domains."""
        return TouchCode(tuple(sorted(exposure_domain(ev, "campaign"))), tuple(sorted(exposure_domain(ev, "channel"))))

    @property
    def click_from(self) -> int:
        """The least code of a click."""
        return (len(self.campaigns) + 1) * (len(self.channels) + 1)

    def groups(self, group: Axis) -> credits.Ints:
        """Per code, its index in the group axis' domain (its campaign's or channel's; -1 outside it).

        One lookup by the whole code (its few values), not a division and a remainder per touch.
        """
        names, stride = (self.campaigns, len(self.channels) + 1) if group.column == "campaign" else (self.channels, 1)
        index = {name: i for i, name in enumerate(group.domain)}
        lookup = np.array([-1, *(index.get(name, -1) for name in names)], dtype=np.int64)
        return lookup[np.arange(2 * self.click_from) // stride % (len(names) + 1)]


@dataclass(frozen=True)
class Bounded:
    """The matched people's conversions, one entry each in no order, capped and scaled (`bounded`).

    `ts_us`, `cents` (scaled to the per-person bound) and `brand` per conversion; `rows[j]`: the person's row in the
    j-th exposures table's member's data (-1: not matched with it); `counted`: False for the conversions over the
    cap, which count nowhere. They stay in the arrays (removing them would copy every array for a few percent of the
    rows): the join's build side leaves them out, and so do the totals.
    """

    ts_us: credits.Ints
    cents: credits.Ints
    brand: credits.Ints
    rows: tuple[credits.Ints, ...]
    counted: npt.NDArray[np.bool_]

    def build(self, lookback_us: int) -> tuple[dict[str, pa.Table], dict[str, int]]:
        """The relations and parameters `touches_sql` reads: per exposures table, the join's build side.

        A touch qualifies when it is the person's and its time te lies in [t - L, t] (t the conversion's, L the
        lookback). Times are cut into buckets of width W >= 2L from an origin below every window: a qualifying
        touch is then in the conversion's bucket, or in the one before when the window crosses into it. So each
        conversion enters the build side once per bucket its window reaches (one or two), keyed by (person's row,
        bucket) as one integer, and a plain equality join finds every candidate; the window itself is checked
        after (the join's residual), so no touch is found twice and none is missed. The candidates are a fraction
        of all the person's exposures (those within about W), which is what makes this cheaper than joining on
        the person and filtering by time. W grows when the key would not fit 62 bits (a huge row number or time
        range; rows more than 2^62 apart: one bucket, the key the row less the least, still within 63 bits); the
        exposures read are bounded to the rows and times the key covers, which every qualifying touch is within.
        The relation holds the person's row, the index, the time and whether the conversion counts; `touches_sql`
        computes the keys from them (and the conversions whose window crosses into the bucket before a second
        time, with the key one less).
        """
        import pyarrow as pa

        relations: dict[str, pa.Table] = {}
        params: dict[str, int] = {"lookback_us": lookback_us}
        for j, rows in enumerate(self.rows):
            every = bool(len(rows)) and int(rows.min()) >= 0  # two members: everyone is matched with the other
            index = np.arange(len(rows), dtype=np.int64) if every else np.flatnonzero(rows >= 0)
            row, t = (rows, self.ts_us) if every else (rows[index], self.ts_us[index])
            if len(index) == 0:  # nobody to join: bounds no row passes
                row0, row1, origin, end, width, buckets = 0, -1, 0, -1, 1, 1
            else:
                row0, row1 = int(row.min()), int(row.max())
                origin, end = int(t.min()) - lookback_us, int(t.max())
                span = end - origin + 1
                room = max(2**62 // (row1 - row0 + 1), 1)  # the most buckets the key holds
                width = max(2 * lookback_us, -(-span // room), 1)
                buckets = (span - 1) // width + 1
            counted = self.counted if every else self.counted[index]
            relations[BUILD.format(j)] = pa.table({"r": row, "i": index, "t": t, "c": counted})
            params |= {
                f"row0_{j}": row0,
                f"row1_{j}": row1,
                f"origin_{j}": origin,
                f"end_{j}": end,
                f"width_{j}": width,
                f"buckets_{j}": buckets,
            }
        return relations, params


def bounded(
    arrays: Mapping[str, Any],
    sides: Sequence[str],
    cap: int,
    person_cents: int | None,
    value_range: tuple[float, float],
    native: bool = True,
) -> Bounded:
    """`conversions_sql`'s rows in cents, capped and scaled: the module docstring's contribution bounding.

    Each conversion carries trunc(min(max(value, lo), hi) x CENTS) cents, `value_range` being the policy's (lo, hi)
    (`cents_of`). The cap keeps each person's `cap` earliest conversions, ties by value: by their cents, which never
    decrease as the value grows, so the kept times and cents are those the order by value keeps; conversions equal
    in time and cents are interchangeable (one person: the same touches, the same cents), so which of them is kept
    cannot show. Then, with `person_cents` P, a person whose kept conversions carry S > P |cents| has each scaled to
    sign x floor(|cents| x P / S), exactly. In the compiled kernel where it is built (`native.KERNELS`; people split
    between threads, the cents computed on the way), else in numpy (`_bounded_numpy`): the same counted times and
    cents, and the same scaled cents. A value that is not a number, or cents beyond `credits.MAX_CENTS`: InternalError.
    """
    person = np.asarray(arrays["person" if "person" in arrays else sides[0]], dtype=np.int64)
    ts_us = np.ascontiguousarray(arrays["ts_us"], dtype=np.int64)
    value = np.ascontiguousarray(arrays["value"], dtype=np.float64)
    brand = np.asarray(arrays["brand"], dtype=np.int64) if "brand" in arrays else np.zeros(len(person), np.int64)
    rows = tuple(np.asarray(arrays[side], dtype=np.int64) for side in sides)
    if len(person) == 0:
        return Bounded(ts_us, np.zeros(0, np.int64), brand, rows, np.ones(0, dtype=bool))
    who, people = _dense(person)
    who = np.ascontiguousarray(who)
    compiled = kernels.KERNELS if native else None  # read at each call: a test may turn the kernels off
    if compiled is not None:
        counted, cents = np.ones(len(who), dtype=np.uint8), np.empty(len(who), dtype=np.int64)
        P = -1 if person_cents is None else person_cents  # noqa: N806 (the docstring's P)
        lo, hi = value_range
        try:
            compiled.bound(who, ts_us, value, lo, hi, people, cap, P, counted, cents, kernels.THREADS)
        except ValueError as exc:
            raise InternalError(str(exc)) from None
        return Bounded(ts_us, cents, brand, rows, counted.view(bool))
    counted_numpy, cents = _bounded_numpy(who, ts_us, cents_of(value, value_range), cap, person_cents)
    return Bounded(ts_us, cents, brand, rows, counted_numpy)


def cents_of(value: npt.NDArray[np.float64], value_range: tuple[float, float]) -> credits.Ints:
    """Each value clamped to the policy's (lo, hi) and in cents, rounded toward zero, as numpy computes it.

    trunc(min(max(v, lo), hi) x CENTS), in that order of float64 operations: what the compiled bound computes, and
    what SQL's `CAST(trunc(least(greatest(v, lo), hi) * 100) AS BIGINT)` gives. InternalError for a NaN (uploads
    refuse them) or cents beyond `credits.MAX_CENTS` (no policy allows them).
    """
    if np.isnan(value).any():
        raise InternalError("a conversion's value is not a number")
    lo, hi = value_range
    exact = np.trunc(np.minimum(np.maximum(value, lo), hi) * CENTS)
    if len(exact) and not (exact.min() >= -credits.MAX_CENTS and exact.max() <= credits.MAX_CENTS):
        raise InternalError("values outside the declared domains reached an aggregate")
    return exact.astype(np.int64)


def _bounded_numpy(
    who: credits.Ints, ts_us: credits.Ints, cents: credits.Ints, cap: int, person_cents: int | None
) -> tuple[npt.NDArray[np.bool_], credits.Ints]:
    """`bounded` in numpy: whether each conversion counts, and the cents scaled.

    Only the people over the cap are sorted (most are not).
    """
    dropped = np.zeros(0, dtype=np.int64)
    heavy = np.flatnonzero((np.bincount(who) > cap)[who])
    if len(heavy):
        order = earliest_first(heavy, who, ts_us, cents)
        first = np.ones(len(order), dtype=bool)
        first[1:] = who[order[1:]] != who[order[:-1]]
        rank = np.arange(len(order)) - np.flatnonzero(first)[np.cumsum(first) - 1]
        dropped = np.sort(order[rank >= cap])
    if person_cents is not None:
        size = np.abs(cents)
        size[dropped] = 0
        # a person's |cents| add up to at most cap x the most one conversion carries, which the policy keeps
        # within 2^53: float64 sums of these integers are exact
        total = np.bincount(who, weights=size)
        if total.max() >= credits.MAX_CENTS:  # no policy allows it, but float sums are then inexact: integers
            total = np.array(credits.cell_sums(who, size, len(total)), dtype=object)
        over = np.flatnonzero((total > person_cents)[who])
        if len(over):
            a, s = size[over], total[who[over]]
            if total.dtype != object and int(a.max()) * person_cents < 2**63:
                scaled = a * person_cents // s.astype(np.int64)
            else:  # products or sums beyond 64 bits: Python's integers, for the few people over the bound
                pairs = zip(a.tolist(), s.tolist(), strict=True)
                scaled = np.array([int(x) * person_cents // int(y) for x, y in pairs], dtype=np.int64)
            cents = cents.copy()
            cents[over] = np.sign(cents[over]) * scaled
    counted = np.ones(len(who), dtype=bool)
    counted[dropped] = False
    return counted, cents


def earliest_first(rows: credits.Ints, who: credits.Ints, ts_us: credits.Ints, cents: credits.Ints) -> credits.Ints:
    """`rows` ordered by person, then time, then cents.

    One sort of person and time packed into an integer when they fit in 63 bits and no person has two of these
    conversions at one time (the usual case: then cents never decide); else a sort by the three keys.
    """
    person, at = who[rows], ts_us[rows]
    low = int(at.min())
    width = (int(at.max()) - low).bit_length()
    if int(person.max()).bit_length() + width <= 63:
        order = np.argsort((person << width) | (at - low))
        packed = rows[order]
        same = (who[packed[1:]] == who[packed[:-1]]) & (ts_us[packed[1:]] == ts_us[packed[:-1]])
        if not same.any():
            return packed
    return rows[np.lexsort((cents[rows], at, person))]


def _dense(person: credits.Ints) -> tuple[credits.Ints, int]:
    """Person ids from 0 (for counting with `bincount` and for the kernel's buckets), and how many ids that makes.

    The rows less the smallest when their range is small (it is: they are row numbers of the hub's users table),
    else ranks.
    """
    low, high = int(person.min()), int(person.max())
    if high - low < 4 * len(person) + 2**20:
        return (person - low if low else person), high - low + 1
    ranks = np.unique(person, return_inverse=True)[1].astype(np.int64)
    return ranks, int(ranks.max()) + 1


def attribution_histograms(
    data: MatchedData,
    conversions: Sql,
    touches: Sql,
    ev: EventTables,
    axes: tuple[Axis, ...],
    lookback_days: int,
    model: str,
    click_over_view: bool,
    half_life_days: float,
) -> tuple[Histogram, Histogram]:
    """Attributed thousandths of a conversion and cents per cell, exact: the conversions, bounded, then their touches.

    A conversion no touch qualifies for hands its thousandths and cents to its brand cell's `none` group.
    """
    sides = _sides(data.catalog, ev)
    scale = ev.person_cents if ev.person_cents < ev.cap * ev.cents_per_conversion else None
    conv = bounded(data.columns(conversions), sides, ev.cap, scale, (ev.lo, ev.hi))
    brand_cells = len(axes[1].domain) if len(axes) > 1 else 1
    relations, params = conv.build(lookback_days * credits.MICROSECONDS_PER_DAY)
    assert isinstance(touches.params, Mapping)  # touches_sql names its parameters
    arrays = data.columns(Sql(touches.text, {**touches.params, **params}), relations)
    code = TouchCode.of(ev)
    cells = credit_sums.Cells(code.groups(axes[0]), code.click_from, brand_cells, len(axes[0].domain) - 1)
    counted = credit_sums.Conversions(conv.cents, conv.brand, conv.ts_us, conv.counted)
    milli_sums, cents_sums = credit_sums.cell_totals(arrays, counted, cells, model, click_over_view, half_life_days)
    keys = cells_of(axes)
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
        conversions_read = conversions_sql(catalog, ev, brand)
        touches_read = touches_sql(catalog, ev)
        both = read_once(
            lambda data: attribution_histograms(
                data,
                conversions_read,
                touches_read,
                ev,
                axes,
                q.lookback_days,
                q.model,
                q.click_over_view,
                q.half_life_days,
            )
        )

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
