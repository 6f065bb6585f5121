"""The reward registry: each scorer module registers its factory (and optional differentiable
form and cheap weight check) under a name; `find_ray.rewards` builds rewards from it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from find_ray.config import ScorerConfig

RewardFn = Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
DifferentiableRewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]
REWARDS: dict[str, Callable[[ScorerConfig], RewardFn]] = {}
DIFFERENTIABLE: dict[str, Callable[[ScorerConfig], DifferentiableRewardFn]] = {}
CHECKS: dict[str, Callable[[ScorerConfig], None]] = {}


def register(name: str, check: Callable[[ScorerConfig], None] | None = None):
    """Registers a reward factory under `name`; `check(cfg)` validates its weights cheaply."""

    def wrap(factory: Callable[[ScorerConfig], RewardFn]):
        REWARDS[name] = factory
        if check is not None:
            CHECKS[name] = check
        return factory

    return wrap


def register_differentiable(name: str):
    """Registers the differentiable form of reward `name`."""

    def wrap(factory: Callable[[ScorerConfig], DifferentiableRewardFn]):
        DIFFERENTIABLE[name] = factory
        return factory

    return wrap
