"""Reward registry: `make_reward(cfg)` returns fn(images, prompts) -> (scores, info).

images are (B, 3, H, W) floats in [0, 1]; scores a (B,) float tensor; info a dict of (B,)
tensors with extra per-image metrics. The trainer never knows which reward it runs.
"""

from __future__ import annotations

import math
import random
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
    reward = REWARDS[cfg.name](cfg)
    return inject_faults(reward, cfg.fault, cfg.fault_rate, cfg.fault_seed) if cfg.fault else reward


def inject_faults(reward: RewardFn, fault: str, rate: float, seed: int) -> RewardFn:
    """Chaos testing: `nan` turns a `rate` fraction of scores into NaN, `raise` fails a `rate`
    fraction of calls. The trainer must count these as drops and never learn from them."""
    rng = random.Random(seed)

    def faulty(images: torch.Tensor, prompts: list[str]):
        if fault == "raise" and rng.random() < rate:
            raise RuntimeError("injected reward fault")
        scores, info = reward(images, prompts)
        if fault == "nan":
            hit = torch.tensor([rng.random() < rate for _ in prompts])
            scores = torch.where(hit, torch.full_like(scores, math.nan), scores)
        return scores, info

    return faulty


def check_prompts(cfg: RewardConfig, prompts: list[str]) -> None:
    """Raises PromptError for a prompt the reward cannot score (before anything is loaded)."""
    if cfg.name == "shapes":
        from find_ray.shapes.captions import parse_caption

        for prompt in prompts:
            parse_caption(prompt)


from find_ray.rewards import brightness, shapes  # noqa: E402,F401  (register themselves)
