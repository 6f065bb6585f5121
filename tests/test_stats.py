import numpy as np
import pytest

from find_ray.eval.stats import paired_bootstrap_ci


def test_identical_and_constant_gains():
    before = np.random.default_rng(0).random((5, 8))
    assert paired_bootstrap_ci(before, before) == (0.0, 0.0, 0.0)
    assert paired_bootstrap_ci(before, before + 1) == pytest.approx((1.0, 1.0, 1.0))


def test_interval_brackets_the_mean_and_detects_a_real_gain():
    rng = np.random.default_rng(1)
    before = rng.random((10, 32))
    after = before + 0.1 + 0.2 * rng.standard_normal((10, 32))
    gain, low, high = paired_bootstrap_ci(before, after)
    assert low < gain < high
    assert low > 0 and abs(gain - 0.1) < 0.05
    noise_only = before + 0.2 * rng.standard_normal((10, 32))
    _, low, high = paired_bootstrap_ci(before, noise_only)
    assert low < 0 < high
