"""Privacy accounting for DP-SGD when neighbouring datasets differ by up to `group` label flips.

Adjacency. DP-SGD here samples each training example independently with probability q (Poisson sampling), clips
every per-example gradient to L2 norm C and adds N(0, (σC)^2 I) to the sum, for `steps` steps. Two datasets are
neighbours when they differ in the labels of at most `group` examples (the same examples, same features, same
positions): a flip is a REPLACE-ONE of one training example, so `group` flips are a group of `group` replace-ones.
The pairs below hold for any replace-one (any two gradients of norm at most C, a zero gradient among them), so
they also cover removing an example, as long as removing it is the same as replacing it by a zero-gradient one
(each step a sum of clipped gradients times a fixed constant). That covers what removing one users-table row does
to the lookalike training set with `group` = c + 1, c the join's stability (see `cleanroom.analytics.lookalike`).
ε is the smallest value with δ ≥ the hockey-stick divergence H_{e^ε} between the outputs on the two datasets, in
both directions.

Dominating pairs (σ in units of C, so the per-example sensitivity is 1):
  * One flip (replace-one), one step: a flip keeps the example's Poisson coin, so conditional on the common rest of
    the batch the step outputs q·N(g) + (1−q)·N(0) versus q·N(g') + (1−q)·N(0) with ‖g‖, ‖g'‖ ≤ 1 (noise σ);
    coordinates outside the plane of 0, g, g' are identical on both sides. Its worst case is g = −g' of norm 1: the
    pair q·N(−1, σ²) + (1−q)·N(0, σ²) versus q·N(1, σ²) + (1−q)·N(0, σ²), which is what dp_accounting builds for
    the Poisson-subsampled Gaussian under `NeighboringRelation.REPLACE_ONE` (`AdjacencyType.REPLACE` with
    `sampling_prob`), and what the independent replace-one figure rests on. We rely on dp_accounting for that
    reduction rather than proving it; a unit test checks numerically, in the plane, that no other g, g' gives a
    larger hockey-stick divergence at any ε tried. Since the pair dominates every step for every ε, it composes
    (adaptively) over `steps` by the PLD accountant: ε_R(δ).
  * `group` examples removed (or added), one step: the pair N(0, σ²) versus Σ_k Binom(group, q)(k)·N(k, σ²)
    (Ganesh 2024, "Tight group-level DP guarantees for DP-SGD with sampling via mixture of Gaussians"; vector
    gradients reduce to this scalar pair by Choquette-Choo et al. 2023, Cor. 4.7), built with dp_accounting's
    `from_mixture_gaussian_mechanism` for both the add and the remove direction and composed over `steps`: ε_G(δ),
    the larger of the two directions.

Bounds (each an upper bound on the ε of the adjacency above; `dpsgd_epsilon` returns the smaller of the two, for
group = 1 the first alone, which is the direct replace-one figure, and the first alone too while it is at most
`GROUP_CHAIN_FROM`, where the second has not been smaller in any setting tried and is costly to build):
  1. A chain of `group` single flips D = D_0 → D_1 → … → D_group = D'. The weak triangle inequality of the hockey-stick
     divergence, H_{e^(a+b)}(P‖R) ≤ H_{e^a}(P‖Q) + e^a·H_{e^b}(Q‖R), gives for ε_0 per link the pair
     (group·ε_0, δ_0·Σ_{i<group} e^(i·ε_0)) with ε_0 = ε_R(δ_0); we take the largest δ_0 (bisection) that meets δ.
  2. The chain D → D_mid (the `group` examples removed) → D' (added back with flipped labels): two group links,
     (ε_1 + ε_2, δ_1 + e^(ε_1)·δ_2), with a small search over the split of δ.
Both run in the direction D → D' and back, and each link uses a pair dominating both directions, so both are
symmetric. Every PLD is discretised pessimistically (dp_accounting's `pessimistic_estimate`, rounding privacy
losses up and counting truncated tails as infinite loss), so coarser intervals only raise ε: conservative, never
optimistic.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # dp_accounting (and scipy under it) loads when a lookalike is first accounted, not at startup
    from dp_accounting.pld import privacy_loss_distribution as pld

# Discretisation of the privacy loss (pessimistic, so coarser only over-states ε): 2e-3 keeps the replace-one PLD
# within ~0.001 of the fine figure; the group mixture is far costlier to build and gets 1e-2 (~+0.01 to +0.03).
REPLACE_INTERVAL = 2e-3
GROUP_INTERVAL = 1e-2
# The group chain is built only when the flip chain gives more than this: below it the flip chain was the smaller
# in every setting scanned (q 0.001-0.02, 50-400 steps, σ 0.7-5, group 2-8), and skipping a bound only raises ε.
GROUP_CHAIN_FROM = 4.0
# The noise multipliers that `calibrate_noise` searches (below 0.5 the PLDs get large and the ε useless anyway).
MIN_NOISE_MULTIPLIER = 0.5
MAX_NOISE_MULTIPLIER = 100.0
CALIBRATION_TOLERANCE = 1e-3  # relative, on the noise multiplier
_DELTA_SPLITS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_MAX_EPSILON = 300.0  # beyond this ε means nothing and e^ε overflows


@dataclass(frozen=True)
class DpSgdRun:
    """Everything but the noise that the ε of a DP-SGD run depends on, validated."""

    sample_rate: float
    steps: int
    delta: float
    group: int

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], not {self.sample_rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, not {self.steps}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), not {self.delta}")
        if self.group < 1:
            raise ValueError(f"group (label flips per neighbour) must be at least 1, not {self.group}")


@dataclass(frozen=True)
class NoisyDpSgdRun:
    """A DP-SGD run with its noise multiplier σ (noise standard deviation σ·C for clipping norm C)."""

    run: DpSgdRun
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be positive and finite, not {self.noise_multiplier}")


def dpsgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, group: int) -> float:
    """ε of `steps` Poisson-subsampled Gaussian steps (noise σ·C) for neighbours differing by ≤ `group` label flips.

    See the module docstring for the adjacency, the dominating pairs and why the figure is an upper bound. Returns
    `math.inf` when neither bound reaches `delta` below ε = 300.
    """
    return _epsilon(NoisyDpSgdRun(DpSgdRun(sample_rate, steps, delta, group), noise_multiplier))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, group: int) -> float:
    """The smallest noise multiplier (to a relative 1e-3, from 0.5 up) whose `dpsgd_epsilon` is at most the target.

    Raises:
        ValueError: the arguments are invalid, or even a noise multiplier of 100 does not reach the target.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon must be positive and finite, not {target_epsilon}")
    run = DpSgdRun(sample_rate, steps, delta, group)

    def excess(sigma: float) -> float:
        """The log of ε(σ) / target: ≤ 0 exactly when σ meets the target."""
        eps = _epsilon(NoisyDpSgdRun(run, sigma), stop_at=target_epsilon)
        return math.log(max(eps, 1e-300)) - math.log(target_epsilon) if math.isfinite(eps) else math.inf

    # A bracket: `lo` misses the target, `hi` meets it.
    hi, f_hi = 1.0, excess(1.0)
    if f_hi > 0 and excess(MAX_NOISE_MULTIPLIER) > 0:  # the largest noise is the cheapest to account
        raise ValueError(
            f"epsilon {target_epsilon} at delta {delta} is out of reach for {steps} steps at sample rate "
            f"{sample_rate} and {group} label flip(s) per neighbour, even with noise multiplier "
            f"{MAX_NOISE_MULTIPLIER:g}: raise epsilon or delta, or train for fewer steps"
        )
    lo, f_lo = hi, f_hi
    while f_hi > 0:
        lo, f_lo = hi, f_hi
        hi = min(2 * hi, MAX_NOISE_MULTIPLIER)
        f_hi = excess(hi)
    if hi == 1.0:
        lo, f_lo = MIN_NOISE_MULTIPLIER, excess(MIN_NOISE_MULTIPLIER)
        if f_lo <= 0:
            return lo
    # Illinois false position in log σ (ε is smooth in σ), kept at least tol/2 inside the bracket so that it shrinks;
    # plain bisection once in a while guards against slow convergence.
    step = math.log1p(CALIBRATION_TOLERANCE)
    kept = 0  # +1: hi was kept last time, -1: lo was
    for i in itertools.count():
        a, b = math.log(lo), math.log(hi)
        if b - a <= step:
            return hi
        bisect = not math.isfinite(f_lo) or i % 4 == 3
        x = (a + b) / 2 if bisect else b - f_hi * (b - a) / (f_hi - f_lo)
        x = min(max(x, a + step / 2), b - step / 2)
        sigma = math.exp(x)
        f = excess(sigma)
        if f <= 0:
            hi, f_hi = sigma, f
            if kept == -1:
                f_lo /= 2
            kept = -1
        else:
            lo, f_lo = sigma, f
            if kept == 1:
                f_hi /= 2
            kept = 1
    raise AssertionError("unreachable")


