"""A tiny random-weight flow-matching shapes pipeline (nothing is downloaded)."""

from __future__ import annotations

import torch

from find_ray.shapes.components import build_flow_pipeline
from find_ray.shapes.flow_pipeline import ShapesFlowPipeline
from tests.conftest import TINY_SHAPES


def tiny_flow(seed: int = 0) -> ShapesFlowPipeline:
    """ShapesFlowPipeline of TINY_SHAPES's size, weights drawn after torch.manual_seed(seed),
    progress bars off."""
    torch.manual_seed(seed)
    pipe = build_flow_pipeline(TINY_SHAPES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def red(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A toy differentiable reward (B,): the mean of each image's red channel."""
    return images[:, 0].flatten(1).mean(1)
