"""Backends behind one interface (latent_shape, encode_prompts, generate).

The diffusers pipeline is imported on first use, so actors on the simulated backend (the scale
benchmark runs dozens) do not pay for importing diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from find_ray.backends.simulated import SimulatedBackend
from find_ray.config import ModelConfig

if TYPE_CHECKING:
    from find_ray.backends.pipeline import PipelineBackend, load_pipeline, resolve_model_path


class Backend(Protocol):
    latent_shape: tuple[int, ...]

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor: ...

    def generate(
        self, z_T: torch.Tensor, prompts: list[str], seed: int | Sequence[int] = 0, **sampler: Any
    ) -> torch.Tensor: ...


def denoiser_calls(steps: int, guidance: float) -> int:
    """Denoiser (UNet) passes to sample one image: classifier-free guidance doubles each step."""
    return steps * (2 if guidance > 1.0 else 1)


def make_backend(cfg: ModelConfig) -> Backend:
    """The backend `model.backend` names, built from the model config."""
    if cfg.backend == "simulated":
        return SimulatedBackend.from_config(cfg)
    from find_ray.backends.pipeline import PipelineBackend

    return PipelineBackend.from_config(cfg)


def __getattr__(name: str) -> Any:
    if name in ("PipelineBackend", "load_pipeline", "resolve_model_path"):
        from find_ray.backends import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = [
    "Backend",
    "PipelineBackend",
    "SimulatedBackend",
    "denoiser_calls",
    "load_pipeline",
    "make_backend",
    "resolve_model_path",
]
