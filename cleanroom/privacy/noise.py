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


def _alpha(scale: float) -> float:
    return math.exp(-1.0 / scale)


def variance(scale: float) -> float:
    """Variance of the discrete Laplace distribution with this scale: 2a / (1 - a)^2, a = exp(-1/scale)."""
    a = _alpha(scale)
    return 2 * a / (1 - a) ** 2


def error_95(scale: float) -> int:
    """The smallest t with P(|noise| > t) <= 5%: P(|X| > t) = 2 a^(t+1) / (1 + a)."""
    a = _alpha(scale)
    if a <= 0.0:  # a scale so small that the noise is always 0
        return 0
    t = math.log(0.05 * (1 + a) / 2) / math.log(a) - 1
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
