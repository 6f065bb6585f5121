"""Image quality in the shapes world, beside the detector: what a drawn scene never has.

A drawn scene is exact palette colours on a white background, its objects apart. A generated
image's pixels are checked for four artifacts (each a fraction of the image's pixels):

- dirty background: a background pixel (white is its nearest palette entry) farther than
  `DIRT_DISTANCE` from white: the grey speckle of noise far off the Gaussian shell;
- off palette: no palette entry within the detector's `MAX_COLOUR_DISTANCE` (washed-out or
  blended colours, greys);
- speckle: colour pixels in components too small to be an object (the detector drops them);
- contact: a colour pixel touching a pixel of another colour (two shapes bleeding together).

`artifacts` is the fraction of pixels with any of them: 0 for every drawn scene.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from find_ray.shapes.detector import EIGHT_CONNECTED, MIN_AREA, classify_pixels

DIRT_DISTANCE = 40.0  # RGB distance from white beyond which a background pixel is not clean
KINDS = ("dirty_background", "off_palette", "speckle", "contact")


def artifact_masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean H x W masks of each artifact kind in a uint8 H x W x 3 image."""
    labels = classify_pixels(image)
    white = np.linalg.norm(255.0 - image.astype(np.float32), axis=-1)
    coloured = labels > 0
    speckle = np.zeros_like(coloured)
    contact = np.zeros_like(coloured)
    for colour in np.unique(labels[coloured]):
        mine = labels == colour
        components, n = ndimage.label(mine, structure=EIGHT_CONNECTED)
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        speckle |= mine & (sizes[components] < MIN_AREA)
        others = coloured & ~mine
        contact |= mine & ndimage.binary_dilation(others, structure=EIGHT_CONNECTED)
    return {
        "dirty_background": (labels == 0) & (white > DIRT_DISTANCE),
        "off_palette": labels < 0,
        "speckle": speckle,
        "contact": contact,
    }


def quality_figures(image: np.ndarray) -> dict[str, float]:
    """Each artifact kind's fraction of the pixels, and `artifacts`: pixels with any."""
    masks = artifact_masks(image)
    figures = {kind: float(mask.mean()) for kind, mask in masks.items()}
    figures["artifacts"] = float(np.logical_or.reduce(list(masks.values())).mean())
    return figures
