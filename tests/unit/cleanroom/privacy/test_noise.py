import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.privacy import noise
from cleanroom.privacy.noise import DiscreteLaplace


def _variance_close(scale: float, draws: int = 2000, attempts: int = 3) -> tuple[float, float]:
    # The sample variance of 2,000 Laplace draws has a relative standard deviation of about 5%, so one batch lies
    # outside +-10% about 1 time in 20; up to three independent batches make a false alarm a 1-in-10,000 event.
    theory = noise.variance(scale)
    observed = math.inf
    for _ in range(attempts):
        values, used = DiscreteLaplace().release([0] * draws, 1, 1 / scale)
        assert used == pytest.approx(scale)
        observed = statistics.pvariance(values)
        if abs(observed - theory) <= 0.1 * theory:
            break
    return observed, theory


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0])
def test_noise_variance_matches_the_claimed_epsilon(epsilon):
    observed, theory = _variance_close(1 / epsilon)
    assert abs(observed - theory) <= 0.1 * theory


def test_95_percent_bound_covers_95_percent():
    scale = 4.0
    bound = noise.error_95(scale)
    values, _ = DiscreteLaplace().release([0] * 4000, 1, 1 / scale)
    inside = sum(abs(v) <= bound for v in values) / len(values)
    assert 0.94 <= inside <= 0.975
    a = math.exp(-1 / scale)
    assert 2 * a ** (bound + 1) / (1 + a) <= 0.05 < 2 * a**bound / (1 + a)  # the smallest such bound


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.01, max_value=10), st.integers(1, 5))
def test_scale_is_sensitivity_over_epsilon_and_counts_stay_integers(epsilon, sensitivity):
    values, scale = DiscreteLaplace().release([10, 0, 3], sensitivity, epsilon)
    assert scale == pytest.approx(sensitivity / epsilon)
    assert all(isinstance(v, int) for v in values)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.inf, math.nan])
def test_bad_epsilon_is_refused(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        DiscreteLaplace().release([1], 1, epsilon)


def test_counts_beyond_32_bits_are_noised():
    # revenue in cents of a million conversions is far beyond 2^31
    values, _ = DiscreteLaplace().release([4_687_886_877, 2**40], 250_000, 0.25)
    assert abs(values[0] - 4_687_886_877) < 10**8
    assert abs(values[1] - 2**40) < 10**8
