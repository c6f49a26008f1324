"""DP-SGD accounting for up to `group` label flips: pinned figures, monotonicity, calibration, and anchors."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld import privacy_loss_distribution as pld
from opacus.accountants import PRVAccountant

from cleanroom.privacy import accounting
from cleanroom.privacy.accounting import calibrate_noise, dpsgd_epsilon

Q, T, SIGMA, DELTA = 0.02, 150, 1.5, 1e-6
INDEPENDENT_REPLACE_ONE = 1.47  # an independent PLD accountant's replace-one figure for (Q, T, SIGMA, DELTA)


def _opacus_add_remove(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta))


def test_one_flip_does_not_understate_the_independent_replace_one_figure_nor_opacus():
    eps = dpsgd_epsilon(SIGMA, Q, T, DELTA, group=1)
    assert eps >= INDEPENDENT_REPLACE_ONE * (1 - 0.02)
    opacus_eps = _opacus_add_remove(SIGMA, Q, T, DELTA)
    assert opacus_eps == pytest.approx(0.895, abs=0.01)  # what opacus charged before
    assert eps >= opacus_eps
    assert eps == pytest.approx(1.457, abs=0.005)  # pinned: dp_accounting's REPLACE_ONE PLD


def test_one_flip_is_dp_accountings_replace_one_figure_rounded_up():
    fine = (
        pld.from_gaussian_mechanism(
            SIGMA,
            sampling_prob=Q,
            value_discretization_interval=1e-4,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
        )
        .self_compose(T)
        .get_epsilon_for_delta(DELTA)
    )
    eps = dpsgd_epsilon(SIGMA, Q, T, DELTA, group=1)
    assert fine <= eps <= fine + 0.005


def test_the_group_mixture_for_one_example_is_dp_accountings_add_remove_figure():
    # Sanity anchor: the group chain's building block (N(0) vs Binom(group, q)-mixture of N(k)) for group = 1 is the
    # Poisson-subsampled Gaussian under add/remove, so it must agree with dp_accounting's own add/remove PLD (and
    # with opacus' add/remove figure), up to our coarser, pessimistic discretisation.
    ours = accounting._group_pld(SIGMA, Q, T, 1).get_epsilon_for_delta(DELTA)
    theirs = pld.from_gaussian_mechanism(SIGMA, sampling_prob=Q).self_compose(T).get_epsilon_for_delta(DELTA)
    assert theirs <= ours <= theirs + 0.03  # the group PLD's 1e-2 discretisation, rounded up
    assert theirs == pytest.approx(_opacus_add_remove(SIGMA, Q, T, DELTA), abs=0.02)


def test_group_figures_are_pinned():
    # Chains of single flips (weak triangle inequality): far above group × the one-flip figure as e^ε adds up.
    assert dpsgd_epsilon(SIGMA, Q, T, DELTA, group=2) == pytest.approx(3.175, abs=0.01)
    assert dpsgd_epsilon(SIGMA, Q, T, DELTA, group=4) == pytest.approx(7.41, abs=0.02)


def test_monotone_in_group_steps_and_sample_rate_and_decreasing_in_noise():
    by_group = [dpsgd_epsilon(SIGMA, Q, T, DELTA, group=g) for g in (1, 2, 3, 4)]
    assert by_group == sorted(by_group)
    assert len(set(by_group)) == len(by_group)
    by_steps = [dpsgd_epsilon(SIGMA, Q, steps, DELTA, group=2) for steps in (50, 150, 300)]
    assert by_steps == sorted(by_steps)
    assert len(set(by_steps)) == len(by_steps)
    by_rate = [dpsgd_epsilon(SIGMA, q, T, DELTA, group=2) for q in (0.01, 0.02, 0.04)]
    assert by_rate == sorted(by_rate)
    assert len(set(by_rate)) == len(by_rate)
    by_sigma = [dpsgd_epsilon(s, Q, T, DELTA, group=2) for s in (1.0, 1.5, 3.0, 6.0)]
    assert by_sigma == sorted(by_sigma, reverse=True)
    assert len(set(by_sigma)) == len(by_sigma)


def test_the_group_chain_takes_over_where_the_flip_chain_breaks_down():
    # 8 flips at σ = 1.5: the chain of 8 single flips never reaches δ = 1e-6 (e^ε compounds), the two group links do.
    eps = dpsgd_epsilon(SIGMA, Q, T, DELTA, group=8)
    assert eps == pytest.approx(22.2, abs=0.2)


@pytest.mark.parametrize(("target", "group"), [(1.0, 1), (2.0, 1), (3.0, 2), (8.0, 4)])
def test_calibrate_noise_round_trips(target, group):
    sigma = calibrate_noise(target, DELTA, Q, T, group)
    assert dpsgd_epsilon(sigma, Q, T, DELTA, group) <= target
    assert dpsgd_epsilon(0.95 * sigma, Q, T, DELTA, group) > 1.01 * target


def test_calibration_is_fast_enough_for_a_query():
    accounting._replace_pld.cache_clear()
    accounting._group_pld.cache_clear()
    start = time.perf_counter()
    calibrate_noise(2.0, 1e-7, Q, T, 4)
    assert time.perf_counter() - start < 20  # about 1-3 s on an idle 2-core machine


def test_impossible_and_invalid_requests_are_refused():
    with pytest.raises(ValueError, match="out of reach"):
        calibrate_noise(1e-4, DELTA, 1.0, 1000, 1)
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_noise(0.0, DELTA, Q, T, 1)
    with pytest.raises(ValueError, match="group"):
        dpsgd_epsilon(SIGMA, Q, T, DELTA, group=0)
    with pytest.raises(ValueError, match="delta"):
        dpsgd_epsilon(SIGMA, Q, T, 1.0, group=1)
    with pytest.raises(ValueError, match="sample_rate"):
        dpsgd_epsilon(SIGMA, 0.0, T, DELTA, group=1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        dpsgd_epsilon(0.0, Q, T, DELTA, group=1)


def test_the_antipodal_pair_is_the_worst_single_flip_in_the_plane():
    # The one-flip pair rests on: among q·N(g) + (1−q)·N(0) vs q·N(g') + (1−q)·N(0), ‖g‖, ‖g'‖ ≤ 1, the hockey-stick
    # divergence is largest for g = −g' of norm 1 (dp_accounting's REPLACE_ONE pair). A numerical check in the plane.
    xs = np.linspace(-8.0, 8.0, 401)
    gx, gy = np.meshgrid(xs, xs)
    area = (xs[1] - xs[0]) ** 2

    def density(mx: float, my: float, s: float) -> np.ndarray:
        return np.exp(-((gx - mx) ** 2 + (gy - my) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)

    for s in (0.8, 1.5):
        base = density(0, 0, s)
        for q in (0.02, 0.5):
            for eps in (0.0, 0.5, 2.0):
                worst_p, worst_q = q * density(-1, 0, s) + (1 - q) * base, q * density(1, 0, s) + (1 - q) * base
                worst = np.sum(np.maximum(worst_p - np.exp(eps) * worst_q, 0)) * area
                for r1, r2, theta in itertools.product((0.5, 1.0), (0.5, 1.0), np.linspace(0, np.pi, 7)):
                    p = q * density(r1, 0, s) + (1 - q) * base
                    other = q * density(r2 * np.cos(theta), r2 * np.sin(theta), s) + (1 - q) * base
                    assert np.sum(np.maximum(p - np.exp(eps) * other, 0)) * area <= worst * (1 + 1e-9) + 1e-15
