"""Paired bootstrap confidence intervals for before/after comparisons on the same seeds, the
expected best-of-N of a pool of scores, and the mean of the finite values of a list."""

from __future__ import annotations

import math
from math import comb

import numpy as np


def finite_mean(values: list[float | None]) -> float:
    """The mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def paired_bootstrap_ci(
    before: np.ndarray, after: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean gain, low, high) of after - before, resampling prompts and their paired samples.

    `before` and `after` are (prompts, samples) arrays scored on the same noise seeds.
    """
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    rng = np.random.default_rng(seed)
    p, k = diff.shape
    prompts = rng.integers(0, p, size=(n_boot, p))
    samples = rng.integers(0, k, size=(n_boot, p, k))
    means = diff[prompts[..., None], samples].mean(axis=(1, 2))
    tail = (1 - level) / 2
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def expected_best_of(scores: np.ndarray, n: int) -> float:
    """E[max of n draws without replacement] from a pool of scores (exact order statistic)."""
    pool = np.sort(scores)
    k = len(pool)
    weights = np.array([comb(i, n - 1) for i in range(k)], dtype=float) / comb(k, n)
    return float((weights * pool).sum())
