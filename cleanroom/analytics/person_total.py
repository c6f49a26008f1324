"""The range of one person's total of a money measure: the one place value (`goal`) and lift take it from.

A person's total is the sum of at most `cap` rows, each clamped to the measure's bounds [lo, hi] (no row at all: 0),
clipped by the SQL to [-P, P], P = `TableSpec.person_cents` (the policy's `per_person_max`, or the rows' own bound).
Value clamps its released means to the range in currency units (`person_range`); lift clips each person's revenue
to it in whole cents and derives its sensitivities and centres from that (`person_range_cents`, `lift.PersonRange`).
Both are outer bounds on what the SQL can produce (its rows' cents are rounded toward zero).
"""

from __future__ import annotations

import math

from .attribution import CENTS


def person_range(cap: int, lo: float, hi: float, person_cents: int) -> tuple[float, float]:
    """[min(0, cap x lo), max(0, cap x hi)] clipped to [-P, P], in currency units; always lo' <= 0 <= hi'."""
    bound = person_cents / CENTS
    return max(min(0.0, cap * lo), -bound), min(max(0.0, cap * hi), bound)


def person_range_cents(cap: int, lo: float, hi: float, person_cents: int) -> tuple[int, int]:
    """`person_range` rounded outward to whole cents, never past [-P, P]: a range every total in cents lies in.

    Where the clip binds, P / 100 x 100 is not always P in floating point (7 / 100 x 100 is 7.000000000000001), so
    the cents are clipped again: the range is then exactly [-P, P] on that side, as the SQL's clip in cents.
    """
    low, high = person_range(cap, lo, hi, person_cents)
    return max(math.floor(low * CENTS), -person_cents), min(math.ceil(high * CENTS), person_cents)