def _epsilon(noisy: NoisyDpSgdRun, stop_at: float | None = None) -> float:
    """The smaller of the two chain bounds.

    The group chain is skipped for group 1, when the flip chain is at most GROUP_CHAIN_FROM, and when it is at most
    `stop_at` (all a caller comparing with `stop_at` needs to know).
    """
    run, sigma = noisy.run, noisy.noise_multiplier
    replace = _replace_pld(sigma, run.sample_rate, run.steps)
    best = _equal_links_epsilon(replace.get_epsilon_for_delta, run.group, run.delta)
    if run.group == 1 or best <= GROUP_CHAIN_FROM or (stop_at is not None and best <= stop_at):
        return best
    group = _group_pld(sigma, run.sample_rate, run.steps, run.group)
    return min(best, _two_links_epsilon(group.get_epsilon_for_delta, run.delta))


@functools.lru_cache(maxsize=64)
def _replace_pld(sigma: float, sample_rate: float, steps: int) -> pld.PrivacyLossDistribution:
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld

    single = pld.from_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivity=1.0,
        sampling_prob=sample_rate,
        value_discretization_interval=REPLACE_INTERVAL,
        pessimistic_estimate=True,
        neighboring_relation=NeighboringRelation.REPLACE_ONE,
    )
    return single.self_compose(steps)


