"""The shapes consistency reward: detector + graded multiset match (default reward)."""

from __future__ import annotations

import torch

from find_ray.config import RewardConfig
from find_ray.images import to_uint8
from find_ray.rewards.registry import RewardFn, register
from find_ray.shapes.captions import parse_caption
from find_ray.shapes.detector import detect
from find_ray.shapes.reward import match_score


def colours_present(target, detected) -> bool:
    """Every requested colour appears among the detected objects."""
    return {c for c, _ in target} <= {c for c, _ in detected}


@register("shapes")
def shapes_reward(cfg: RewardConfig) -> RewardFn:
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
