"""The server's compiled attribution kernels (`_attribution.c`, `_attribution_bound.c`), when the install built them.

`attribution.bounded` (the contribution bound) and `credit_sums.cell_totals` (the credits) call them where they
exist and fall back to numpy otherwise, with the same results (`credit_sums` says where time decay may differ in
the last bit). `KERNELS` is None without a C compiler at install time, or when the extension was built from other
sources than the C files beside this module (an editable install not rebuilt: a warning says how to rebuild, as the
SDK does for its own extension).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Final

from cleanroom_client.native import stale_reason

#: The extension's C files in setup.py's order (SOURCES, then HEADERS): their SHA-256 is built into it.
SOURCES: Final = ("_attribution.c", "_attribution_bound.c", "_attribution.h")

_kernels: ModuleType | None
try:
    from . import _attribution as _kernels
except ImportError:  # no C compiler at install time: numpy
    _kernels = None
if _kernels is not None and (_stale := stale_reason(_kernels, "bound", SOURCES, __file__)):
    warnings.warn(
        f"cleanroom.analytics._attribution {_stale} and is not used (numpy runs instead): "
        "rebuild it with `pip install -e .` or `make install`",
        RuntimeWarning,
        stacklevel=1,
    )
    _kernels = None

#: The compiled kernels, or None (numpy runs).
KERNELS: Final = _kernels
#: Threads a kernel uses per query: the cores DuckDB's statements use too (at most four).
THREADS: Final = max(1, min(4, os.cpu_count() or 1))
