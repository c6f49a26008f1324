"""Lift's person range: every person's centred terms lie within the bounds the plan states as sensitivities."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cleanroom.analytics.lift import PersonRange
from cleanroom_client.policy import squared_bound

CENTS = 100


@st.composite
def ranges_and_totals(draw: st.DrawFn) -> tuple[PersonRange, int]:
    """A range lo <= 0 <= hi in cents (up to the policy's 2^53-sized bounds) and one total t within it."""
    lo = draw(st.integers(-(10**10), 0))
    hi = draw(st.integers(0, 10**10))
    return PersonRange(lo, hi), draw(st.integers(lo, hi))


@given(ranges_and_totals())
def test_each_persons_terms_are_within_the_stated_bounds(drawn):
    """What the SQL adds for one person, t - centre and ((t - m2)^2 + 100^2 / 2) // 100^2, is within
    `revenue_bound` and [0, `squared_bound`], which are at most the uncentred bounds P and ceil(P^2 / 100^2) + 1 the
    policy's 2^53 check uses (P = max(|lo|, hi)): centring never states more than before. The squares' centre m2 is
    a whole currency unit within the range, at most half a unit from its midpoint."""
    span, t = drawn
    person = max(-span.lo, span.hi)
    assert abs(t - span.centre) <= span.revenue_bound <= person
    m2 = span.square_centre
    assert m2 % CENTS == 0
    assert span.lo <= m2 <= span.hi
    assert abs(2 * m2 - span.lo - span.hi) <= CENTS
    square = ((t - m2) ** 2 + CENTS * CENTS // 2) // (CENTS * CENTS)
    assert square == span.square(t)
    assert 0 <= square <= span.squared_bound <= squared_bound(person)


@given(st.integers(-(10**10), 0), st.integers(0, 10**10))
def test_a_non_converters_square_is_exact(lo, hi):
    """A person with no conversion (t = 0) adds m2^2 exactly, in currency units squared: the variance is a
    difference of two numbers near it, which a rounded m2^2 (6.25 to 6, about the midpoint 2.50 of [0, 5]) made 0."""
    span = PersonRange(lo, hi)
    assert span.square(0) * CENTS * CENTS == span.square_centre**2


@given(st.integers(1, 10**10))
def test_non_negative_ranges_state_three_quarters_and_a_quarter(hi):
    """With lo = 0 (non-negative values) revenue's bound is 3/4 of hi and the squares' a quarter of (hi / 100)^2,
    rounded, when hi is an even number of currency units (then m2 is the midpoint); otherwise (hi/2 + at most half
    a unit)^2: the reductions the noise gets (docs/privacy.md, "Lift's vectors are centred")."""
    span = PersonRange(0, hi)
    assert span.revenue_bound == hi - hi // 4
    half = max(span.square_centre, hi - span.square_centre)
    assert 2 * half <= hi + CENTS
    assert span.squared_bound == (half * half + CENTS * CENTS // 2) // (CENTS * CENTS)
    if hi % (2 * CENTS) == 0:
        assert span.squared_bound == (hi * hi + 2 * CENTS * CENTS) // (4 * CENTS * CENTS)


@given(st.integers(0, 10**10))
def test_symmetric_ranges_keep_the_uncentred_sum(p):
    """A range symmetric about 0 keeps revenue's centre at 0 (the sum as before) and the squares' at 0."""
    span = PersonRange(-p, p)
    assert span.centre == 0
    assert span.revenue_bound == p
    assert span.square_centre == 0
