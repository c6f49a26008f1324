"""Released cells and the arithmetic of their error bars.

Counts carry the exact 95% bound of their discrete Laplace noise, e95. Derived values (shares, ratios, TGI) are
post-processing of noisy counts, so they cost no privacy. Their bounds propagate the counts' e95 by the delta
method (first-order terms, combined in quadrature), not 1.96 standard deviations: the noise is discrete and
Laplace-shaped, and when one count dominates a derived value the normal multiplier would cover only about 93%.
With one dominant term this is the exact 95% bound; with several it is slightly conservative. A derived value
whose denominator is not positive is suppressed.

Shown values never leave the range the true value must lie in (post-processing of DP output, so free, and it
never moves a value away from the truth): counts, revenue and ROAS at >= 0 when the policy's value bounds are
non-negative, shares, rates, penetration and recall within [0, 1], means within the range their bounds allow. The
error bar is the unclamped one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Cell:
    """One released value: its group keys, the measure, the value, its 95% error bound, and suppression.

    A suppressed cell says why in `reason` (issue 31: never withheld without a reason), a sentence built from the
    request, the policy and released noisy values only, so saying it is post-processing and costs nothing.
    """

    keys: tuple[str, ...]
    measure: str
    value: float
    error_95: float
    suppressed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain data (for the audit digest); `reason` only when there is one, so older digests keep their form."""
        d: dict[str, object] = {
            "keys": list(self.keys),
            "measure": self.measure,
            "value": self.value,
            "error_95": self.error_95,
            "suppressed": self.suppressed,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


def withheld(keys: tuple[str, ...], measure: str, reason: str = "") -> Cell:
    """A suppressed cell: no value is released, only why (`reason`, e.g. `below_minimum_group(10)`)."""
    return Cell(keys, measure, 0.0, 0.0, True, reason)


def below_minimum_group(min_group: int) -> str:
    """The reason of a cell whose noisy count fell below the policy's minimum group size."""
    return f"below the minimum group of {min_group} (its noisy count is smaller)"


#: The reason of a derived cell whose denominator (a noisy count or total) is not positive.
NO_DENOMINATOR = "its denominator's noisy value is not positive"


def fraction(part: float, part_cells: int, rest: float, rest_cells: int, e95: float) -> tuple[float, float] | None:
    """The fraction part / (part + rest): part sums `part_cells` noisy cells, rest `rest_cells`, each bound e95.

    Returns the fraction (clamped to [0, 1]: post-processing, and the true value lies there) and its 95% bound, or
    None when the total is not positive. Callers pass cells clamped at 0, so part and rest are not negative.
    """
    total = part + rest
    if total <= 0:
        return None
    s = part / total
    return min(max(s, 0.0), 1.0), e95 * math.sqrt(part_cells * (1 - s) ** 2 + rest_cells * s**2) / total


def share(part: float, total: float, cells_in_total: int, e95: float) -> tuple[float, float] | None:
    """Share part / total, where total sums `cells_in_total` noisy cells (part among them), each with bound e95.

    Returns the share and its 95% bound, or None when total is not positive.
    """
    return fraction(part, 1, total - part, cells_in_total - 1, e95)


def quotient(x: float, ex: float, y: float, ey: float) -> tuple[float, float] | None:
    """The quotient x / y of independent noisy values with 95% bounds ex and ey (any x).

    None unless y > 0 and the quotient is finite.
    """
    if y <= 0 or not math.isfinite(x / y):
        return None
    r = x / y
    return r, math.hypot(ex / y, r * ey / y)  # hypot: no overflow from squaring, whatever the magnitudes


def ratio(x: float, ex: float, y: float, ey: float) -> tuple[float, float] | None:
    """Ratio x / y of independent noisy values with 95% bounds ex and ey; None unless both are positive."""
    if x <= 0 or y <= 0:
        return None
    return quotient(x, ex, y, ey)
