"""Seeded procedural scenes: 1-4 coloured shapes on a plain background, drawn at 32x32."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
MAX_OBJECTS = 4
BACKGROUND = (255, 255, 255)
# Saturated, well separated colours: the detector classifies pixels by nearest palette entry.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 0),
}
SHAPES = ("circle", "square", "triangle")
SIZE_RANGE = (8, 11)  # bounding-box side in pixels
GAP = 2  # minimum free pixels between two objects' boxes

Obj = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class Placed:
    """One object of a scene with its bounding box (x0, y0, side)."""

    colour: str
    shape: str
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[Placed, ...]

    @property
    def multiset(self) -> Counter[Obj]:
        return Counter((o.colour, o.shape) for o in self.objects)


def sample_objects(rng: random.Random) -> list[Obj]:
    """Object kinds of a training scene: counts of one kind (40 %) or independent kinds (60 %)."""
    n = rng.randint(1, MAX_OBJECTS)
    if rng.random() < 0.4:
        kind = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        return [kind] * n
    return [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(n)]


def place(objects: list[Obj], rng: random.Random, max_tries: int = 200) -> Scene:
    """Places objects at random non-overlapping positions (boxes at least GAP apart)."""
    while True:
        placed: list[Placed] = []
        for colour, shape in objects:
            for _ in range(max_tries):
                size = rng.randint(*SIZE_RANGE)
                x = rng.randint(1, IMAGE_SIZE - size - 1)
                y = rng.randint(1, IMAGE_SIZE - size - 1)
                if all(_apart(x, y, size, p) for p in placed):
                    placed.append(Placed(colour, shape, x, y, size))
                    break
            else:
                break  # this layout is too crowded: start again
        if len(placed) == len(objects):
            return Scene(tuple(placed))


def _apart(x: int, y: int, size: int, other: Placed) -> bool:
    return (
        x + size + GAP <= other.x
        or other.x + other.size + GAP <= x
        or y + size + GAP <= other.y
        or other.y + other.size + GAP <= y
    )


def sample_scene(rng: random.Random, objects: list[Obj] | None = None) -> Scene:
    """A random scene; `objects` fixes which kinds it holds (positions stay random)."""
    return place(objects if objects is not None else sample_objects(rng), rng)


def render(scene: Scene) -> np.ndarray:
    """Draws the scene without anti-aliasing; returns uint8 HxWx3."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        fill = COLOURS[o.colour]
        x1, y1 = o.x + o.size - 1, o.y + o.size - 1
        if o.shape == "square":
            draw.rectangle((o.x, o.y, x1, y1), fill=fill)
        elif o.shape == "circle":
            draw.ellipse((o.x, o.y, x1, y1), fill=fill)
        else:
            draw.polygon([(o.x + (o.size - 1) / 2, o.y), (o.x, y1), (x1, y1)], fill=fill)
    return np.asarray(image, dtype=np.uint8)