@functools.lru_cache(maxsize=64)
def _group_pld(sigma: float, sample_rate: float, steps: int, group: int) -> pld.PrivacyLossDistribution:
    from dp_accounting.pld import privacy_loss_distribution as pld

    ks = list(range(group + 1))
    probs = [math.comb(group, k) * sample_rate**k * (1 - sample_rate) ** (group - k) for k in ks]
    single = pld.from_mixture_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivities=[float(k) for k in ks],
        sampling_probs=probs,
        value_discretization_interval=GROUP_INTERVAL,
        pessimistic_estimate=True,
    )
    return single.self_compose(steps)


def _equal_links_epsilon(epsilon_at: Callable[[float], float], links: int, delta: float) -> float:
    """links·ε_0 for the largest per-link δ_0 (bisection in log δ_0) with δ_0·Σ_{i<links} e^(i·ε_0) ≤ delta, or inf.

    ε_0 = epsilon_at(δ_0): every link is the same pair, so an equal δ per link is an equal ε per link.
    """
    if links == 1:
        eps = float(epsilon_at(delta))
        return eps if eps <= _MAX_EPSILON else math.inf

    def total(delta0: float) -> tuple[bool, float]:
        eps0 = float(epsilon_at(delta0))
        if not links * eps0 <= _MAX_EPSILON:
            return False, math.inf
        return delta0 * math.fsum(math.exp(i * eps0) for i in range(links)) <= delta, eps0

    # A feasible start: shrink δ_0 until the geometric factor is paid for (or the PLD's floor makes ε infinite).
    good = delta / links
    ok, eps0 = total(good)
    while not ok:
        good /= 10
        if good < delta * 1e-30:
            return math.inf
        ok, eps0 = total(good)
    bad = delta  # with two or more links, δ_0 = δ overshoots
    while math.log(bad / good) > 1e-3:
        mid = math.sqrt(good * bad)
        ok_mid, eps_mid = total(mid)
        if ok_mid:
            good, eps0 = mid, eps_mid
        else:
            bad = mid
    return links * eps0


def _two_links_epsilon(epsilon_at: Callable[[float], float], delta: float) -> float:
    """The minimum over δ_1 of ε_1 + ε_2 with ε_1 = epsilon_at(δ_1), ε_2 = epsilon_at((δ − δ_1)·e^(−ε_1)), or inf."""
    best = math.inf
    for share in _DELTA_SPLITS:
        eps1 = float(epsilon_at(share * delta))
        if not eps1 <= _MAX_EPSILON:
            continue
        eps2 = float(epsilon_at((1 - share) * delta * math.exp(-eps1)))
        best = min(best, eps1 + eps2)
    return best if best <= _MAX_EPSILON else math.inf
