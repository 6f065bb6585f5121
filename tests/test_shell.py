"""The shell figure: ||z||^2 / d and where it falls in chi^2_d, against hand values."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from find_ray.eval.shell import chi2_percentile, shell_radius, shell_summary


def test_radius_is_the_mean_square_per_element():
    z = torch.tensor([[3.0, 4.0], [1.0, 1.0]]).view(2, 1, 2)
    np.testing.assert_allclose(shell_radius(z), [12.5, 1.0])


def test_percentile_against_hand_values():
    # d = 2: chi^2_2 is exponential with mean 2, so P(||x||^2 / 2 <= r) = 1 - exp(-r)
    np.testing.assert_allclose(
        chi2_percentile(np.array([0.5, 1.0, 3.0]), 2), 1 - np.exp(-np.array([0.5, 1.0, 3.0]))
    )
    # large d: the median of chi^2_d / d is close to 1 - 2 / (3 d)
    d = 3072
    assert chi2_percentile(np.array([1 - 2 / (3 * d)]), d)[0] == pytest.approx(0.5, abs=1e-3)


def test_standard_normal_sits_on_the_shell_and_an_offset_mean_does_not():
    d, generator = 3 * 32 * 32, torch.Generator().manual_seed(0)
    z = torch.randn((4000, d), generator=generator)
    on = shell_summary(shell_radius(z), d)
    assert on["shell_mean"] == pytest.approx(1.0, abs=0.002)
    assert on["shell_sd"] == pytest.approx(math.sqrt(2 / d), rel=0.05)
    assert on["shell_outside_99"] == pytest.approx(0.01, abs=0.006)
    off = shell_summary(shell_radius(z + 0.85), d)  # mu = 0.85 per element: 1 + 0.85^2
    assert off["shell_mean"] == pytest.approx(1 + 0.85**2, abs=0.01)
    assert off["shell_outside_99"] == 1.0
    assert stats.chi2.ppf(0.995, d) / d < 1.1  # the whole central interval is within 10 %
