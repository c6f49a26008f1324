"""Noise for integer counts: OpenDP's discrete Laplace, and what its scale means for error bars.

Guarantee: `DiscreteLaplace.release(counts, sensitivity, epsilon)` is epsilon-DP for a vector of integer counts
whose L1 sensitivity is `sensitivity`; the scale is sensitivity / epsilon and OpenDP's own privacy map is checked
to agree before any noise is drawn. Samples come from OpenDP's sampler (exact, integer), never from numpy or
`random`, whose floating-point samplers leak.
"""

from __future__ import annotations

import math
from typing import Protocol

import opendp.prelude as dp

dp.enable_features("contrib")


class NoiseMechanism(Protocol):
    """Adds calibrated noise to a vector of integer counts."""

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        """Noisy counts and the scale used."""
        ...


def variance(scale: float) -> float:
    """Variance of the discrete Laplace distribution with this scale: 2a / (1 - a)^2, a = exp(-1/scale).

    Computed with expm1 so that it stays finite and accurate for any positive scale, however large.
    """
    if scale <= 0:
        return 0.0
    one_minus_a = -math.expm1(-1.0 / scale)
    if one_minus_a == 0.0:  # 1/scale below the float resolution: the limit 2 scale^2
        return 2.0 * scale * scale
    return 2 * (1 - one_minus_a) / one_minus_a**2


def error_95(scale: float) -> int:
    """The smallest t with P(|noise| > t) <= 5%: P(|X| > t) = 2 a^(t+1) / (1 + a), with ln a = -1/scale."""
    return error_bound(scale, 0.05)


def error_bound(scale: float, alpha: float) -> int:
    """The smallest t with P(|noise| > t) <= alpha (exact for discrete Laplace, as in `error_95`)."""
    if scale <= 0:
        return 0
    a = math.exp(-1.0 / scale)
    t = -scale * math.log(alpha * (1 + a) / 2) - 1
    return max(0, math.ceil(t - 1e-9))


class DiscreteLaplace:
    """OpenDP's discrete Laplace mechanism on vectors of integers."""

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        """Add noise of scale sensitivity / epsilon to each count."""
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError("epsilon must be a positive finite number")
        scale = sensitivity / epsilon
        meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale)
        if meas.map(sensitivity) > epsilon * (1 + 1e-9):
            raise ArithmeticError("OpenDP's privacy map disagrees with the requested epsilon")
        return list(meas(list(counts))), scale
