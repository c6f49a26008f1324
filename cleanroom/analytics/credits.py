"""Attribution's credits, vectorised: from the touches DuckDB returned (in any order) to exact integer shares per cell.

Why here and not in SQL: the credit of a touch depends on its conversion's other touches (its position, how many
there are, the newest one's time, the remainders of the others when integer shares are apportioned). In SQL that
took six window functions over the touches, each a sort of them, and made attribution 3-7x a plain join of the
same rows. The touches are few (a conversion has about as many as the exposures in its lookback window), so numpy
puts them in order once (`touch_order`: only the touches of conversions with several) and computes every model's
shares over the ordered arrays in a handful of passes.

The rules (the module docstring of `attribution` states them as promises) are exactly those of the plain-Python
reference in tests/system/analytics/test_attribution.py: touches ordered by time, an impression before a click at
the same instant, then campaign and channel; with click-over-view, a conversion with any click keeps its clicks
only; the latest `MAX_TOUCHES` are credited; weights per model; integer shares by largest remainder (ties by
position), so each conversion hands out exactly 1000 thousandths and exactly |cents| cents with the sign of its
value. Every sum here is exact: per-cell totals are accumulated as Python integers (no 64-bit overflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cleanroom_client.policy import MAX_SENSITIVITY

from ..errors import InternalError

#: Thousandths of a conversion each conversion hands out.
MILLI = 1000
#: Most touchpoints credited per conversion (the latest ones).
MAX_TOUCHES = 100
MICROSECONDS_PER_DAY = 86_400_000_000
#: The most |cents| one conversion may carry: the policy keeps every sensitivity, hence every conversion's cents,
#: within MAX_SENSITIVITY (2^53). Beyond it float products of the weights lose whole units and 64-bit sums can
#: overflow, so the credits and the bound refuse such a value (`check_cents`; the C kernel's MAX_CENTS is the same).
MAX_CENTS = MAX_SENSITIVITY

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Touches:
    """One row per (conversion, qualifying touch), sorted by conversion then by the touch order above.

    `conversion`: any integer identifying the conversion (rows of one conversion are adjacent); `at`: the touch's
    time in microseconds; `click`; `cell`: the index of the touch's cell in the flattened histogram; `cents`: the
    conversion's whole value in cents (rounded toward zero, sign included), repeated on each of its touches.
    """

    conversion: Ints
    at: Ints
    click: npt.NDArray[np.bool_]
    cell: Ints
    cents: Ints

    def take(self, keep: npt.NDArray[np.bool_] | Ints) -> Touches:
        """The rows where `keep` holds (or the rows it numbers), in order."""
        return Touches(self.conversion[keep], self.at[keep], self.click[keep], self.cell[keep], self.cents[keep])

    def after(self, row: int) -> Touches:
        """The rows from `row` on (views, no copy)."""
        return Touches(self.conversion[row:], self.at[row:], self.click[row:], self.cell[row:], self.cents[row:])


@dataclass(frozen=True)
class Segments:
    """Where each conversion's rows start, each row's conversion (0-based, dense), and each conversion's size.

    `pos` and `n`: each row's 0-based position within its conversion and its conversion's size (computed once: every
    model's weights and both apportionings read them).
    """

    start: Ints
    of_row: Ints
    size: Ints
    pos: Ints
    n: Ints

    @staticmethod
    def of(conversion: Ints) -> Segments:
        """The segments of sorted conversion ids."""
        # in place where it can (a new array of the touches' length costs as much as the arithmetic on it)
        first = np.ones(len(conversion), dtype=bool)
        np.not_equal(conversion[1:], conversion[:-1], out=first[1:])
        start = np.flatnonzero(first).astype(np.int64, copy=False)
        of_row = np.cumsum(first, dtype=np.int64)
        of_row -= 1
        size = np.diff(start, append=len(conversion))
        pos = np.arange(len(conversion), dtype=np.int64)
        pos -= start[of_row]
        return Segments(start, of_row, size, pos, size[of_row])

    def after(self, row: int) -> Segments:
        """The segments of the rows from `row` on, which must start a segment (views of these arrays, no copy)."""
        first = int(self.of_row[row]) if row < len(self.of_row) else len(self.start)
        return Segments(
            self.start[first:] - row, self.of_row[row:] - first, self.size[first:], self.pos[row:], self.n[row:]
        )

    def position(self) -> Ints:
        """Each row's 0-based position within its conversion."""
        return self.pos


def credited(touches: Touches, click_over_view: bool) -> tuple[Touches, Segments]:
    """The touches that get credit, and their segments.

    Clicks only where a conversion has one (with click-over-view), the latest 100.
    """
    seg = Segments.of(touches.conversion)
    if click_over_view and len(touches.conversion):
        any_click = np.logical_or.reduceat(touches.click, seg.start)
        keep = touches.click | ~any_click[seg.of_row]
        if not keep.all():
            touches = touches.take(keep)
            seg = Segments.of(touches.conversion)
    if len(seg.size) and seg.size.max() > MAX_TOUCHES:
        touches = touches.take(seg.pos >= seg.n - MAX_TOUCHES)
        seg = Segments.of(touches.conversion)
    return touches, seg


def weights(touches: Touches, seg: Segments, model: str, half_life_days: float) -> Floats:
    """Each credited touch's share of its conversion (they add up to 1 per conversion, up to rounding)."""
    n, pos = seg.n, seg.pos
    last = pos == n - 1
    if model == "last_touch":
        return last.astype(np.float64)
    if model == "first_touch":
        return (pos == 0).astype(np.float64)
    if model == "linear":
        return 1.0 / n.astype(np.float64)
    if model == "time_decay":
        newest = touches.at[seg.start + seg.size - 1]  # sorted by time: the last touch is the newest
        # newest - time is >= 0 but may pass 2^63 for times far apart: unsigned, it is exact (as in the C kernel)
        age_days = (newest[seg.of_row] - touches.at).view(np.uint64) / MICROSECONDS_PER_DAY
        decay = np.exp2(-age_days / half_life_days)
        return decay / np.add.reduceat(decay, seg.start)[seg.of_row]
    if model == "position_based":
        end, middle = position_weights(n)
        return np.where((pos == 0) | last, end, middle)
    raise ValueError(f"unknown model {model!r}")


def position_weights(n: Ints) -> tuple[Floats, Floats]:
    """Position-based weights for conversions of n touches: each end's, and each middle touch's.

    An end gets 0.4 (0.5 of two, all of one), the touches between share 0.2: the one place they are computed, so
    `even_shares` multiplies exactly the weights `weights` gives `apportion`.
    """
    end = np.where(n == 2, 0.5, np.where(n == 1, 1.0, 0.4))
    return end, 0.2 / np.maximum(n - 2, 1)


def check_cents(cents: Ints) -> None:
    """Refuses cents beyond `MAX_CENTS` (no policy allows them): InternalError, after the budget was charged."""
    if len(cents) and (int(cents.min()) < -MAX_CENTS or int(cents.max()) > MAX_CENTS):
        raise InternalError("values outside the declared domains reached an aggregate")


def floors(w: Floats, total: Ints) -> tuple[Floats, Floats]:
    """Each share's exact amount w x total in floating point, split into its floor and its remainder.

    The one float computation the largest-remainder order rests on: `apportion` and `even_shares` both take it
    from here, so their floors, leftovers and ties agree to the last bit.
    """
    exact = w * total
    floor = np.floor(exact)
    return floor, exact - floor


def apportion(total: Ints, w: Floats, seg: Segments) -> Ints:
    """Integer shares of each conversion's `total` (same on all its rows) by weight: floors, then largest remainders.

    The shares of one conversion add up to exactly its total; the leftover units go to the largest remainders,
    ties to the earlier position (as `apportion` in the reference). Near 2^53 float rounding of the products can
    leave as many units as touches or more, or fewer than none (time decay's weights): then `whole_rounds`.
    """
    floor, rest = floors(w, total)
    shares = floor.astype(np.int64)
    # per conversion (what is left of its total, and which conversions have any) rather than per row: the masks
    # over every row cost more than the apportioning
    left = total[seg.start] - np.add.reduceat(shares, seg.start)  # integers: a float sum past 2^53 is inexact
    odd = np.flatnonzero((left < 0) | (left >= seg.size))
    if len(odd):
        whole_rounds(shares, rest, seg, left[odd], odd)
        left[odd] = 0
    pending = left > 0
    if not pending.any():
        return shares
    # A conversion of two touches has at most one unit left (its two remainders add up to less than 2): it goes to
    # the larger remainder, the first touch on a tie. One of three touches has one or two left: to the largest
    # remainder (the earliest on a tie), or to all but the smallest (the latest on a tie loses). Most conversions
    # with several touches have two or three, so only the rest are sorted (the sort was most of time decay's
    # cost, whose remainders are rarely zero).
    two = pending & (seg.size == 2)
    first = seg.start[two]
    to_first = rest[first] >= rest[first + 1]
    shares[first] += to_first
    shares[first + 1] += ~to_first
    three = pending & (seg.size == 3)
    first = seg.start[three]
    if len(first):
        r0, r1, r2 = (rest[first + k] for k in range(3))
        one = left[three] == 1
        top = np.where((r0 >= r1) & (r0 >= r2), 0, np.where(r1 >= r2, 1, 2))
        bottom = np.where((r2 <= r1) & (r2 <= r0), 2, np.where(r1 <= r0, 1, 0))
        for k in range(3):
            shares[first + k] += np.where(one, top == k, bottom != k)
    others = pending & ~two & ~three
    if not others.any():
        return shares
    rows = np.flatnonzero(others[seg.of_row])
    # by conversion, then the larger remainder; the sort is stable, so a tie keeps the earlier position
    order = rows[np.lexsort((-rest[rows], seg.of_row[rows]))]
    of_row = seg.of_row[order]
    first_row = np.ones(len(order), dtype=bool)
    first_row[1:] = of_row[1:] != of_row[:-1]
    starts = np.flatnonzero(first_row)
    rank = np.arange(len(order)) - starts[np.cumsum(first_row) - 1]
    shares[order] += (rank < left[of_row]).astype(np.int64)
    return shares


def whole_rounds(shares: Ints, rest: Floats, seg: Segments, left: Ints, conversions: Ints) -> None:
    """Gives the `left` units of each of `conversions` (their indices in `seg`), in place, as the C kernel does.

    For the rare conversion whose floors leave a unit or more per touch, or take more than the total (float
    rounding of w x total near 2^53): whole rounds to every touch, then the rest one unit each by the
    largest-remainder order (ties to the earlier position); or, for an excess, whole rounds from every share above
    0 (at most the least of them each), then a unit each from the smallest remainders up (ties: the later position
    first), never from a share at 0. So the shares add up to the total exactly and none is below 0 (the sign of the
    value), whatever the weights. One conversion at a time: they are a handful.
    """
    for c, units in zip(conversions.tolist(), left.tolist(), strict=True):
        start, n = int(seg.start[c]), int(seg.size[c])
        rows = (start + np.argsort(-rest[start : start + n], kind="stable")).tolist()
        if units > 0:
            shares[start : start + n] += units // n
            shares[rows[: units % n]] += 1
        while units < 0:
            own = shares[start : start + n]  # a view: the rounds below change `shares`
            above = int((own > 0).sum())
            whole = min(-units // above, int(own[own > 0].min()))
            own[own > 0] -= whole
            units += whole * above
            for row in reversed(rows) if whole == 0 else ():
                if units < 0 and shares[row] > 0:
                    shares[row] -= 1
                    units += 1


#: The largest |total| `even_shares` takes (below it, the float products of the weights are within 2^-5 of the
#: exact ones, so each conversion's leftover units are between 0 and its touches: `even_shares` is exact).
EVEN_LIMIT = 2**40


def even_shares(total: Ints, size: Ints, start: Ints, of_row: Ints, pos: Ints, model: str) -> Ints:
    """`apportion`'s shares for linear or position-based weights, with no segments' sums and no sort.

    Why it can: these models give a conversion's touches at most two distinct weights (linear 1/n each; position-
    based 0.4 at both ends and 0.2/(n-2) between them, or 0.5 each of two), so the float products `w x total`,
    their floors and remainders are computed once per conversion from (total, n), by the functions `weights` and
    `apportion` use (`position_weights`, `floors`), and the largest-remainder order is known without sorting: the
    larger of the two remainders first, ties (and equal weights) by position. Each row's share is its floor plus
    one when its rank in that order is below the conversion's leftover units, which are `apportion`'s.

    `total`, `size` and `start`: per conversion, 0 <= total < `EVEN_LIMIT`, size >= 1, its first row; `of_row` and
    `pos`: each row's conversion (an index into them) and its position in it. The property tests in
    tests/unit/cleanroom/analytics/test_credits.py check it against `apportion` and against the plain
    per-conversion computation for every size up to `MAX_TOUCHES`, totals up to the limit and their multiples.
    """
    if model == "linear":
        # every row of a conversion has the same remainder: the leftover units go to the first positions. The float
        # floor of total/n is the integer one, or one less when n divides total (then every row gets a unit back)
        quotient, left = np.divmod(total, size)
        return quotient[of_row] + (pos < left[of_row])
    if model != "position_based":
        raise ValueError(f"even_shares has no rule for {model!r}")
    end, middle = position_weights(size)
    (end_floor, end_rest), (middle_floor, middle_rest) = floors(end, total), floors(middle, total)
    ends = np.minimum(size, 2)
    left = total - ends * end_floor.astype(np.int64) - (size - ends) * middle_floor.astype(np.int64)
    # ranks in the largest-remainder order (ties, and equal remainders, by position): with the ends' remainder the
    # larger, the first end 0, the last 1, a middle its position + 1; with the middles' the larger, a middle its
    # position - 1, the first end n - 2, the last n - 1; on a tie, the position. The ends' are per conversion.
    order = np.sign(end_rest - middle_rest).astype(np.int64)  # 1: ends first, -1: middles first
    shares = middle_floor.astype(np.int64)[of_row] + (pos + order[of_row] < left[of_row])
    end_floor_int = end_floor.astype(np.int64)
    shares[start] = end_floor_int + ((order < 0) * (size - 2) < left)
    shares[start + size - 1] = end_floor_int + (size - 1 - (order > 0) * (size - 2) < left)
    return shares


def credit(touches: Touches, model: str, click_over_view: bool, half_life_days: float) -> tuple[Ints, Ints, Ints]:
    """Per credited touch: its cell, thousandths of a conversion and cents (with the sign of the value)."""
    touches, seg = credited(touches, click_over_view)
    if len(touches.conversion) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if model in ("last_touch", "first_touch"):  # one touch takes all: nothing to apportion
        whole = weights(touches, seg, model, half_life_days).astype(bool)
        return touches.cell, whole * np.int64(MILLI), whole * touches.cents
    # a conversion of one touch gives it everything (whatever the weights, its shares add up to the whole): only
    # the rows from the first conversion with several on are weighed and apportioned. `touches_of` puts those of
    # conversions with one first, so that is a slice (in another order, any conversion of one after it is weighed
    # and gets the whole all the same)
    several = np.flatnonzero(seg.size > 1)
    milli, cents = np.full(len(touches.conversion), MILLI, dtype=np.int64), touches.cents.copy()
    if len(several) == 0:
        return touches.cell, milli, cents
    row = int(seg.start[several[0]])
    tail, amount = seg.after(row), np.abs(touches.cents[row:])
    if model in ("linear", "position_based") and int(amount.max()) < EVEN_LIMIT:
        amount = amount[tail.start]
        args = (tail.size, tail.start, tail.of_row, tail.pos, model)
        milli[row:] = even_shares(np.full(len(tail.size), MILLI, dtype=np.int64), *args)
        cents[row:] = np.sign(cents[row:]) * even_shares(amount, *args)
        return touches.cell, milli, cents
    part = touches.after(row)
    w = weights(part, tail, model, half_life_days)
    milli[row:] = apportion(np.full(len(w), MILLI, dtype=np.int64), w, tail)
    cents[row:] = np.sign(part.cents) * apportion(amount, w, tail)
    return touches.cell, milli, cents


def cell_sums(cell: Ints, values: Ints, cells: int) -> list[int]:
    """Exact per-cell sums of int64 values, as Python integers (64-bit partial sums could overflow).

    Each value is split into its high and low 32 bits; the low parts of fewer than 2^31 rows and the high parts of
    values below 2^53 (the largest a conversion carries) sum within int64.
    """
    high = values >> 32
    low = values & 0xFFFFFFFF  # values - (high << 32): the arithmetic shift floors, so this is in [0, 2^32)
    if cells == 1:
        return [int(high.sum()) * 2**32 + int(low.sum())]
    sums_high = np.zeros(cells, dtype=np.int64)
    sums_low = np.zeros(cells, dtype=np.int64)
    np.add.at(sums_high, cell, high)
    np.add.at(sums_low, cell, low)
    return [int(h) * 2**32 + int(lo) for h, lo in zip(sums_high.tolist(), sums_low.tolist(), strict=True)]


def touch_order(conversion: Ints, keys: Sequence[npt.NDArray[np.generic]]) -> Ints:
    """A permutation that puts each conversion's rows together, sorted by the integer `keys` (most significant first).

    Rows equal in every key may come in either order. Most conversions have one touch: their rows come first, in the
    order they were (so `credit` weighs the rest as one slice), and only the rows of conversions with several are
    sorted (conversion ids are small integers, so counting them is one pass, no sort). Those are sorted by one
    integer, the conversion's rank among them and the keys packed into 63 bits, when they fit (one sort instead of
    one per key: keys relative to the conversion, such as a touch's time less the conversion's, are narrow);
    otherwise by each key in turn.
    """
    if len(conversion) == 0:
        return np.zeros(0, dtype=np.int64)
    # per conversion, one byte (gathered per row at random: a table of a megabyte stays in cache, one of counts
    # does not) and a 32-bit rank (cumulated in a quarter of the time of a 64-bit one)
    several_of = np.bincount(conversion) > 1
    several = several_of[conversion]
    rows = np.flatnonzero(several)
    if len(rows) == 0:
        return np.arange(len(conversion), dtype=np.int64)
    rank: npt.NDArray[np.signedinteger] = np.cumsum(several_of, dtype=np.int32 if len(several_of) < 2**31 else np.int64)
    parts = [rank[conversion[rows]].astype(np.int64) - 1, *(np.asarray(k[rows], dtype=np.int64) for k in keys)]
    low = [int(p.min()) for p in parts]
    bits = [(int(p.max()) - lo).bit_length() for p, lo in zip(parts, low, strict=True)]
    if sum(bits) <= 63:  # then each range fits too: subtracting its minimum cannot overflow
        packed = parts[0]
        for part, lo, width in zip(parts[1:], low[1:], bits[1:], strict=True):
            packed = (packed << width) | (part - lo)
        within = np.argsort(packed)
    else:
        within = np.lexsort(tuple(reversed(parts)))
    return np.concatenate((np.flatnonzero(~several), rows[within]))


def touches_of(
    arrays: Mapping[str, npt.NDArray[np.generic]], cents: Ints, brand: Ints, at: Ints, brand_cells: int
) -> Touches:
    """`Touches` from the touches' columns (numpy, none NULL, in any order) and their conversions' cents and brand.

    `arrays`: `conversion` (an index into `cents`, `brand` and `at`: the conversion's cents, brand cell and time in
    microseconds), `ts_us`, `click`, `tie` (a rank that orders an impression before a click, then by campaign and
    channel) and `group` (the index into the group axis' domain). The rows are put in the touch order: by
    conversion, then time, then `tie`. `brand_cells`: the values on the second axis, 1 without one. A value outside
    a domain (-1) cannot occur, since uploads are checked against the domains; if one did, it fails after the
    budget was charged, as any failure after data is read (as `fill_histogram` does).
    """
    group = np.asarray(arrays["group"], dtype=np.int64)
    if (group < 0).any():
        raise InternalError("values outside the declared domains reached an aggregate")
    conversion = np.asarray(arrays["conversion"], dtype=np.int64)
    ts_us, click = np.asarray(arrays["ts_us"], dtype=np.int64), np.asarray(arrays["click"], dtype=bool)
    tie = np.asarray(arrays["tie"])  # any integer type: `touch_order` widens the rows it sorts
    before = at[conversion]
    np.subtract(ts_us, before, out=before)  # the time before the conversion: narrow
    order = touch_order(conversion, (before, tie))
    conversion = conversion[order]
    cell = group[order] if brand_cells == 1 else group[order] * brand_cells + brand[conversion]
    return Touches(conversion, ts_us[order], click[order], cell, cents[conversion])
