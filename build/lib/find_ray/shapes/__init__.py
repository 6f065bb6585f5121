"""The shapes world: procedural scenes, their caption grammar, a detector and its reward."""

from find_ray.shapes.captions import caption_for, parse_caption
from find_ray.shapes.detector import detect
from find_ray.shapes.reward import match_score
from find_ray.shapes.world import COLOURS, SHAPES, Scene, render, sample_scene

__all__ = [
    "COLOURS",
    "SHAPES",
    "Scene",
    "caption_for",
    "detect",
    "match_score",
    "parse_caption",
    "render",
    "sample_scene",
]
