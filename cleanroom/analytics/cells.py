"""Released cells and the arithmetic of their error bars.

Counts carry the exact 95% bound of their discrete Laplace noise. Derived values (shares, ratios, TGI) are
post-processing of noisy counts, so they cost no privacy; their 95% bounds come from the delta method with the
noise variances (1.96 standard deviations), and a derived value whose denominator is not positive is suppressed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Cell:
    """One released value: its group keys, the measure, the value, its 95% error bound, and suppression."""

    keys: tuple[str, ...]
    measure: str
    value: float
    error_95: float
    suppressed: bool

    def to_dict(self) -> dict[str, object]:
        """Plain data (for the audit digest)."""
        return {
            "keys": list(self.keys),
            "measure": self.measure,
            "value": self.value,
            "error_95": self.error_95,
            "suppressed": self.suppressed,
        }


def withheld(keys: tuple[str, ...], measure: str) -> Cell:
    """A suppressed cell: no value is released."""
    return Cell(keys, measure, 0.0, 0.0, True)


def share(part: float, total: float, cells_in_total: int, var: float) -> tuple[float, float] | None:
    """Share part / total, where total sums `cells_in_total` noisy cells (part among them), each of noise variance var.

    Returns the share and its 95% bound, or None when total is not positive.
    """
    if total <= 0:
        return None
    s = part / total
    v = ((1 - s) ** 2 * var + s**2 * (cells_in_total - 1) * var) / total**2
    return s, Z95 * math.sqrt(v)


def ratio(x: float, var_x: float, y: float, var_y: float) -> tuple[float, float] | None:
    """Ratio x / y for independent noisy x and y, with its 95% bound; None unless both are positive."""
    if x <= 0 or y <= 0:
        return None
    r = x / y
    return r, Z95 * r * math.sqrt(var_x / x**2 + var_y / y**2)
