"""The shapes world's image-quality figures: drawn scenes are clean; speckle, dirty
backgrounds, blended colours and touching shapes each raise their own figure."""

import random

import numpy as np
import pytest
import torch

from find_ray.config import RewardConfig
from find_ray.rewards import make_reward
from find_ray.shapes.quality import quality_figures
from find_ray.shapes.world import COLOURS, Placed, Scene, render, sample_scene


def drawn(n: int = 200) -> list[np.ndarray]:
    rng = random.Random(0)
    return [render(sample_scene(rng)) for _ in range(n)]


def test_drawn_scenes_score_clean():
    for image in drawn():
        assert quality_figures(image) == pytest.approx(
            dict.fromkeys(("dirty_background", "off_palette", "speckle", "contact", "artifacts"), 0)
        )


def test_grey_noise_on_the_background_is_dirt():
    image = render(Scene((Placed("red", "square", 4, 4, 10),))).copy()
    rng = np.random.default_rng(0)
    background = (image == 255).all(-1)
    grey = rng.random(image.shape[:2]) < 0.3  # 30 % of pixels turned light grey
    image[grey & background] = 215  # within the background's colour, not clean white
    figures = quality_figures(image)
    assert figures["dirty_background"] == pytest.approx((grey & background).mean())
    assert figures["off_palette"] == figures["speckle"] == figures["contact"] == 0
    assert figures["artifacts"] == pytest.approx(figures["dirty_background"])


def test_isolated_colour_pixels_are_speckle():
    image = render(Scene((Placed("blue", "circle", 18, 18, 10),))).copy()
    for y, x in [(2, 2), (2, 10), (10, 2), (5, 25)]:
        image[y, x] = COLOURS["red"]
    figures = quality_figures(image)
    assert figures["speckle"] == pytest.approx(4 / 32**2)
    assert figures["dirty_background"] == figures["off_palette"] == figures["contact"] == 0


def test_blended_colours_are_off_palette_and_touching_shapes_are_contact():
    red = Placed("red", "square", 2, 2, 10)
    apart = render(Scene((red, Placed("yellow", "square", 16, 2, 10))))
    touching = render(Scene((red, Placed("yellow", "square", 12, 2, 10))))
    assert quality_figures(apart)["contact"] == 0
    assert quality_figures(touching)["contact"] == pytest.approx(2 * 10 / 32**2)  # two columns
    blended = apart.copy()
    blended[2:12, 2:12] = (125, 100, 35)  # red and green mixed: no world colour
    figures = quality_figures(blended)
    assert figures["off_palette"] == pytest.approx(100 / 32**2)
    assert figures["artifacts"] >= figures["off_palette"]
    washed = apart.copy()
    washed[(apart != 255).any(-1)] = 170  # the shapes washed out to grey
    assert quality_figures(washed)["off_palette"] == pytest.approx((apart != 255).any(-1).mean())


def test_the_quality_reward_is_one_minus_the_artifacts():
    clean = drawn(4)
    dirty = [image.copy() for image in clean]
    for image in dirty:
        image[::3, ::3] = 170  # a grid of grey dots
    images = torch.from_numpy(np.stack(clean + dirty)).permute(0, 3, 1, 2).float() / 255
    scores, info = make_reward(RewardConfig(name="shapes_quality"))(images, ["x"] * 8)
    assert torch.equal(scores[:4], torch.ones(4)) and (scores[4:] < 1).all()
    torch.testing.assert_close(scores, 1 - info["artifacts"])
    assert set(info) == {"dirty_background", "off_palette", "speckle", "contact", "artifacts"}
