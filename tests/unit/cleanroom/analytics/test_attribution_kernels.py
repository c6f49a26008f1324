"""The compiled attribution kernels (`_attribution.c`) against their numpy twins and the plain reference.

`credit_sums.cell_totals` and `attribution.bounded` run in C where the extension is built (it is here: the first
test says so) and in numpy otherwise; both must release the same integers. Differential properties on random
touches in any order (every model, click-over-view, a brand axis, conversions over the cap, negative and 2^53-sized
cents, conversions of more than `MAX_TOUCHES` and of more than the insertion sort's 24 touches), on any number of
threads, and the refusals: a touch naming no conversion or outside the declared domains is an InternalError on
both paths. Time decay's exponentials are the C library's in C and numpy's in numpy, which may differ in the last
bit and so move a unit on a tie: compared within one unit per touch, and their sums exactly
(each conversion hands out exactly 1000 thousandths and its cents).
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from cleanroom.analytics import attribution, credit_sums, native
from cleanroom.analytics.credit_sums import Cells, Conversions, cell_totals
from cleanroom.analytics.credits import MAX_TOUCHES, MILLI
from cleanroom.errors import InternalError
from cleanroom_client.native import stale_reason

MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")
GROUPS, BRANDS = 3, 2  # the group axis: 2 campaigns and `none`; the brand axis: 2 values
#: codes: (click x 3 + campaign) for campaign 0..2 (0: outside the domain), so 6 codes; groups by campaign
LOOKUP = np.array([-1, 0, 1, -1, 0, 1], dtype=np.int64)
CELLS = Cells(LOOKUP, 3, BRANDS, GROUPS - 1)


def test_the_kernels_are_built_here():
    """Where a C compiler exists the install builds them (this machine has one): the numpy path is the fallback."""
    assert native.KERNELS is not None
    assert credit_sums.NATIVE


def touches_strategy(max_conversions: int = 8, max_touches: int = 40):
    touch = st.tuples(
        st.integers(0, max_conversions - 1),
        st.integers(0, 6),  # hours: ties are common
        st.sampled_from([1, 2, 4, 5]),  # codes inside the domain: impressions then clicks of campaigns 1, 2
    )
    return st.tuples(
        st.lists(touch, max_size=max_touches),
        st.lists(
            st.tuples(
                st.one_of(st.integers(-(2**20), 2**20), st.integers(-(2**53), 2**53)),
                st.integers(0, BRANDS - 1),
                st.booleans(),
            ),
            min_size=max_conversions,
            max_size=max_conversions,
        ),
    )


def arrays(rows, conversions):
    touches = {
        "conversion": np.array([r[0] for r in rows], dtype=np.int64),
        "ts_us": np.array([r[1] * 3_600_000_000 for r in rows], dtype=np.int64),
        "code": np.array([r[2] for r in rows], dtype=np.int32),
    }
    conv = Conversions(
        np.array([c for c, _, _ in conversions], dtype=np.int64),
        np.array([b for _, b, _ in conversions], dtype=np.int64),
        np.zeros(len(conversions), dtype=np.int64),
        np.array([k for _, _, k in conversions], dtype=bool),
    )
    return touches, conv


def close(a: list[int], b: list[int], slack: int) -> bool:
    return all(abs(x - y) <= slack for x, y in zip(a, b, strict=True))


@settings(max_examples=400, deadline=None)
@given(touches_strategy(), st.sampled_from(MODELS), st.booleans(), st.randoms(use_true_random=False))
def test_native_credits_equal_numpys_in_any_order(case, model, click_over_view, rnd):
    rows, conversions = case
    rnd.shuffle(rows)
    touches, conv = arrays(rows, conversions)
    got = cell_totals(touches, conv, CELLS, model, click_over_view, 2.0, native=True)
    want = cell_totals(touches, conv, CELLS, model, click_over_view, 2.0, native=False)
    if model == "time_decay":
        assert close(got[0], want[0], len(rows))
        assert close(got[1], want[1], len(rows))
    else:
        assert got == want
    counted = [k for k, (_, _, kept) in enumerate(conversions) if kept]
    assert sum(got[0]) == MILLI * len(counted)  # each counted conversion hands out exactly 1000
    assert sum(got[1]) == sum(conversions[k][0] for k in counted)  # and exactly its cents


def test_long_conversions_take_the_merge_sort_and_the_latest_hundred():
    rng = np.random.default_rng(7)
    rows = [
        (c, int(h), int(code))
        for c in range(6)
        for h, code in zip(
            rng.integers(0, 40, (5, 30, 99, 100, 101, 250)[c]), rng.choice([1, 2, 4, 5], 250), strict=False
        )
    ]
    rng.shuffle(rows)
    conversions = [
        (int(v), int(b), True) for v, b in zip(rng.integers(-(10**9), 10**9, 6), rng.integers(0, 2, 6), strict=True)
    ]
    touches, conv = arrays(rows, conversions)
    assert max(np.bincount(touches["conversion"])) > MAX_TOUCHES
    for model in MODELS:
        for click_over_view in (False, True):
            got = cell_totals(touches, conv, CELLS, model, click_over_view, 1.5, native=True)
            want = cell_totals(touches, conv, CELLS, model, click_over_view, 1.5, native=False)
            if model == "time_decay":
                assert close(got[0], want[0], len(rows))
                assert close(got[1], want[1], len(rows))
            else:
                assert got == want, (model, click_over_view)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_any_number_of_threads_gives_the_same_sums(monkeypatch, threads):
    rng = np.random.default_rng(threads)
    n, m = 20_000, 7_001
    rows = list(
        zip(
            rng.integers(0, m, n).tolist(),
            rng.integers(0, 48, n).tolist(),
            rng.choice([1, 2, 4, 5], n).tolist(),
            strict=True,
        )
    )
    conversions = list(
        zip(
            rng.integers(-(10**6), 10**6, m).tolist(),
            rng.integers(0, 2, m).tolist(),
            (rng.random(m) < 0.9).tolist(),
            strict=True,
        )
    )
    touches, conv = arrays(rows, conversions)
    want = {model: cell_totals(touches, conv, CELLS, model, True, 2.0, native=False) for model in MODELS}
    monkeypatch.setattr(native, "THREADS", threads)
    for model in MODELS:
        got = cell_totals(touches, conv, CELLS, model, True, 2.0, native=True)
        if model == "time_decay":
            assert close(got[0], want[model][0], 50)
            assert close(got[1], want[model][1], 50)
        else:
            assert got == want[model], model


@pytest.mark.parametrize("native_path", [True, False])
def test_a_touch_outside_the_domains_or_naming_no_conversion_is_an_internal_error(native_path):
    conversions = [(100, 0, True), (200, 1, True)]
    for rows in ([(0, 1, 3)], [(1, 2, 0)], [(0, 1, 6)], [(0, 1, -1)]):  # group -1 (twice), codes beyond the lookup
        touches, conv = arrays(rows, conversions)
        with pytest.raises(InternalError):
            cell_totals(touches, conv, CELLS, "linear", False, 2.0, native=native_path)
    touches, conv = arrays([(2, 1, 1)], conversions)  # conversion 2 of 2
    with pytest.raises(InternalError):
        cell_totals(touches, conv, CELLS, "linear", False, 2.0, native=native_path)


def test_the_native_path_refuses_a_touch_naming_no_conversion():
    touches, conv = arrays([(0, 1, 1), (5, 1, 1)], [(100, 0, True), (200, 1, True)])
    with pytest.raises(InternalError, match="names no conversion"):
        cell_totals(touches, conv, CELLS, "linear", False, 2.0, native=True)


# -- the contribution bound ----------------------------------------------------------------------------------------

conversions_strategy = st.lists(
    st.tuples(
        st.integers(0, 12),  # person
        st.integers(0, 5),  # time: ties are common
        st.one_of(st.integers(-3000, 3000), st.integers(-(2**53) + 100, 2**53 - 100)),  # about the cents
    ),
    max_size=80,
)
#: No bounds on the values: the tests' cents are what their values make.
UNBOUNDED = (-math.inf, math.inf)


def bound_both(rows, cap, person_cents, value_range=UNBOUNDED):
    """Both paths of `bounded` on rows of (person, time, about the cents): the value is that / 100, whose cents
    (trunc(value x 100)) may be a unit off it, the same on both paths."""
    cols = {
        "person": np.array([r[0] for r in rows], dtype=np.int64),
        "ts_us": np.array([r[1] for r in rows], dtype=np.int64),
        "value": np.array([r[2] for r in rows], dtype=np.float64) / 100,
        "row_platform": np.zeros(len(rows), dtype=np.int64),
    }
    return (
        attribution.bounded(cols, ["row_platform"], cap, person_cents, value_range, native=True),
        attribution.bounded(cols, ["row_platform"], cap, person_cents, value_range, native=False),
    )


def kept(b, rows):
    """Per person, the sorted (time, scaled cents) of the counted conversions: what the rest of the query reads."""
    out = defaultdict(list)
    for i, r in enumerate(rows):
        if b.counted[i]:
            out[r[0]].append((r[1], int(b.cents[i])))
    return {p: sorted(v) for p, v in out.items()}


@settings(max_examples=400, deadline=None)
@given(conversions_strategy, st.integers(1, 4), st.one_of(st.none(), st.integers(0, 10_000), st.integers(0, 2**53)))
def test_native_bound_equals_numpys(rows, cap, person_cents):
    got, want = bound_both(rows, cap, person_cents)
    assert got.counted.sum() == want.counted.sum()
    assert kept(got, rows) == kept(want, rows)  # equal conversions of one person may swap: they cannot show
    for convs in kept(got, rows).values():
        assert len(convs) <= cap
        if person_cents is not None:  # scaled when over the bound, so never above it
            assert sum(abs(c) for _, c in convs) <= person_cents


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 3000), st.sampled_from([0, 511, 512, 513, 1023, 1024, 2**20, 2**21 - 1])),
            st.integers(0, 5),
            st.one_of(st.integers(-3000, 3000), st.integers(-(2**53), 2**53)),
        ),
        max_size=120,
    ),
    st.integers(1, 4),
    st.one_of(st.none(), st.integers(0, 10_000)),
    st.sampled_from([1, 2, 3, 16, 200]),
)
def test_native_bound_equals_numpys_across_buckets_and_threads(rows, cap, person_cents, threads):
    """The three-phase bound (8df4876) groups people into buckets of 2^shift: people in the thousands and sparse ids
    up to 2^21 (buckets of up to 4,096 places, grouped by counting or, with few records, by sorting), on 1 to 200
    threads (more threads than conversions)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "THREADS", threads)
        got, want = bound_both(rows, cap, person_cents)
    assert kept(got, rows) == kept(want, rows)
    assert got.counted.sum() == want.counted.sum()


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_any_number_of_threads_bounds_the_same(monkeypatch, threads):
    rng = np.random.default_rng(threads)
    rows = list(
        zip(
            rng.integers(0, 3000, 9000).tolist(),
            rng.integers(0, 9, 9000).tolist(),
            rng.integers(-900, 9000, 9000).tolist(),
            strict=True,
        )
    )
    want = bound_both(rows, 2, 5000)[1]
    monkeypatch.setattr(native, "THREADS", threads)
    got = bound_both(rows, 2, 5000)[0]
    assert kept(got, rows) == kept(want, rows)


