"""Backends behind one interface (latent_shape, encode_prompts, generate).

Pipeline families live in `pipeline` (SD, SDXL, turbo, text-to-video; the entry point
`PipelineBackend.from_config`) and `flow` (flow-matching: SD3, FLUX.1, Wan), on `base`; their
loading and the cheap `check_model` in `loading`. They are imported on first use, so actors on
the simulated backend (the scale benchmark runs dozens) do not pay for importing diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from find_ray.backends.simulated import SimulatedBackend
from find_ray.config import ModelConfig

if TYPE_CHECKING:
    from find_ray.backends.base import DiffusersBackend
    from find_ray.backends.flow import FlowBackend, FluxBackend, SD3Backend, WanBackend
    from find_ray.backends.loading import check_model, load_pipeline, resolve_model_path
    from find_ray.backends.pipeline import PipelineBackend, SDXLBackend, VideoBackend

LAZY = {
    "DiffusersBackend": "base",
    "FlowBackend": "flow",
    "FluxBackend": "flow",
    "SD3Backend": "flow",
    "WanBackend": "flow",
    "PipelineBackend": "pipeline",
    "SDXLBackend": "pipeline",
    "VideoBackend": "pipeline",
    "check_model": "loading",
    "load_pipeline": "loading",
    "resolve_model_path": "loading",
}


class Backend(Protocol):
    latent_shape: tuple[int, ...]

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor: ...

    def generate(
        self, z_T: torch.Tensor, prompts: list[str], seed: int | Sequence[int] = 0, **sampler: Any
    ) -> torch.Tensor: ...


GUIDANCE_DISTILLED = ("flux",)  # guidance is an input of the denoiser: one pass a step


def denoiser_calls(steps: int, guidance: float, family: str = "") -> int:
    """Denoiser passes to sample one image: classifier-free guidance doubles each step, except
    for a guidance-distilled family (FLUX.1 dev takes its guidance as an embedding)."""
    if family in GUIDANCE_DISTILLED:
        return steps
    return steps * (2 if guidance > 1.0 else 1)


def model_denoiser_calls(cfg: ModelConfig) -> int:
    """`denoiser_calls` of the model `cfg` names at its steps and guidance (its family read
    from model_index.json alone)."""
    from find_ray.backends.loading import check_model

    return denoiser_calls(cfg.steps, cfg.guidance, check_model(cfg))


def model_devices(cfg: ModelConfig) -> dict[str, str]:
    """{"model.device": ...} for a pipeline; {} for the simulated backend (it uses none)."""
    return {"model.device": cfg.device} if cfg.backend == "pipeline" else {}


def make_backend(cfg: ModelConfig) -> Backend:
    """The backend `model.backend` names, built from the model config."""
    if cfg.backend == "simulated":
        return SimulatedBackend.from_config(cfg)
    from find_ray.backends.pipeline import PipelineBackend

    return PipelineBackend.from_config(cfg)


def __getattr__(name: str) -> Any:
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(f"find_ray.backends.{LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "Backend",
    "DiffusersBackend",
    "FlowBackend",
    "FluxBackend",
    "PipelineBackend",
    "SD3Backend",
    "SDXLBackend",
    "SimulatedBackend",
    "VideoBackend",
    "WanBackend",
    "check_model",
    "denoiser_calls",
    "model_denoiser_calls",
    "load_pipeline",
    "make_backend",
    "model_devices",
    "resolve_model_path",
]
