"""Post-processing arithmetic: any noisy input gives a value in the range the truth lies in, or a withheld cell."""

from __future__ import annotations

import math

import hypothesis.strategies as st
from hypothesis import given

from cleanroom.analytics.cells import fraction, quotient, ratio, share

COUNTS = st.floats(0, 1e9, allow_nan=False)
ANY = st.floats(-1e9, 1e9, allow_nan=False)
BOUND = st.floats(0, 1e6, allow_nan=False)


@given(COUNTS, st.integers(1, 8), COUNTS, st.integers(0, 8), BOUND)
def test_a_fraction_is_a_rate_or_withheld(part, part_cells, rest, rest_cells, e95):
    f = fraction(part, part_cells, rest, rest_cells, e95)
    if part + rest <= 0:
        assert f is None
    else:
        assert f is not None
        assert 0.0 <= f[0] <= 1.0
        assert not math.isnan(f[1])
        assert f[1] >= 0


@given(COUNTS, COUNTS, st.integers(1, 50), BOUND)
def test_share_is_the_one_cell_fraction(part, other, cells, e95):
    total = part + other
    assert share(part, total, cells, e95) == fraction(part, 1, total - part, cells - 1, e95)


@given(ANY, BOUND, ANY, BOUND)
def test_quotients_need_a_positive_denominator_and_agree_with_ratio(x, ex, y, ey):
    q = quotient(x, ex, y, ey)
    if y <= 0 or not math.isfinite(x / y):
        assert q is None
        return
    assert q is not None
    assert q[0] == x / y
    assert q[1] >= 0
    if x > 0:
        assert ratio(x, ex, y, ey) == q
