"""Seeded standard-normal noise: every draw a pure function of (seed, index).

Rollouts draw eps(seed, rollout id), evaluation eps(eval seed, prompt index), Serve and
`find-ray sample` eps(0, image seed): the same draw whichever process, batch or order makes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

STRIDE = 1_000_003  # seeds apart: (seed, index) pairs never share a generator state


def seeded_generator(seed: int, index: int = 0) -> torch.Generator:
    """A CPU generator in the state that (seed, index) names."""
    return torch.Generator().manual_seed(seed * STRIDE + index)


def seeded_normal(shape: Sequence[int], seed: int, index: int = 0) -> Tensor:
    """Standard-normal noise of `shape` from (seed, index)."""
    return torch.randn(tuple(shape), generator=seeded_generator(seed, index))


def candidate_seeds(seed: int, n: int, best_of: int = 1) -> list[int]:
    """The noise seeds of n images, each picked from `best_of` candidates, image-major: image
    i's j-th candidate is seed + i + j * n (so with best_of 1, image i uses seed + i)."""
    return [seed + i + j * n for i in range(n) for j in range(best_of)]


def normals_by_index(shape: Sequence[int], indices: Iterable[int], seed: int = 0) -> Tensor:
    """One `seeded_normal(shape, seed, i)` per index, stacked: (len(indices), *shape)."""
    return torch.stack([seeded_normal(shape, seed, i) for i in indices])
