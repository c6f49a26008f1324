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
    """What the SQL adds for one person, t - centre and ((2t - lo - hi)^2 + 2 x 100^2) // (4 x 100^2), is within
    `revenue_bound` and [0, `squared_bound`], which are at most the uncentred bounds P and ceil(P^2 / 100^2) + 1 the
    policy's 2^53 check uses (P = max(|lo|, hi)): centring never states more than before."""
    span, t = drawn
    person = max(-span.lo, span.hi)
    assert abs(t - span.centre) <= span.revenue_bound <= person
    square = ((2 * t - span.lo - span.hi) ** 2 + 2 * CENTS * CENTS) // (4 * CENTS * CENTS)
    assert 0 <= square <= span.squared_bound <= squared_bound(person)


@given(st.integers(1, 10**10))
def test_non_negative_ranges_state_three_quarters_and_a_quarter(hi):
    """With lo = 0 (non-negative values) revenue's bound is 3/4 of hi and the squares' a quarter of (hi / 100)^2,
    rounded: the reductions the noise gets (docs/privacy.md, "Lift's vectors are centred")."""
    span = PersonRange(0, hi)
    assert span.revenue_bound == hi - hi // 4
    assert span.squared_bound == (hi * hi + 2 * CENTS * CENTS) // (4 * CENTS * CENTS)


@given(st.integers(0, 10**10))
def test_symmetric_ranges_keep_the_uncentred_sum(p):
    """A range symmetric about 0 keeps revenue's centre at 0 (the sum as before) and the squares' at 0."""
    span = PersonRange(-p, p)
    assert span.centre == 0
    assert span.revenue_bound == p
    assert span.midpoint_units == 0
