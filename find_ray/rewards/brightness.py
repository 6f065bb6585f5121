"""`brightness`: the mean pixel value, a trivial reward for the simulated backend."""

from __future__ import annotations

import torch

from find_ray.config import ScorerConfig
from find_ray.rewards.registry import RewardFn, register

BRIGHT = 0.6  # an image counts as an "exact" match above this mean brightness


@register("brightness")
def brightness_reward(cfg: ScorerConfig) -> RewardFn:
    def score(images: torch.Tensor, prompts: list[str]):
        scores = images.flatten(1).mean(1)
        info = {"exact": (scores > BRIGHT).float(), "colours_present": torch.ones_like(scores)}
        return scores, info

    return score
