"""The compiled attribution kernels (_attribution.c, _attribution_bound.c).

credit_sums and attribution.bounded make the calls, beside their numpy twins.
"""

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]

SOURCE_SHA256: str

def credit_sums(
    conversion: Ints,
    ts_us: Ints,
    code: Ints,
    conv_cents: Ints,
    conv_brand: Ints,
    counted: npt.NDArray[np.uint8],
    lookup: Ints,
    click_from: int,
    brand_cells: int,
    none_group: int,
    cells: int,
    model: int,
    click_over_view: bool,
    half_life: float,
    threads: int,
    /,
) -> tuple[bytes, bytes]: ...
def bound(
    who: Ints,
    ts_us: Ints,
    value: npt.NDArray[np.float64],
    lo: float,
    hi: float,
    people: int,
    cap: int,
    person_cents: int,
    counted: npt.NDArray[np.uint8],
    out: Ints,
    threads: int,
    /,
) -> None: ...
