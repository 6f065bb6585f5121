"""Backends behind one interface (latent_shape, encode_prompts, generate)."""

from __future__ import annotations

from find_ray.backends.pipeline import PipelineBackend, load_pipeline, resolve_model_path
from find_ray.backends.simulated import SimulatedBackend
from find_ray.config import ModelConfig

Backend = PipelineBackend | SimulatedBackend


def make_backend(cfg: ModelConfig) -> Backend:
    """The backend `model.backend` names, built from the model config."""
    if cfg.backend == "simulated":
        return SimulatedBackend.from_config(cfg)
    return PipelineBackend.from_config(cfg)


__all__ = [
    "Backend",
    "PipelineBackend",
    "SimulatedBackend",
    "load_pipeline",
    "make_backend",
    "resolve_model_path",
]
