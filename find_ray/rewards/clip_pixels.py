"""CLIP-style preprocessing in torch, so gradients flow from the score to the pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(
    images: torch.Tensor,
    size: int,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> resized (shorter side to `size`, bicubic, antialiased),
    centre-cropped to size x size and normalised, as CLIP's processors do (differentiable)."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    if new != (h, w):
        images = F.interpolate(
            images, size=new, mode="bicubic", align_corners=False, antialias=True
        )
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    images = images[..., top : top + size, left : left + size]
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s