def test_a_person_with_many_conversions_takes_the_sort_and_keeps_the_earliest():
    rng = np.random.default_rng(3)
    rows = [(0, int(t), int(c)) for t, c in zip(rng.integers(0, 1000, 500), rng.integers(-500, 5000, 500), strict=True)]
    rows += [(1, 5, 10)] * 30  # all equal: any three of them
    got, want = bound_both(rows, 3, 2_000)
    assert kept(got, rows) == kept(want, rows)
    earliest = sorted((t, c) for p, t, c in rows if p == 0)[:3]
    assert [t for t, _ in kept(got, rows)[0]] == [t for t, _ in earliest]


@pytest.mark.parametrize("people", [2**50, 2**62, 2**63 - 1])
@pytest.mark.parametrize("threads", [1, 2, 16])
def test_the_bound_works_in_proportion_to_the_conversions_however_many_people(people, threads):
    """Red team: the kernel grouped each bucket of 2^shift people by counting over all its places, one array of
    2^shift + 1 integers a thread (shift = log2(people / 512)): a few conversions of people numbered up to 2^50 asked
    for 2^41 integers (MemoryError; at 2^38 people 4 GB, cleared once per bucket: a stall). `bounded` numbers people
    densely, so the server never asked; the kernel's own promise is now memory and work in proportion to the
    conversions: a bucket with many more places than records is grouped by sorting its records."""
    who = np.array([0, people - 1, 5, people - 1, people // 2, 5, 5], dtype=np.int64)
    ts = np.array([3, 1, 2, 0, 9, 2, 1], dtype=np.int64)
    value = np.array([4.0, -7.0, 2.5, 9.0, 0.125, 0.375, -0.25])
    counted, out, kernels = np.ones(len(who), np.uint8), np.zeros(len(who), np.int64), native.KERNELS
    assert kernels is not None
    kernels.bound(who, ts, value, *UNBOUNDED, people, 2, 1000, counted, out, threads)
    dense = np.unique(who, return_inverse=True)[1].astype(np.int64)
    cents = attribution.cents_of(value, UNBOUNDED)
    assert cents.tolist() == [400, -700, 250, 900, 12, 37, -25]
    want_counted, want_cents = attribution._bounded_numpy(dense, ts, cents, 2, 1000)
    assert counted.view(bool).tolist() == want_counted.tolist()
    assert out.tolist() == want_cents.tolist()


def test_an_extension_built_from_other_sources_is_not_used():
    old = types.ModuleType("cleanroom.analytics._attribution")
    old.SOURCE_SHA256 = "0" * 64  # type: ignore[attr-defined]
    old.bound = lambda: None  # type: ignore[attr-defined]
    beside = native.__file__
    assert (
        stale_reason(old, "bound", native.SOURCES, beside) == "was built from other sources than the C files beside it"
    )
    del old.bound
    assert stale_reason(old, "bound", native.SOURCES, beside) == "was built from an older source"
    assert native.KERNELS is not None
    assert stale_reason(native.KERNELS, "bound", native.SOURCES, beside) is None


# -- red team: the promises at the edges of the values, on both paths -----------------------------------------------

HOUR = 3_600_000_000
#: The most |cents| a conversion may carry (the policy keeps every sensitivity within 2^53): beyond it, refused.
LIMIT = 2**53


def one_conversion(ts_us: list[int], codes: list[int], cents: int, brand: int = 0):
    touches = {
        "conversion": np.zeros(len(ts_us), dtype=np.int64),
        "ts_us": np.array(ts_us, dtype=np.int64),
        "code": np.array(codes, dtype=np.int64),
    }
    conv = Conversions(
        np.array([cents], dtype=np.int64), np.array([brand], dtype=np.int64), np.zeros(1, np.int64), np.ones(1, bool)
    )
    return touches, conv


@pytest.mark.parametrize("sign", [1, -1])
def test_time_decay_near_2_53_hands_out_exactly_its_cents_on_both_paths(sign):
    """Float rounding of w x total can leave as many units as touches (or fewer than none): whole rounds, not lost.

    Two touches 124 hours apart, half-life a day, 8546380168746995 cents: the floors leave 2 units over. The numpy
    path gave one (a cent lost); both now give every unit, the larger remainder the odd one.
    """
    total = 8_546_380_168_746_995
    touches, conv = one_conversion([189 * HOUR, 313 * HOUR], [1, 2], sign * total)
    cells = Cells(LOOKUP, 3, 1, GROUPS - 1)
    got = cell_totals(touches, conv, cells, "time_decay", False, 1.0, native=True)
    want = cell_totals(touches, conv, cells, "time_decay", False, 1.0, native=False)
    assert sum(got[1]) == sum(want[1]) == sign * total
    assert got == want
    assert all(sign * c >= 0 for c in got[1])


def test_time_decay_with_totals_near_2_53_is_exact_on_both_paths():
    """Many conversions of 2 to 6 touches carrying between 2^52 and 2^53 cents: each hands out exactly its cents."""
    rng = np.random.default_rng(11)
    m = 3000
    size = rng.integers(2, 7, m)
    conversion = np.repeat(np.arange(m), size)
    touches = {
        "conversion": conversion,
        "ts_us": rng.integers(0, 30 * 24, len(conversion)) * HOUR,
        "code": rng.choice([1, 2, 4, 5], len(conversion)),
    }
    cents = rng.integers(2**52, LIMIT, m) * rng.choice([-1, 1], m)
    conv = Conversions(cents, rng.integers(0, BRANDS, m), np.zeros(m, np.int64), np.ones(m, bool))
    for native_path in (True, False):
        milli, money = cell_totals(touches, conv, CELLS, "time_decay", False, 1.0, native=native_path)
        assert sum(milli) == MILLI * m
        assert sum(money) == int(cents.sum()), native_path


@pytest.mark.parametrize("native_path", [True, False])
@pytest.mark.parametrize("cents", [LIMIT + 1, -(LIMIT + 1), 2**63 - 1, -(2**63)])
def test_cents_beyond_2_53_are_an_internal_error_on_both_paths(native_path, cents):
    """No policy lets a conversion carry more (its sensitivities are capped at 2^53): a value that does is refused,
    in the credits and in the bound, rather than overflowing (|INT64_MIN|, 64-bit sums of |cents|)."""
    touches, conv = one_conversion([0, HOUR], [1, 2], cents)
    with pytest.raises(InternalError):
        cell_totals(touches, conv, CELLS, "linear", False, 2.0, native=native_path)
    cols = {
        "person": np.zeros(2, np.int64),
        "ts_us": np.array([0, 1], np.int64),
        "value": np.array([0.05, float(cents)]),  # x 100: beyond 2^53
        "row_platform": np.zeros(2, np.int64),
    }
    with pytest.raises(InternalError):
        attribution.bounded(cols, ["row_platform"], 2, 1000, UNBOUNDED, native=native_path)
    # 2^53 itself is within the bounds
    touches, conv = one_conversion([0, HOUR], [1, 2], -LIMIT)
    assert sum(cell_totals(touches, conv, CELLS, "linear", False, 2.0, native=native_path)[1]) == -LIMIT


def test_a_persons_cents_beyond_64_bits_in_total_are_still_bounded():
    """1100 conversions of 2^53 cents, all kept: their |cents| add up past 2^63, and are still scaled to P."""
    rows = [(0, t, LIMIT - 100 if t % 2 else -(LIMIT - 100)) for t in range(1100)]
    got, want = bound_both(rows, 2000, 1_000_000)
    assert kept(got, rows) == kept(want, rows)
    assert 0 < sum(abs(c) for _, c in kept(got, rows)[0]) <= 1_000_000


@pytest.mark.parametrize("native_path", [True, False])
@pytest.mark.parametrize("brand", [-1, BRANDS, 2**40])
def test_a_brand_outside_its_axis_is_an_internal_error(native_path, brand):
    """A conversion's brand cell indexes the sums: outside [0, brand_cells) it is refused, never written elsewhere."""
    for ts_us in ([], [HOUR], [0, HOUR]):  # the `none` cell, one touch, two touches
        touches, conv = one_conversion(ts_us, [1, 2][: len(ts_us)], 100, brand)
        with pytest.raises(InternalError):
            cell_totals(touches, conv, CELLS, "linear", False, 2.0, native=native_path)


def test_the_kernels_refuse_shapes_whose_cells_overflow_64_bits():
    """`credit_sums` checks its groups against the cells without a product that could wrap around."""
    assert native.KERNELS is not None
    one = np.zeros(1, dtype=np.int64)

    def call(lookup: list[int], brand_cells: int, none_group: int, cells: int) -> None:
        assert native.KERNELS is not None
        native.KERNELS.credit_sums(
            one, one, one, one, one, np.ones(1, np.uint8), np.array(lookup, np.int64), 3, brand_cells, none_group,
            cells, 2, False, 2.0, 1,
        )  # fmt: skip

    with pytest.raises(ValueError, match="a group beyond the cells"):
        call([2**62], 2, 0, 2)  # (2^62 + 1) x 2 wraps to a negative
    with pytest.raises(ValueError, match="inconsistent arguments"):
        call([0], 4, 2**62 - 1, 4)  # 2^62 x 4 wraps to 0
    with pytest.raises(ValueError, match="inconsistent arguments"):
        call([0], 2**62, 1, 2**62)


@pytest.mark.parametrize("native_path", [True, False])
def test_time_decay_with_times_63_bits_apart_gives_the_newest_touch_everything(native_path):
    """The age of a touch is newest - its time, which overflows int64 for times at the ends: taken unsigned, exact."""
    touches, conv = one_conversion([-(2**62), 2**62], [1, 2], 12345)
    cells = Cells(LOOKUP, 3, 1, GROUPS - 1)
    milli, cents = cell_totals(touches, conv, cells, "time_decay", False, 2.0, native=native_path)
    assert (milli, cents) == ([0, MILLI, 0], [0, 12345, 0])


def test_adversarial_conversion_sizes_equal_numpys():
    """One conversion of 100k touches and many of exactly 24, 25, 100 and 101 (the sort's and the cut's edges)."""
    rng = np.random.default_rng(5)
    sizes = np.array([100_000] + [24, 25, 100, 101] * 50)
    conversion = np.repeat(np.arange(len(sizes)), sizes)
    touches = {
        "conversion": rng.permutation(conversion),
        "ts_us": rng.integers(0, 10, len(conversion)) * HOUR,  # ties in time everywhere
        "code": rng.choice([1, 2, 4, 5], len(conversion)),
    }
    m = len(sizes)
    conv = Conversions(
        rng.integers(-(10**12), 10**12, m), rng.integers(0, BRANDS, m), np.zeros(m, np.int64), np.ones(m, bool)
    )
    for model in MODELS:
        for click_over_view in (False, True):
            got = cell_totals(touches, conv, CELLS, model, click_over_view, 0.5, native=True)
            want = cell_totals(touches, conv, CELLS, model, click_over_view, 0.5, native=False)
            if model == "time_decay":
                assert close(got[0], want[0], m)
                assert close(got[1], want[1], m)
            else:
                assert got == want, (model, click_over_view)
            assert sum(got[0]) == MILLI * m
            assert sum(got[1]) == int(conv.cents.sum())


def test_queries_at_once_in_threads_equal_the_same_queries_one_at_a_time():
    """The server runs queries in a thread pool and the kernel releases the GIL: no state is shared between calls."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    cases: list[tuple[dict[str, np.ndarray], Conversions, str]] = []
    for _ in range(8):
        n, m = 30_000, 5_000
        touches = {
            "conversion": rng.integers(0, m, n),
            "ts_us": rng.integers(0, 48, n) * HOUR,
            "code": rng.choice([1, 2, 4, 5], n),
        }
        conv = Conversions(
            rng.integers(-(10**6), 10**6, m), rng.integers(0, BRANDS, m), np.zeros(m, np.int64), rng.random(m) < 0.9
        )
        cases.append((touches, conv, MODELS[len(cases) % len(MODELS)]))
    alone = [cell_totals(t, c, CELLS, model, True, 2.0, native=True) for t, c, model in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            at_once = list(pool.map(lambda case: cell_totals(case[0], case[1], CELLS, case[2], True, 2.0), cases))
            assert at_once == alone


REWRITTEN = """
import math
import threading
import numpy as np
from cleanroom.analytics.native import KERNELS

rng = np.random.default_rng(0)
n, m = 1_000_000, 50_000
lookup = np.array([-1, 0, 1, -1, 0, 1], dtype=np.int64)
conv, other = rng.integers(0, m, n), rng.integers(0, m, n)
ts, code = rng.integers(0, 48, n) * 3_600_000_000, rng.choice([1, 2, 4, 5], n).astype(np.int64)
who, people = rng.integers(0, m // 4, n), rng.integers(0, m // 4, n)
stop = threading.Event()


def rewrite():
    while not stop.is_set():
        conv[:] = other  # the same values elsewhere: the count per bucket changes under the kernel
        conv[:] = np.sort(other)
        who[:] = people
        who[:] = np.sort(people)
        lookup[1] = 10**15 - lookup[1]


thread = threading.Thread(target=rewrite)
thread.start()
refused = 0
for _ in range(12):
    try:
        KERNELS.credit_sums(
            conv, ts, code, np.ones(m, np.int64), np.zeros(m, np.int64), np.ones(m, np.uint8), lookup, 3, 1, 2, 3, 2,
            False, 2.0, 2,
        )
    except ValueError:
        refused += 1
    try:
        KERNELS.bound(
            who, ts, (ts % 1000).astype(float), -1e9, 1e9, m // 4, 2, 100, np.ones(n, np.uint8), np.zeros(n, np.int64),
            2,
        )  # fmt: skip
    except ValueError:
        refused += 1
stop.set()
thread.join()
print("done", refused)
"""


def test_arrays_rewritten_by_another_thread_during_a_call_are_refused_or_summed_never_written_beyond():
    """The kernels read the caller's arrays without the GIL: another thread may rewrite them meanwhile (the server
    never does). A conversion or person column whose counts per bucket change between the kernel's two passes
    wrote beyond its scratch (heap corruption, found with ASan); a group changed after its check indexed beyond the
    sums. Now the second pass stops where the first counted (ValueError) and the lookup is a checked copy."""
    import os
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", REWRITTEN], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("done")


def test_values_rewritten_during_the_bound_are_refused_never_left_unscaled():
    """Red team: the bound checked the cents once, then copied them into its records; cents another thread rewrote
    to -2^63 in between had |-2^63| wrap negative, the person's total came out below the bound and their 2^53-cent
    conversions were left unscaled (1 or 2 calls of these 80). The record's copy was then checked too; now the
    kernel takes the values and reads each once, into the cents it checks and keeps: a value rewritten to one
    beyond 2^53 cents is refused (ValueError) or not seen at all, never half seen."""
    import threading

    n = 300_000
    who = np.repeat(np.arange(n // 3), 3).astype(np.int64)
    ts = np.tile(np.arange(3), n // 3).astype(np.int64)
    good = np.tile(np.array([0.01, 9.0e13, 9.0e13]), n // 3)
    bad = good.copy()
    bad[0::3] = -math.inf
    cents = good.copy()
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            cents[:] = bad
            cents[:] = good

    kernels = native.KERNELS
    assert kernels is not None
    thread = threading.Thread(target=rewrite)
    thread.start()
    unscaled = 0
    try:
        for _ in range(80):
            out, counted = np.zeros(n, np.int64), np.ones(n, np.uint8)
            try:
                kernels.bound(who, ts, cents, *UNBOUNDED, n // 3, 3, 100, counted, out, 2)
            except ValueError:
                continue
            unscaled += int(np.bincount(who, weights=np.abs(out).astype(float)).max() > 100)
    finally:
        stop.set()
        thread.join()
    assert unscaled == 0
