"""Attribution's touches to exact per-cell totals: in the compiled `_attribution` extension, else in numpy.

Both paths follow the same rules (`credits`' module docstring; `attribution`'s states them as promises) and give the
same integers, except that time decay's exponentials are the C library's on one path and numpy's on the other, which
may differ in the last bit and so move a unit between two touches on a tie, or a few for cents near 2^53, where a
weight's last bit is worth a cent (the plain reference in the tests is Python's, as the C's). Each conversion still
hands out exactly its thousandths and cents on both paths. The native path exists for speed: it groups the touches
by conversion with a counting sort, orders each conversion's few touches, and apportions them one conversion at a
time on every core the query is given, with no array per step, where the numpy path sorts and gathers whole arrays
on one thread.

`NATIVE` says which path runs (`native` loads the extension).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ..errors import InternalError
from . import credits
from . import native as kernels
from .credits import MILLI

#: Whether attribution's credits run in the compiled extension (else in numpy), as loaded at import.
NATIVE: Final = kernels.KERNELS is not None
#: The models in the extension's numbering.
_MODELS: Final = ("last_touch", "first_touch", "linear", "time_decay", "position_based")


@dataclass(frozen=True)
class Conversions:
    """What the touches point into, per conversion: cents (scaled, signed), brand cell, time, whether it counts."""

    cents: credits.Ints
    brand: credits.Ints
    ts_us: credits.Ints
    counted: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Cells:
    """The histogram's shape as the touches' codes meet it.

    `lookup[code]` is a touch's group (-1 outside the domain), codes from `click_from` are clicks, `brand_cells`
    values on the second axis (1 without one), the group `none` at index `none_group`.
    """

    lookup: credits.Ints
    click_from: int
    brand_cells: int
    none_group: int

    @property
    def count(self) -> int:
        """The cells: groups x brand values."""
        return (self.none_group + 1) * self.brand_cells


def cell_totals(
    touches: Mapping[str, npt.NDArray[np.generic]],
    conversions: Conversions,
    cells: Cells,
    model: str,
    click_over_view: bool,
    half_life_days: float,
    native: bool = True,
) -> tuple[list[int], list[int]]:
    """Thousandths of a conversion and cents per cell, exact (Python integers), from the touches' statement.

    `touches`: `conversion` (an index into `conversions`), `ts_us` and `code` (any integer type), one row per
    (conversion, qualifying touch) in any order. Counted conversions with no touch go to their brand's `none` cell;
    conversions not counted add nothing. A touch naming no conversion or outside the declared domains, or a counted
    conversion's brand outside [0, brand_cells) or cents beyond `credits.MAX_CENTS`, raises InternalError on both
    paths (after the budget was charged, as any failure once data is read).
    """
    if native and kernels.KERNELS is not None:  # read at each call: a test may turn the kernels off
        return _native_totals(touches, conversions, cells, model, click_over_view, half_life_days)
    return _numpy_totals(touches, conversions, cells, model, click_over_view, half_life_days)


def _native_totals(
    touches: Mapping[str, npt.NDArray[np.generic]],
    conversions: Conversions,
    cells: Cells,
    model: str,
    click_over_view: bool,
    half_life_days: float,
) -> tuple[list[int], list[int]]:
    compiled = kernels.KERNELS
    assert compiled is not None

    def ints(a: npt.NDArray[np.generic]) -> credits.Ints:
        return np.ascontiguousarray(a, dtype=np.int64)

    try:
        milli, cents = compiled.credit_sums(
            ints(touches["conversion"]),
            ints(touches["ts_us"]),
            ints(touches["code"]),
            ints(conversions.cents),
            ints(conversions.brand),
            np.ascontiguousarray(conversions.counted, dtype=np.uint8),
            ints(cells.lookup),
            cells.click_from,
            cells.brand_cells,
            cells.none_group,
            cells.count,
            _MODELS.index(model),
            click_over_view,
            half_life_days,
            kernels.THREADS,
        )
    except ValueError as exc:
        raise InternalError(str(exc)) from None
    return _ints128(milli), _ints128(cents)


def _ints128(raw: bytes) -> list[int]:
    """Little-endian signed 128-bit integers, 16 bytes each."""
    return [int.from_bytes(raw[i : i + 16], "little", signed=True) for i in range(0, len(raw), 16)]


def _numpy_totals(
    touches: Mapping[str, npt.NDArray[np.generic]],
    conversions: Conversions,
    cells: Cells,
    model: str,
    click_over_view: bool,
    half_life_days: float,
) -> tuple[list[int], list[int]]:
    code = np.asarray(touches["code"])
    if len(code) and (int(code.min()) < 0 or int(code.max()) >= len(cells.lookup)):
        raise InternalError("values outside the declared domains reached an aggregate")
    credits.check_cents(conversions.cents[conversions.counted])
    if cells.brand_cells > 1:
        brands = conversions.brand[conversions.counted]
        if len(brands) and (int(brands.min()) < 0 or int(brands.max()) >= cells.brand_cells):
            raise InternalError("values outside the declared domains reached an aggregate")
    conversion = np.asarray(touches["conversion"], dtype=np.int64)
    if len(conversion) and (int(conversion.min()) < 0 or int(conversion.max()) >= len(conversions.counted)):
        raise InternalError("a touch names no conversion")  # as the kernel's phase 1: not numpy's IndexError
    ts_us = np.asarray(touches["ts_us"])
    untouched = conversions.counted.copy()
    untouched[conversion] = False
    kept = conversions.counted[conversion]  # (`touches_sql` joins the counted conversions only: no other has a touch)
    if not kept.all():
        conversion, code, ts_us = conversion[kept], code[kept], ts_us[kept]
    arrays = {
        "conversion": conversion,
        "ts_us": ts_us,
        "click": code >= cells.click_from,
        "tie": code,
        "group": cells.lookup[code],
    }
    rows = credits.touches_of(arrays, conversions.cents, conversions.brand, conversions.ts_us, cells.brand_cells)
    cell, milli, cents = credits.credit(rows, model, click_over_view, half_life_days)
    # thousandths: at most 1000 a row, so float64 sums of them are exact
    milli_sums = [int(x) for x in np.bincount(cell, weights=milli, minlength=cells.count)]
    cents_sums = credits.cell_sums(cell, cents, cells.count)
    none = cells.none_group * cells.brand_cells
    if cells.brand_cells > 1:
        brand = conversions.brand[untouched]
        counts = np.bincount(brand, minlength=cells.brand_cells).tolist()
    else:  # one cell: its count, and `cell_sums` reads no cells
        brand, counts = conversions.brand[:0], [int(untouched.sum())]
    for b, (count, total) in enumerate(
        zip(counts, credits.cell_sums(brand, conversions.cents[untouched], cells.brand_cells), strict=True)
    ):
        milli_sums[none + b] += MILLI * count
        cents_sums[none + b] += total
    return milli_sums, cents_sums
