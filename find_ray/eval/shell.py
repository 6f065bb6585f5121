"""Where initial noises sit relative to the Gaussian shell of N(0, I).

A d-dimensional standard normal z has ||z||^2 ~ chi^2_d: ||z||^2 / d concentrates at 1 (sd
sqrt(2 / d)), the "shell" the denoiser was trained on. Noise far off it (a policy mean added
to unit-variance noise gives ||z||^2 / d ~ 1 + ||mu||^2 / d) is noise the model never saw.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

CENTRAL = 0.99  # a sample is off the shell outside the central 99 % of chi^2_d


def shell_radius(z: torch.Tensor) -> np.ndarray:
    """||z||^2 / d of each sample of z (B, ...), as float64."""
    return z.detach().double().flatten(1).pow(2).mean(1).cpu().numpy()


def chi2_percentile(radius: np.ndarray, d: int) -> np.ndarray:
    """P(||x||^2 / d <= radius) for x ~ N(0, I_d): where each value falls in chi^2_d."""
    return stats.chi2.cdf(np.asarray(radius, dtype=float) * d, d)


def shell_summary(radius: np.ndarray, d: int) -> dict[str, float]:
    """Mean and sd of ||z||^2 / d, and the fraction of samples outside the central 99 % of
    chi^2_d / d (about 0.01 for N(0, I) itself)."""
    percentile = chi2_percentile(radius, d)
    tail = (1 - CENTRAL) / 2
    outside = (percentile < tail) | (percentile > 1 - tail)
    return {
        "shell_mean": float(np.mean(radius)),
        "shell_sd": float(np.std(radius)),
        "shell_outside_99": float(np.mean(outside)),
    }
