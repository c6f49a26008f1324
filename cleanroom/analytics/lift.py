"""Lift against a holdout: its DuckDB SQL over the join (exact, un-noised, never leaving the engine) and its plan.

Lift: each matched person with a test group for the campaign falls in one group (the first row uploaded for that
campaign); per group and conversion (at least one, or none) the number of people, and per group two sums of their
capped, clamped revenue (cents rounded toward zero), each person's total clipped to the policy's per-person range
(`PersonRange`: within the per-person bound `TableSpec.person_cents`, as value's), each sum taken about a centre the
policy fixes so that one person's move of it is as small as the range allows.

Everything here is total, as in `attribution`: per-person values are bounded by the policy and every sum over
people is a 128-bit integer, clamped to +-2^53 before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cleanroom_client.policy import QueryType, TableSpec

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..principals import Principal
from .attribution import ANY_OF, CENTS, EventTables, capped_sql, event_tables, matched_sql
from .cells import NO_DENOMINATOR, Z95, Cell, below_minimum_group, withheld
from .matched import Axis, Catalog, Histogram, MatchedData, Sql, cells_of, fill_histogram
from .person_total import person_range_cents
from .plan import Measurement, Noisy, Plan, QueryAnswer, read_once
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
#: squares need for the holdout's variance: 0.10, where the demo's worst run is narrowest (at 0.05 the variance
#: draws low too often: coverage 93% over the test's randomisations, 95% here). (benchmarks/bench_accuracy.py.)
LIFT_SPLIT: tuple[tuple[str, float], ...] = ((CONVERSION, 0.36), ("revenue", 0.54), ("revenue_sq", 0.10))


@dataclass(frozen=True)
class PersonRange:
    """One person's revenue in lift, in whole cents: every total lies in [lo, hi], lo <= 0 <= hi (the SQL clips it).

    Both revenue vectors sum every person's total t about a centre fixed by the policy (non-converters count, at
    t = 0), so one person moves a vector by at most its own term (docs/privacy.md, "Money"):

    - `revenue`: t - `centre`, the centre halfway between 0 and the range's midpoint (0 when the range is symmetric
      about 0, as before; a quarter of the way up when lo = 0): at most `revenue_bound` = 3/4 of hi when lo = 0,
      against hi uncentred. A group's revenue is the sum plus centre x people, so the people's noise enters it
      times (mean - centre): with lo = 0 and the split's ratio (revenue 0.54 : histogram 0.36 of epsilon, below
      1.87) that is less noise than the uncentred sum for every mean in [0, hi].
    - `revenue_sq`: (t - m2)^2 in currency units squared, rounded half up in 128-bit integers, m2 = `square_centre`,
      the whole currency unit nearest the range's midpoint: at most `squared_bound`, about (hi - lo)^2 / 4 (a
      quarter of (hi/100)^2 when lo = 0, exactly when hi is an even number of currency units; the uncentred
      square's was all of it). It is only read for the variance: (sum / people) - (mean - m2)^2, a difference of two
      numbers near m2^2, so a non-converter's term (t = 0: m2^2) must be exact. About the exact midpoint it was not
      (2.50 for values within [0, 5]: 6.25 rounded to 6 for every non-converter, red team, issue 31) and the
      holdout's variance, and with it incremental revenue's sampling term, came out 0.
    """

    lo: int
    hi: int

    @property
    def centre(self) -> int:
        """Revenue's centre (cents)."""
        return (self.lo + self.hi) // 4

    @property
    def revenue_bound(self) -> int:
        """The most |t - centre| can be (cents): revenue's sensitivity per matched pair."""
        return max(abs(self.centre - self.lo), abs(self.hi - self.centre))

    @property
    def square_centre(self) -> int:
        """The squares' centre (cents): the whole currency unit nearest the range's midpoint, ties toward 0.

        Within [lo, hi] (it is 0 unless the midpoint is more than half a unit from 0, and then the range is wider
        than a unit on that side), and a whole unit, so m2^2 is an exact number of currency units squared.
        """
        twice = self.lo + self.hi  # twice the midpoint, in cents
        units = (abs(twice) + CENTS - 1) // (2 * CENTS)  # |midpoint| / 100 rounded to nearest, ties down
        return units * CENTS if twice >= 0 else -units * CENTS

    def square(self, t: int) -> int:
        """One person's term of `revenue_sq`: (t - m2)^2 in currency units squared, rounded half up (as the SQL)."""
        d = t - self.square_centre
        return (d * d + CENTS * CENTS // 2) // (CENTS * CENTS)

    @property
    def squared_bound(self) -> int:
        """The most one person's centred square counts (currency units squared): its sensitivity per pair."""
        return max(self.square(self.lo), self.square(self.hi))

    @property
    def bounds(self) -> tuple[float, float]:
        """The range [lo, hi] in currency units."""
        return self.lo / CENTS, self.hi / CENTS

    @property
    def centre_units(self) -> float:
        """Revenue's centre in currency units."""
        return self.centre / CENTS

    @property
    def square_centre_units(self) -> float:
        """The squares' centre in currency units (a whole number)."""
        return self.square_centre / CENTS


def person_range(ev: EventTables) -> PersonRange:
    """The range of one person's total cents (`person_total.person_range_cents`: as value's, in whole cents)."""
    return PersonRange(*person_range_cents(ev.cap, ev.lo, ev.hi, ev.conversions.person_cents(ev.value_column)))


def lift_sql(catalog: Catalog, ev: EventTables, groups: TableSpec, campaign: str) -> Sql:
    """Per test group and whether they converted: people, centred revenue (cents), centred squares (currency units^2).

    Each person's revenue t (their at most cap conversions, each clipped to [lo, hi]) is in whole cents rounded
    toward zero, clipped to `person_range` (within the policy's per-person bound, `TableSpec.person_cents`); every
    person of a group adds t - centre to its revenue and (t - m2)^2 / 100^2, rounded half up in 128-bit integers,
    to its squares (`PersonRange.square`: a double's rounding passed such a bound before, `squared_bound`).
    """
    tg = catalog.table(groups.member, "test_groups", ["campaign", "test_group"])
    side = catalog.side(groups.member)
    text = f"""
        WITH m AS ({matched_sql(catalog, ev.conversions.member)}),
        conv AS ({capped_sql(catalog, ev)}),
        per_person AS (SELECT person, count(*) AS conversions,
                              least(greatest(CAST(trunc(sum(value) * {CENTS}) AS HUGEINT), $person_lo), $person_hi)
                              AS cents
                       FROM conv WHERE rn <= $cap GROUP BY person),
        grouped AS (
            SELECT m.person, arg_min(CAST(t.test_group AS VARCHAR), t.rowid) AS test_group
            FROM m JOIN {tg} t ON t.row_id = m.{side}
            WHERE CAST(t.campaign AS VARCHAR) = $campaign GROUP BY m.person
        )
        SELECT g.test_group, p.person IS NOT NULL, count(*), sum(coalesce(p.cents, 0) - $centre),
               sum((CAST(coalesce(p.cents, 0) - $square_centre AS HUGEINT) * (coalesce(p.cents, 0) - $square_centre)
                    + {CENTS * CENTS // 2}) // {CENTS * CENTS})
        FROM grouped g LEFT JOIN per_person p ON p.person = g.person
        GROUP BY 1, 2
    """
    r = person_range(ev)
    params = {"collab": catalog.id, "lo": ev.lo, "hi": ev.hi, "cap": ev.cap, "campaign": campaign}
    centres = {"centre": r.centre, "square_centre": r.square_centre}
    return Sql(text, params | {"person_lo": r.lo, "person_hi": r.hi} | centres)


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
    group x converted or not (sensitivity c: one pair in one cell; people and converters are its sums), `revenue`,
    the sum of each person's revenue less revenue's centre, in cents (c x `PersonRange.revenue_bound`: each
    person's revenue clipped to the policy's `per_person_max`, or to cap x the value bounds without one), and
    `revenue_sq`, the sum of each person's squared distance from the whole currency unit nearest the range's
    midpoint in currency units squared
    (c x `PersonRange.squared_bound`). Epsilon is split by `LIFT_SPLIT`: incremental revenue reads revenue in both
    groups, and the squares only feed the holdout's variance, the sampling term of the intervals. Intervals combine
    sampling error and DP noise.
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
        rows = read_once(lambda data: data.rows(sql))

        def read_conversion(data: MatchedData) -> Histogram:
            return fill_histogram(
                (ax, converted), [(r[0], CONVERTED if r[1] else NOT_CONVERTED, r[2]) for r in rows(data)]
            )

        def read_revenue(data: MatchedData) -> Histogram:
            return fill_histogram((ax,), [(r[0], r[3]) for r in rows(data)])

        def read_squares(data: MatchedData) -> Histogram:
            return fill_histogram((ax,), [(r[0], r[4]) for r in rows(data)])

        span = person_range(ev)
        c = engine.stability(catalog, any_of=ANY_OF)
        eps = {name: q.epsilon * part for name, part in share.items()}
        measurements = (
            Measurement(CONVERSION, read_conversion, eps[CONVERSION], c),
            Measurement("revenue", read_revenue, eps["revenue"], c * span.revenue_bound, CENTS),
            Measurement("revenue_sq", read_squares, eps["revenue_sq"], c * span.squared_bound),
        )
        floor = 0.0 if ev.lo >= 0 else -math.inf

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            return lift_cells(noisy, min_group, floor, span)

        conversion_keys = cells_of((ax, converted))

        def typical(group: float) -> dict[str, float | tuple[float, ...]]:
            # both groups alike (no lift: the bar is then the smallest detectable one), a tenth converting once at
            # the middle of the value bounds, as released: about revenue's centre and the squares'
            converters, mid = group / 10, (ev.lo + ev.hi) / 2
            centre, middle = span.centre_units, span.square_centre_units
            return {
                CONVERSION: tuple(converters if k[1] == CONVERTED else group - converters for k in conversion_keys),
                "revenue": converters * mid - group * centre,
                "revenue_sq": converters * (mid - middle) ** 2 + (group - converters) * middle**2,
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


@dataclass(frozen=True)
class _Revenue:
    """One test group's revenue per person (currency units), one person's revenue variance, the mean's noise."""

    mean: float
    spread: float
    noise: float


def _revenue(g: _Group, r: Noisy, sq: Noisy, i: int, span: PersonRange) -> _Revenue | None:
    """Revenue per person of group i with the variance of one person's revenue and the mean's noise variance.

    The mean is centred revenue / people + centre; its noise by the delta method is (v_r + (mean - centre)^2 x
    v_people) / people^2. The variance is the noisy mean square about the squares' centre less (mean - m2)^2,
    kept within [0, (b - mean)(mean - a)] (Bhatia-Davis: the most a variable within the person range [a, b] with
    this mean can have): post-processing of released values and the policy, so a large noise draw cannot inflate
    the interval beyond what any data could need. None when the group's noisy size is not positive.
    """
    people = g.people
    if people <= 0:
        return None
    (a, b), centre, mid = span.bounds, span.centre_units, span.square_centre_units
    mu = r.values[i] / CENTS / people + centre
    m = min(max(mu, a), b)
    second = max(float(sq.values[i]), 0.0) / people
    spread = min(max(second - (mu - mid) ** 2, 0.0), (b - m) * (m - a))
    noise = (r.variance / CENTS**2 + (mu - centre) ** 2 * g.people_var) / people**2
    return _Revenue(mu, spread, noise)


def lift_cells(
    noisy: Mapping[str, Noisy],
    min_group: int,
    revenue_floor: float,
    span: PersonRange,
) -> list[Cell]:
    """Per group: people, converters, conversion rate, revenue per person; then the lift estimates.

    Revenue per person is shown at `revenue_floor` or above (0 when the value bounds are non-negative).
    `span`: one person's revenue range and the vectors' centres (`PersonRange`).

    Intervals are normal approximations (1.96 standard deviations) whose variance adds the binomial (or
    empirical) sampling variance to the DP noise variance, by the delta method for the derived ratios. Every
    division is guarded, so any noisy input gives cells (withheld where a denominator is not positive).

    What the sampling term covers: the conversion estimates (absolute and relative lift, incremental conversions,
    the minimum detectable lift) carry the randomised test's between-group error (Neyman's: the exposed group's
    and the holdout's binomial variances), so their bars cover the campaign's average effect over the test's
    people. Incremental revenue is the revenue the campaign added among this test's exposed people: their revenue
    less exposed people x the holdout's revenue per person. Under randomisation their revenue without the campaign
    and the holdout's are two samples of one control distribution, so its sampling variance is exposed^2 x
    sigma_h^2 x (1 / exposed + 1 / holdout), sigma_h^2 the holdout's variance alone (the exposed group's spread
    does not enter: that term of Neyman's is for an effect beyond these people). The minimum detectable revenue is
    the same bar around an estimate of zero (under no effect both groups share sigma_h^2).
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
        money = _revenue(g, r, sq, i, span)
        stats[keys[0]] = (rate, money)
        if group_ok and rate and money:
            out.append(Cell(keys, "conversion_rate", rate[0], Z95 * math.sqrt(rate[1]), False))
            per_person = max(money.mean, revenue_floor)
            bar = Z95 * math.sqrt(money.spread / g.people + money.noise)
            out.append(Cell(keys, "revenue_per_person", per_person, bar, False))
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
    exposed, holdout = re_[2], rh[2]
    inc_conv, var_inc_conv = diff * exposed, exposed**2 * var_diff + diff**2 * exposed_var
    # incremental revenue = centred revenue(exposed) - exposed / holdout x centred revenue(holdout) (the centres
    # cancel); its noise by the delta method, its sampling term the holdout's variance (docstring)
    ratio = exposed / holdout
    inc_rev = (me.mean - mh.mean) * exposed
    noise_inc_rev = r.variance / CENTS**2 * (1 + ratio**2) + (mh.mean - span.centre_units) ** 2 * (
        exposed_var + ratio**2 * groups["holdout"].people_var
    )
    var_inc_rev = exposed * mh.spread * (1 + ratio) + noise_inc_rev
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
    out.append(Cell(key, "minimum_detectable_revenue", Z95 * math.sqrt(max(var_inc_rev, 0.0)), 0.0, False))
    return out
