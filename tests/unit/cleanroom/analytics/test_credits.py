"""Attribution's vectorised credits against a plain per-conversion computation, on random touches in any order.

The rules are those of `cleanroom.analytics.attribution` (and of the reference in
tests/system/analytics/test_attribution.py): order by time, an impression before a click, campaign, channel;
click-over-view; the latest `MAX_TOUCHES`; weights per model; integer shares by largest remainder, ties to the
earlier touch. Time decay's weights are compared within one unit (its exponentials are numpy's, the reference's
Python's, which may differ in the last bit and so move a tie); every other model exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict

import hypothesis.strategies as st
import numpy as np
from hypothesis import example, given, settings

from cleanroom.analytics import credits
from cleanroom.analytics.credits import MAX_TOUCHES, MICROSECONDS_PER_DAY, MILLI, Touches

MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")
HALF_LIFE = 2.0

# (conversion, time in hours, click, campaign rank, channel rank, cell): the cell is the campaign's (by campaign),
# so touches that tie on every ordering key are in the same cell, as in the data.
touch = st.tuples(st.integers(0, 5), st.integers(0, 6), st.booleans(), st.integers(0, 2), st.integers(0, 1)).map(
    lambda t: (*t, 2 - t[3])
)
cases = st.tuples(
    st.lists(touch, min_size=0, max_size=40),
    st.lists(st.integers(-(2**40), 2**40), min_size=6, max_size=6),
    st.sampled_from(MODELS),
    st.booleans(),
    st.randoms(use_true_random=False),
)


def apportion(total: int, weights: list[float]) -> list[int]:
    exact = [w * total for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - shares[i]), i))
    # float rounding near 2^53 may leave n units or more (whole rounds, then one each), or fewer than none (whole
    # rounds from the shares above 0, at most the least of them, then one each from the smallest remainders)
    left, n = total - sum(shares), len(shares)
    if left > 0:
        shares = [s + left // n for s in shares]
        for i in order[: left % n]:
            shares[i] += 1
    while left < 0:
        above = [s for s in shares if s > 0]
        whole = min(-left // len(above), min(above))
        shares = [s - whole if s > 0 else s for s in shares]
        left += whole * len(above)
        for i in reversed(order) if whole == 0 else []:
            if left < 0 and shares[i] > 0:
                shares[i] -= 1
                left += 1
    return shares


#: The models whose weights are even across a conversion's touches, or nearly (`credits.even_shares`).
EVEN = ("linear", "position_based")


def even_weights(model: str, n: int) -> list[float]:
    """Linear's or position-based's weights of a conversion of n touches, in plain Python."""
    if model == "linear":
        return [1.0 / n] * n
    return [1.0] if n == 1 else [0.5, 0.5] if n == 2 else [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]


def plain(rows: list[tuple], cents: list[int], model: str, click_over_view: bool) -> dict[int, list[int]]:
    """Per cell [thousandths, cents], one conversion at a time."""
    by_conversion: dict[int, list[tuple]] = defaultdict(list)
    for r in rows:
        by_conversion[r[0]].append(r)
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for conversion, touches in by_conversion.items():
        if click_over_view and any(t[2] for t in touches):
            touches = [t for t in touches if t[2]]
        touches = sorted(touches, key=lambda t: (t[1], t[2], t[3], t[4]))[-MAX_TOUCHES:]
        n = len(touches)
        if model == "last_touch":
            w = [1.0 if i == n - 1 else 0.0 for i in range(n)]
        elif model == "first_touch":
            w = [1.0 if i == 0 else 0.0 for i in range(n)]
        elif model in EVEN:
            w = even_weights(model, n)
        else:  # time_decay
            newest = touches[-1][1]
            raw = [2.0 ** (-((newest - t[1]) * 3600 * 10**6 / MICROSECONDS_PER_DAY) / HALF_LIFE) for t in touches]
            w = [r / sum(raw) for r in raw]
        value = cents[conversion]
        for t, m, c in zip(touches, apportion(MILLI, w), apportion(abs(value), w), strict=True):
            out[t[5]][0] += m
            out[t[5]][1] += int(math.copysign(c, value)) if value else 0
    return out


def vectorised(rows: list[tuple], cents: list[int], model: str, click_over_view: bool) -> dict[int, list[int]]:
    click = np.array([r[2] for r in rows], dtype=bool)
    campaign = np.array([r[3] for r in rows], dtype=np.int64)
    channel = np.array([r[4] for r in rows], dtype=np.int64)
    arrays = {
        "conversion": np.array([r[0] for r in rows], dtype=np.int64),
        "ts_us": np.array([r[1] * 3600 * 10**6 for r in rows], dtype=np.int64),
        "click": click,
        "tie": (click * (campaign.max(initial=0) + 1) + campaign) * (channel.max(initial=0) + 1) + channel,
        "group": np.array([r[5] for r in rows], dtype=np.int64),
    }
    conversions = max((r[0] for r in rows), default=-1) + 1
    brand, at = np.zeros(conversions, dtype=np.int64), np.zeros(conversions, dtype=np.int64)
    touches = credits.touches_of(arrays, np.array(cents[:conversions], dtype=np.int64), brand, at, 1)
    cell, milli, cent = credits.credit(touches, model, click_over_view, HALF_LIFE)
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for k, (m, c) in enumerate(zip(credits.cell_sums(cell, milli, 4), credits.cell_sums(cell, cent, 4), strict=True)):
        if m or c:
            out[k] = [m, c]
    return out


@settings(max_examples=300, deadline=None)
@given(cases)
def test_credits_equal_the_plain_computation_in_any_row_order(case):
    rows, cents, model, click_over_view, rnd = case
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    got = vectorised(shuffled, cents, model, click_over_view)
    want = {k: v for k, v in plain(rows, cents, model, click_over_view).items() if v != [0, 0]}
    conversions = len({r[0] for r in rows})
    assert sum(m for m, _ in got.values()) == MILLI * conversions  # each conversion hands out exactly 1000
    assert sum(c for _, c in got.values()) == sum(cents[c] for c in {r[0] for r in rows})  # and all its cents
    if model == "time_decay":
        for k in set(got) | set(want):
            g, w = got.get(k, [0, 0]), want.get(k, [0, 0])
            assert abs(g[0] - w[0]) <= len(rows), (k, g, w)
            assert abs(g[1] - w[1]) <= len(rows), (k, g, w)
    else:
        assert got == want


def test_the_latest_hundred_touches_are_credited():
    n = MAX_TOUCHES + 20
    touches = Touches(
        np.zeros(n, dtype=np.int64),
        np.arange(n, dtype=np.int64)[::-1].copy(),  # rows newest first: the order must not matter
        np.zeros(n, dtype=bool),
        np.where(np.arange(n) < 20, 1, 0).astype(np.int64),  # the 20 newest rows in cell 1
        np.full(n, 10_000, dtype=np.int64),
    )
    order = credits.touch_order(touches.conversion, (touches.at, touches.click))
    ordered = Touches(*(getattr(touches, f)[order] for f in ("conversion", "at", "click", "cell", "cents")))
    cell, milli, _ = credits.credit(ordered, "first_touch", False, HALF_LIFE)
    assert len(cell) == MAX_TOUCHES
    assert credits.cell_sums(cell, milli, 2) == [MILLI, 0]  # the first credited is the 100th newest, cell 0


def test_cell_sums_are_exact_beyond_64_bits():
    values = np.full(4096, 2**53, dtype=np.int64)
    assert credits.cell_sums(np.zeros(4096, dtype=np.int64), values, 1) == [4096 * 2**53]
    assert credits.cell_sums(np.zeros(4096, dtype=np.int64), -values, 1) == [-4096 * 2**53]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 7), st.integers(-(2**62), 2**62), st.integers(0, 40)), max_size=60),
    st.booleans(),
)
def test_touch_order_groups_conversions_and_sorts_by_the_keys(rows, narrow):
    """Packed into one integer (narrow keys) or sorted key by key (wide ones): the same order of distinct keys."""
    conversion = np.array([r[0] for r in rows], dtype=np.int64)
    at = np.array([r[1] % 1000 if narrow else r[1] for r in rows], dtype=np.int64)
    tie = np.array([r[2] for r in rows], dtype=np.int64)
    order = credits.touch_order(conversion, (at, tie))
    assert sorted(order.tolist()) == list(range(len(rows)))
    seen = conversion[order]
    first = {c: seen.tolist().index(c) for c in set(seen.tolist())}
    for c in first:  # each conversion's rows are adjacent
        assert (seen[first[c] : first[c] + (seen == c).sum()] == c).all()
    several = [c for c in first if (conversion == c).sum() > 1]
    for c in several:
        mine = order[seen == c]
        keys = list(zip(at[mine].tolist(), tie[mine].tolist(), strict=True))
        assert keys == sorted(keys)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(0, 12)), min_size=1, max_size=8)
)
def test_apportion_equals_largest_remainders_with_ties(conversions):
    """Small integer weights make equal remainders common: every tie goes to the earlier touch, whatever the size."""
    weights = [[p / sum(parts) for p in parts] for parts, _ in conversions]
    w = np.array([x for ws in weights for x in ws])
    total = np.array([t for (parts, t) in conversions for _ in parts], dtype=np.int64)
    seg = credits.Segments.of(np.repeat(np.arange(len(conversions)), [len(p) for p, _ in conversions]))
    want = [s for ws, (_, t) in zip(weights, conversions, strict=True) for s in apportion(t, ws)]
    assert credits.apportion(total, w, seg).tolist() == want


def test_apportion_of_three_gives_two_units_past_the_later_of_two_equal_smallest():
    # remainders 0.6, 0.6, 0.8 with two units left: the smallest tie, and the later of them gets nothing
    w = np.array([0.12, 0.12, 0.76])
    seg = credits.Segments.of(np.zeros(3, dtype=np.int64))
    assert credits.apportion(np.full(3, 5, dtype=np.int64), w, seg).tolist() == apportion(5, list(w)) == [1, 0, 4]


@given(
    st.lists(
        st.tuples(st.lists(st.floats(0, 1.5), min_size=1, max_size=6), st.integers(0, 2**53)), min_size=1, max_size=6
    )
)
@example([([1.0, 1.5], 3_602_879_701_896_397)])  # floors adding up past 2^53: a float sum of them was a unit off
def test_apportion_adds_up_to_the_total_with_every_share_of_its_sign_whatever_the_weights(conversions):
    """Weights adding up to more or less than 1 (as float rounding near 2^53 makes them, much magnified) leave as many
    units as touches or more, or fewer than none: the shares still add up to the total, none below 0."""
    w = np.array([x for parts, _ in conversions for x in parts])
    total = np.array([t for (parts, t) in conversions for _ in parts], dtype=np.int64)
    seg = credits.Segments.of(np.repeat(np.arange(len(conversions)), [len(p) for p, _ in conversions]))
    got = credits.apportion(total, w, seg).tolist()
    assert got == [s for parts, t in conversions for s in apportion(t, parts)]
    assert min(got) >= 0
    at = 0
    for parts, t in conversions:
        assert sum(got[at : at + len(parts)]) == t
        at += len(parts)


def test_apportion_takes_an_excess_from_the_smallest_remainders_but_never_below_zero():
    # floors 0, 6, 6 of a total of 10: two units too many. The smallest remainder (1e-19) is a touch at 0: the two
    # others give one each
    w = np.array([1e-20, 0.65, 0.65])
    seg = credits.Segments.of(np.zeros(3, dtype=np.int64))
    assert credits.apportion(np.full(3, 10, dtype=np.int64), w, seg).tolist() == apportion(10, list(w)) == [0, 5, 5]


#: Conversions (touches, total) for `even_shares`: every size up to `MAX_TOUCHES`, totals small, up to its limit,
#: and multiples (whose float floors are exact or one short).
even_conversions = st.lists(
    st.tuples(
        st.integers(1, MAX_TOUCHES),
        st.one_of(
            st.integers(0, 2000),
            st.integers(0, credits.EVEN_LIMIT - 1),
            st.tuples(st.integers(1, 2**20), st.integers(1, 500)).map(lambda t: t[0] * t[1]),  # multiples
        ),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVEN), even_conversions)
def test_even_shares_equal_apportion_of_the_models_weights(model, conversions):
    """Linear's and position-based's shares without a sort are `apportion`'s, float floors and ties included."""
    size = np.array([n for n, _ in conversions], dtype=np.int64)
    total = np.array([t for _, t in conversions], dtype=np.int64)
    seg = credits.Segments.of(np.repeat(np.arange(len(conversions)), size))
    touches = Touches(
        seg.of_row, np.zeros(len(seg.of_row), np.int64), np.zeros(len(seg.of_row), bool), seg.pos, seg.pos
    )
    w = credits.weights(touches, seg, model, HALF_LIFE)
    want = credits.apportion(total[seg.of_row], w, seg)
    got = credits.even_shares(total, size, seg.start, seg.of_row, seg.pos, model)
    assert got.tolist() == want.tolist()
    assert np.add.reduceat(got, seg.start).tolist() == total.tolist()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVEN), even_conversions)
def test_even_shares_equal_the_plain_largest_remainders(model, conversions):
    """`even_shares` against the plain per-conversion computation, not `apportion` (which it shares arithmetic
    with): float floors, remainders and ties to the earlier touch, for every size up to `MAX_TOUCHES`."""
    size = np.array([n for n, _ in conversions], dtype=np.int64)
    total = np.array([t for _, t in conversions], dtype=np.int64)
    seg = credits.Segments.of(np.repeat(np.arange(len(conversions)), size))
    got = credits.even_shares(total, size, seg.start, seg.of_row, seg.pos, model)
    assert got.tolist() == [s for n, t in conversions for s in apportion(t, even_weights(model, n))]
