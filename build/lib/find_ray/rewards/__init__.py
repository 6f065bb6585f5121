"""Reward registry: `make_reward(cfg)` returns fn(images, prompts) -> (scores, info).

images are (B, 3, H, W) floats in [0, 1]; scores a (B,) float tensor; info a dict of (B,)
tensors with extra per-image metrics. The trainer never knows which reward it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from find_ray.config import RewardConfig
from find_ray.errors import ConfigError

RewardFn = Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
REWARDS: dict[str, Callable[[RewardConfig], RewardFn]] = {}


def register(name: str):
    def wrap(factory: Callable[[RewardConfig], RewardFn]):
        REWARDS[name] = factory
        return factory

    return wrap


def make_reward(cfg: RewardConfig) -> RewardFn:
    if cfg.name not in REWARDS:
        raise ConfigError(
            f"config key 'reward.name': unknown reward {cfg.name!r}; "
            f"known: {', '.join(sorted(REWARDS))}"
        )
    return REWARDS[cfg.name](cfg)


def check_prompts(cfg: RewardConfig, prompts: list[str]) -> None:
    """Raises PromptError for a prompt the reward cannot score (before anything is loaded)."""
    if cfg.name == "shapes":
        from find_ray.shapes.captions import parse_caption

        for prompt in prompts:
            parse_caption(prompt)


from find_ray.rewards import shapes  # noqa: E402,F401  (registers itself)
