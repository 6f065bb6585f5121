"""`module`: your own scorer, `reward.module: package.module:factory`, imported only where it
runs. In a Ray run that is the reward actors, never the driver, so its package need only be
installed in their runtime environment (`reward.runtime_env`: pip, working_dir, py_modules).

`factory(cfg)` is called once per reward actor with the scorer's config (weights_path, device,
batch_size, ...) and returns `fn(images, prompts)`: images a (B, 3, H, W) float tensor in
[0, 1] on the CPU (at most `batch_size` of them), prompts B strings. `fn` returns B scores (a
tensor, array or list) or (scores, info), info a dict of B-long per-image figures. A call that
raises, or returns another number of scores, drops its images (counted as reward_error).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from find_ray.config import ScorerConfig
from find_ray.errors import ConfigError
from find_ray.rewards.batching import Core, as_reward
from find_ray.rewards.registry import RewardFn, register


def check_module(cfg: ScorerConfig) -> None:
    """Imports nothing (the driver may lack the package): the spec's shape was checked when the
    config loaded; registering a check makes the device of `cfg` count as a model's device."""


def load_factory(cfg: ScorerConfig) -> Callable[[ScorerConfig], Any]:
    """The object `cfg.module` names ("package.module:attr.attr"), imported here."""
    module_name, _, attr = cfg.module.partition(":")
    key = f"{cfg.key}.module"
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"config key '{key}': cannot import {module_name!r} here ({e}); install it where the "
            f"reward runs, e.g. reward.runtime_env.pip=[...] or reward.runtime_env.working_dir"
        ) from None
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"config key '{key}': {module_name!r} has no {attr!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"config key '{key}': {cfg.module!r} is not callable")
    return found


def as_figures(values: Any) -> torch.Tensor:
    """Scores or a figure as a flat float tensor (from a tensor, an array or a list)."""
    return torch.as_tensor(values).float().reshape(-1)


def module_core(fn: Callable[[torch.Tensor, list[str]], Any], spec: str) -> Core:
    """`fn`'s answer as (scores, info), its length checked against the images'."""

    def core(images: torch.Tensor, prompts: list[str]):
        answer = fn(images, prompts)
        scores, info = answer if isinstance(answer, tuple) else (answer, {})
        scores = as_figures(scores)
        if scores.numel() != len(prompts):
            raise ValueError(f"{spec} returned {scores.numel()} scores for {len(prompts)} images")
        return scores, {name: as_figures(v) for name, v in dict(info).items()}

    return core


@register("module", check_module)
def module_reward(cfg: ScorerConfig) -> RewardFn:
    scorer = load_factory(cfg)(cfg)
    return as_reward(module_core(scorer, cfg.module), cfg.batch_size)
