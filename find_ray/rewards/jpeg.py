"""`jpeg_compressibility` / `jpeg_incompressibility`: the JPEG file size of each image.

ddpo-pytorch's definition: the image as 8-bit RGB, saved as JPEG at quality 95, size in kB
(bytes / 1000); incompressibility is +kB, compressibility is -kB. No model, no weights.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from find_ray.config import ScorerConfig
from find_ray.images import to_uint8
from find_ray.rewards.registry import RewardFn, register

QUALITY = 95


def jpeg_kb(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B,) JPEG quality-95 sizes in kB."""
    sizes = []
    for hwc in to_uint8(images.detach().float()):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(hwc)).save(buffer, format="JPEG", quality=QUALITY)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def _jpeg_reward(sign: float) -> RewardFn:
    def score(images: torch.Tensor, prompts: list[str]):
        kb = jpeg_kb(images)
        return sign * kb, {"jpeg_kb": kb}

    return score


@register("jpeg_compressibility")
def jpeg_compressibility(cfg: ScorerConfig) -> RewardFn:
    return _jpeg_reward(-1.0)


@register("jpeg_incompressibility")
def jpeg_incompressibility(cfg: ScorerConfig) -> RewardFn:
    return _jpeg_reward(1.0)
