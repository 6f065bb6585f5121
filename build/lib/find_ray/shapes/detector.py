"""An exact detector for the shapes world: colour segmentation + connected components + geometry.

The same thresholds serve ground-truth and generated images; nothing here knows the prompt.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from find_ray.shapes.world import BACKGROUND, COLOURS, Obj

PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # index 0 = background
COLOUR_NAMES = list(COLOURS)
MAX_COLOUR_DISTANCE = 90.0  # farther than this from every palette entry: no colour
MIN_AREA = 12  # components smaller than this are speckles, not objects
SQUARE_MIN_FILL = 0.9  # area / bounding-box area
CIRCLE_MIN_FILL = 0.68
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    area: int
    fill: float


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index (0 background, 1.. colours) or -1 when no entry is close."""
    pixels = image.astype(np.float32)[..., None, :]  # H W 1 3
    distance = np.linalg.norm(pixels - PALETTE, axis=-1)  # H W P
    label = distance.argmin(-1)
    label[distance.min(-1) > MAX_COLOUR_DISTANCE] = -1
    return label


def shape_of(mask: np.ndarray) -> tuple[str, float]:
    """Classifies one component by how much of its bounding box it fills."""
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = float(mask.sum()) / float(box)
    if fill >= SQUARE_MIN_FILL:
        return "square", fill
    if fill >= CIRCLE_MIN_FILL:
        return "circle", fill
    return "triangle", fill


def detect_objects(image: np.ndarray) -> list[Detection]:
    """The objects in a uint8 HxWx3 image."""
    labels = classify_pixels(image)
    found = []
    for index, colour in enumerate(COLOUR_NAMES, start=1):
        components, n = ndimage.label(labels == index, structure=EIGHT_CONNECTED)
        for i in range(1, n + 1):
            mask = components == i
            area = int(mask.sum())
            if area >= MIN_AREA:
                shape, fill = shape_of(mask)
                found.append(Detection(colour, shape, area, fill))
    return found


def detect(image: np.ndarray) -> Counter[Obj]:
    """The multiset {(colour, shape): count} seen in a uint8 HxWx3 image."""
    return Counter((d.colour, d.shape) for d in detect_objects(image))
