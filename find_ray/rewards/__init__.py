"""Reward registry: `make_reward(cfg)` returns fn(images, prompts) -> (scores, info).

images are (B, 3, H, W) floats in [0, 1], or videos (B, F, 3, H, W): an image reward scores
each frame and averages (`frame_averaged`); scores a (B,) float tensor; info a dict of (B,)
tensors with extra per-image metrics. The trainer never knows which reward it runs.

A reward may also register a differentiable form (images in, (B,) scores out, gradients flow
to the images; for the gradient-based peers) and a `check` that validates its weights before
any actor starts, without loading them.
"""

from __future__ import annotations

import dataclasses
import math
import random

import torch

from find_ray.config import FindRayConfig, RewardConfig, ScorerConfig
from find_ray.errors import ConfigError
from find_ray.rewards.registry import (
    CHECKS,
    DIFFERENTIABLE,
    REWARDS,
    DifferentiableRewardFn,
    RewardFn,
)
from find_ray.rewards.runtime_env import check_runtime_env, ray_runtime_env  # noqa: F401


def _known(cfg: ScorerConfig) -> None:
    if cfg.name not in REWARDS:
        raise ConfigError(
            f"config key '{cfg.key}.name': unknown scorer {cfg.name!r}; "
            f"known: {', '.join(sorted(REWARDS))}"
        )


def check_reward(cfg: ScorerConfig) -> None:
    """Raises a one-line error for an unknown scorer or missing weights; loads nothing."""
    _known(cfg)
    if cfg.name in CHECKS:
        CHECKS[cfg.name](cfg)


def quality_config(quality: ScorerConfig, reward: ScorerConfig) -> ScorerConfig | None:
    """The quality scorer to report beside `reward`, "auto" resolved (shapes_quality with the
    shapes reward, none with another); None for none."""
    name = quality.name
    if name == "auto":
        name = "shapes_quality" if reward.name == "shapes" else ""
    return dataclasses.replace(quality, name=name) if name else None


def check_scorers(cfg: FindRayConfig, runtime_env: bool = True) -> None:
    """`check_reward` for the reward and the quality scorer, and (`runtime_env`) the local
    files of `reward.runtime_env`; a quality term in the reward without a quality scorer is a
    config error too."""
    check_reward(cfg.reward)
    if runtime_env:
        check_runtime_env(cfg)
    quality = quality_config(cfg.eval.quality, cfg.reward)
    if quality is not None:
        check_reward(quality)
    elif cfg.reward.quality_weight > 0:
        raise ConfigError("config key 'reward.quality_weight': needs a scorer in eval.quality.name")


def scorer_devices(cfg: FindRayConfig) -> dict[str, str]:
    """{"reward.device": ..., "eval.quality.device": ...} for the scorers in use that load a
    model onto their device: the learned ones (they register a weights check); the cheap
    scorers (shapes, brightness, jpeg) compute on the CPU whatever their device says."""
    used = [cfg.reward, quality_config(cfg.eval.quality, cfg.reward)]
    return {f"{s.key}.device": s.device for s in used if s is not None and s.name in CHECKS}


def make_scorer(cfg: ScorerConfig) -> RewardFn:
    """The scorer `cfg.name` names, videos scored frame by frame."""
    _known(cfg)
    return frame_averaged(REWARDS[cfg.name](cfg))


def make_reward(cfg: RewardConfig) -> RewardFn:
    """The reward, with the configured noise and injected faults."""
    reward = make_scorer(cfg)
    if cfg.noise_std > 0:
        reward = with_noise(reward, cfg.noise_std, cfg.fault_seed)
    return inject_faults(reward, cfg.fault, cfg.fault_rate, cfg.fault_seed) if cfg.fault else reward


def with_quality(reward: RewardFn, quality: RewardFn, weight: float = 0.0) -> RewardFn:
    """`reward` with the quality scorer's score in info["quality"] and its figures as
    "quality/<name>"; with `weight` > 0 the score is reward + weight * quality."""

    def score(images: torch.Tensor, prompts: list[str]):
        scores, info = reward(images, prompts)
        q, q_info = quality(images, prompts)
        info = {**info, "quality": q, **{f"quality/{k}": v for k, v in q_info.items()}}
        return (scores + weight * q if weight > 0 else scores), info

    return score


def scorers(cfg: FindRayConfig) -> tuple[RewardFn, RewardFn]:
    """(training, evaluation), sharing one reward and one quality scorer model. Rollouts are
    scored by the reward plus `reward.quality_weight` times the quality scorer's score;
    evaluation by the reward alone, with the quality figures beside it."""
    check_scorers(cfg, runtime_env=False)  # in a reward actor it is applied: cwd may be its own
    reward = make_reward(cfg.reward)
    config = quality_config(cfg.eval.quality, cfg.reward)
    if config is None:
        return reward, reward
    quality, weight = make_scorer(config), cfg.reward.quality_weight
    training = with_quality(reward, quality, weight) if weight > 0 else reward
    return training, with_quality(reward, quality)


def evaluation_reward(cfg: FindRayConfig) -> RewardFn:
    """The reward with the quality figures beside it (`scorers`)."""
    return scorers(cfg)[1]


def make_differentiable_reward(cfg: RewardConfig) -> DifferentiableRewardFn:
    _known(cfg)
    if cfg.name not in DIFFERENTIABLE:
        raise ConfigError(
            f"config key 'reward.name': reward {cfg.name!r} has no differentiable form; "
            f"these do: {', '.join(sorted(DIFFERENTIABLE))}"
        )
    return DIFFERENTIABLE[cfg.name](cfg)


def frame_averaged(reward: RewardFn) -> RewardFn:
    """Scores videos (B, F, 3, H, W) frame by frame and averages; images pass through. A
    video reward (its function has `takes_videos = True`) gets the videos themselves."""
    if getattr(reward, "takes_videos", False):
        return reward

    def score(images: torch.Tensor, prompts: list[str]):
        if images.dim() != 5:
            return reward(images, prompts)
        b, f = images.shape[:2]
        scores, info = reward(images.flatten(0, 1), [p for p in prompts for _ in range(f)])
        return scores.view(b, f).mean(1), {k: v.view(b, f).mean(1) for k, v in info.items()}

    return score


def with_noise(reward: RewardFn, std: float, seed: int) -> RewardFn:
    """The reward plus independent N(0, std^2) noise per score (a noisy-reward experiment);
    info keeps the clean metrics (e.g. exact match), so evaluation stays exact."""
    generator = torch.Generator().manual_seed(seed)

    def noisy(images: torch.Tensor, prompts: list[str]):
        scores, info = reward(images, prompts)
        noise = torch.randn(scores.shape, generator=generator, dtype=scores.dtype)
        return scores + std * noise, {**info, "clean_score": scores}

    return noisy


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


def check_prompts(cfg: ScorerConfig, prompts: list[str]) -> None:
    """Raises PromptError for a prompt the reward cannot score (before anything is loaded)."""
    if cfg.name == "shapes":
        from find_ray.shapes.captions import parse_caption

        for prompt in prompts:
            parse_caption(prompt)


from find_ray.rewards import (  # noqa: E402,F401  (register themselves)
    aesthetic,
    brightness,
    clipscore,
    hpsv2,
    http,
    imagereward,
    jpeg,
    module,
    pickscore,
    shapes,
    video_clip,
)
