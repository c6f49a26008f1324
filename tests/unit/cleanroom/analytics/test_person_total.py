"""One person's total of a money measure: the range value (`goal`) and lift state for it, pinned to the letter.

Value clamps its released means to the range in currency units (`MeasureSpec.per_person_range`); lift clips each
person's revenue to it in whole cents and takes its sensitivities and centres from that (`lift.person_range`). The
references below are the two computations as they stood before one module came to own the rule: every answer, and
every vector before noise, must stay exactly what it was.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cleanroom.analytics.attribution import EventTables
from cleanroom.analytics.goal import MeasureSpec
from cleanroom.analytics.lift import PersonRange, person_range
from cleanroom_client.policy import TableSpec

CENTS = 100


def value_reference(cap: int, lo: float, hi: float, person_cents: int) -> tuple[float, float]:
    """`MeasureSpec.per_person_range` as it was."""
    bound = person_cents / CENTS
    return max(min(0.0, cap * lo), -bound), min(max(0.0, cap * hi), bound)


def lift_reference(cap: int, lo: float, hi: float, person_cents: int) -> tuple[int, int]:
    """`lift.person_range` as it was."""
    return (
        max(min(0, math.floor(cap * lo * CENTS)), -person_cents),
        min(max(0, math.ceil(cap * hi * CENTS)), person_cents),
    )


#: A measure's bound: whole, cents, sub-cent and binary fractions (19.99 x 100 is 1998.9999999999998).
bound = st.one_of(
    st.integers(-(10**6), 10**6).map(float),
    st.integers(-(10**8), 10**8).map(lambda c: c / CENTS),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([19.99, 0.1, 0.3, 0.07, 1 / 3, -19.99, -0.1, -0.07, 2.675]),
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[TableSpec, int]:
    """A conversions table with a measure [lo, hi], a cap, and maybe a per-person maximum (which may bind)."""
    lo, hi = sorted((draw(bound), draw(bound)))
    if lo == hi:
        hi = lo + 1.0
    cap = draw(st.integers(1, 50))
    clip = draw(
        st.one_of(
            st.none(),
            st.floats(0.01, 1e7, allow_nan=False),
            st.integers(1, 10**7).map(lambda c: c / CENTS),
            st.sampled_from([0.07, 7.0, 19.99, 0.29]),
        )
    )
    spec = TableSpec(
        "brand",
        "conversions",
        "ts",
        measures={"value": (lo, hi)},
        max_per_person=cap,
        per_person_max={} if clip is None else {"value": clip},
    )
    return spec, cap


@given(tables())
def test_values_range_of_a_persons_total_is_unchanged(drawn):
    spec, cap = drawn
    lo, hi = spec.measures["value"]
    person = spec.person_cents("value")
    measure = MeasureSpec("brand", "conversions", "value", "ts", lo, hi, cap, person)
    assert measure.per_person_range() == value_reference(cap, lo, hi, person)


@given(tables())
def test_lifts_range_of_a_persons_total_is_unchanged(drawn):
    spec, cap = drawn
    lo, hi = spec.measures["value"]
    person = spec.person_cents("value")
    ev = EventTables(spec, spec, "value", lo, hi, cap, (), person)
    span = person_range(ev)
    assert span == PersonRange(*lift_reference(cap, lo, hi, person))
    assert span.lo <= 0 <= span.hi


def test_known_ranges():
    """Hand-checked: [0, 100] x 2 (value's test policy), a binding per-person maximum, an awkward bound."""
    t = TableSpec("b", "conversions", "ts", measures={"value": (0.0, 100.0)}, max_per_person=2)
    assert MeasureSpec(
        "b", "conversions", "value", "ts", 0.0, 100.0, 2, t.person_cents("value")
    ).per_person_range() == (
        0.0,
        200.0,
    )
    assert person_range(EventTables(t, t, "value", 0.0, 100.0, 2, (), t.person_cents("value"))) == PersonRange(
        0, 20_000
    )
    clipped = TableSpec(
        "b", "conversions", "ts", measures={"value": (-50.0, 300.0)}, max_per_person=3, per_person_max={"value": 250.5}
    )
    p = clipped.person_cents("value")
    assert p == 25_050
    assert MeasureSpec("b", "conversions", "value", "ts", -50.0, 300.0, 3, p).per_person_range() == (-150.0, 250.5)
    assert person_range(EventTables(clipped, clipped, "value", -50.0, 300.0, 3, (), p)) == PersonRange(-15_000, 25_050)
    # a bound that is not a whole number of cents in binary: value keeps the float product, lift whole cents
    awkward = TableSpec("b", "conversions", "ts", measures={"value": (0.0, 19.99)}, max_per_person=3)
    p = awkward.person_cents("value")
    assert MeasureSpec("b", "conversions", "value", "ts", 0.0, 19.99, 3, p).per_person_range() == (0.0, 3 * 19.99)
    assert person_range(EventTables(awkward, awkward, "value", 0.0, 19.99, 3, (), p)).hi == math.ceil(3 * 19.99 * 100)
