"""Backends: diffusers pipelines behind one interface (latent shape, prompt encoding, generate)."""

from find_ray.backends.pipeline import PipelineBackend, load_pipeline, resolve_model_path

__all__ = ["PipelineBackend", "load_pipeline", "resolve_model_path"]
