"""The shapes consistency reward: detector + graded multiset match (default reward)."""

from __future__ import annotations

import torch

from find_ray.config import ScorerConfig
from find_ray.images import to_uint8
from find_ray.rewards.registry import RewardFn, register
from find_ray.shapes.captions import parse_caption
from find_ray.shapes.detector import detect
from find_ray.shapes.quality import KINDS, quality_figures
from find_ray.shapes.reward import match_score


def colours_present(target, detected) -> bool:
    """Every requested colour appears among the detected objects."""
    return {c for c, _ in target} <= {c for c, _ in detected}


@register("shapes")
def shapes_reward(cfg: ScorerConfig) -> RewardFn:
    def score(images: torch.Tensor, prompts: list[str]):
        scores, exact, colours = [], [], []
        for image, prompt in zip(to_uint8(images), prompts, strict=True):
            target, detected = parse_caption(prompt), detect(image)
            graded, is_exact = match_score(target, detected)
            scores.append(graded)
            exact.append(float(is_exact))
            colours.append(float(colours_present(target, detected)))
        info = {"exact": torch.tensor(exact), "colours_present": torch.tensor(colours)}
        return torch.tensor(scores), info

    return score


@register("shapes_quality")
def shapes_quality(cfg: ScorerConfig) -> RewardFn:
    """Image quality of the shapes world: 1 - the fraction of artifact pixels (higher is
    better); info holds each artifact kind's fraction and `artifacts` itself."""

    def score(images: torch.Tensor, prompts: list[str]):
        figures = [quality_figures(image) for image in to_uint8(images)]
        info = {key: torch.tensor([f[key] for f in figures]) for key in (*KINDS, "artifacts")}
        return 1.0 - info["artifacts"], info

    return score
