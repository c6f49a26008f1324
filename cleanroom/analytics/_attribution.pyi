"""The compiled attribution credits (_attribution.c): see credit_sums for the calls and the numpy twin."""

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
