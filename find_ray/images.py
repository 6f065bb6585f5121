"""Image grids with labels, for samples, evaluation reports and TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

SCALE = 3  # 32x32 images are shown at 96x96
LABEL_HEIGHT = 14
TITLE_HEIGHT = 16
BACKDROP = (255, 255, 255)
INK = (20, 20, 20)


def image_grid(
    images: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
    scale: int = SCALE,
) -> Image.Image:
    """uint8 HxWx3 images in a grid, each upscaled (nearest) with its label under it."""
    font = ImageFont.load_default()
    h, w = images[0].shape[:2]
    cell_h, cell_w = h * scale + (LABEL_HEIGHT if labels else 0), w * scale + 4
    nrows = -(-len(images) // ncols)
    top = TITLE_HEIGHT if title else 0
    grid = Image.new("RGB", (max(ncols * cell_w, 1), top + nrows * cell_h), BACKDROP)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((2, 2), title, fill=INK, font=font)
    for i, image in enumerate(images):
        x, y = (i % ncols) * cell_w + 2, top + (i // ncols) * cell_h
        tile = Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (x, y))
        if labels:
            draw.text((x, y + h * scale), labels[i], fill=INK, font=font)
    return grid


def stack(grids: Sequence[Image.Image], gap: int = 6) -> Image.Image:
    """Grids one above the other."""
    width = max(g.width for g in grids)
    out = Image.new("RGB", (width, sum(g.height for g in grids) + gap * len(grids)), BACKDROP)
    y = 0
    for g in grids:
        out.paste(g, (0, y))
        y += g.height + gap
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8; a video (B, F, 3, H, W) becomes
    a film strip, its frames side by side: (B, H, F * W, 3)."""
    if images.dim() == 5:
        images = images.permute(0, 2, 3, 1, 4).flatten(3)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
