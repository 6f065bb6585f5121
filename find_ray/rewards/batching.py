"""Run a learned scorer over `batch_size` chunks, as a reward or as its differentiable form.

A scorer ("core") maps a chunk of images (or videos) and their prompts to (scores, info),
differentiably; these wrappers chunk the inputs and put the results where the caller wants
them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from find_ray.config import ScorerConfig
from find_ray.rewards.registry import (
    DifferentiableRewardFn,
    RewardFn,
    register,
    register_differentiable,
)

Core = Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def run_batched(
    core: Core, images: torch.Tensor, prompts: list[str], batch_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`core` over consecutive chunks of `batch_size`, concatenated."""
    parts = [
        core(images[start : start + batch_size], prompts[start : start + batch_size])
        for start in range(0, len(prompts), batch_size)
    ]
    if not parts:
        return images.new_zeros(0), {}
    scores = torch.cat([s for s, _ in parts])
    return scores, {key: torch.cat([info[key] for _, info in parts]) for key in parts[0][1]}


def as_reward(core: Core, batch_size: int) -> RewardFn:
    """The reward form: no gradients, float32 scores and info on the CPU."""

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: list[str]):
        scores, info = run_batched(core, images, prompts, batch_size)
        return scores.float().cpu(), {k: v.float().cpu() for k, v in info.items()}

    return score


def as_differentiable(core: Core, batch_size: int) -> DifferentiableRewardFn:
    """The differentiable form: (B,) scores on the images' device and dtype, with gradients."""

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores, _ = run_batched(core, images, prompts, batch_size)
        return scores.to(images.device, images.dtype)

    return score


def register_scorer(
    name: str, core: Callable[[ScorerConfig], Core], check: Callable[[ScorerConfig], None]
) -> None:
    """Registers a learned scorer under `name`: `core(cfg)` builds it, batched by
    `reward.batch_size` as a reward and as its differentiable form; `check` validates its
    weights before any actor starts."""
    register(name, check)(lambda cfg: as_reward(core(cfg), cfg.batch_size))
    register_differentiable(name)(lambda cfg: as_differentiable(core(cfg), cfg.batch_size))
