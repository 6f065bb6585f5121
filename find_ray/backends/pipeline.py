"""PipelineBackend: a diffusers pipeline from a local folder, driven by an explicit z_T.

The noise enters through the pipeline's own `latents=` argument, so with the same z_T the
images equal those of the plain pipeline bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from find_ray.config import SHAPES_MODEL, ModelConfig
from find_ray.errors import ModelPathError
from find_ray.shapes.pipeline import ShapesPipeline

SHAPES_MODEL_DIR = Path(__file__).resolve().parent.parent / "shapes" / "model"
CUSTOM_PIPELINES = {"ShapesPipeline": ShapesPipeline}


def resolve_model_path(path: str) -> Path:
    """The folder of a pipeline: the shipped shapes model for "shapes", else `path` itself."""
    folder = SHAPES_MODEL_DIR if path == SHAPES_MODEL else Path(path).expanduser()
    if not (folder / "model_index.json").is_file():
        hint = " (run `find-ray pretrain-shapes`)" if path == SHAPES_MODEL else ""
        raise ModelPathError(f"no diffusers pipeline (model_index.json) at {folder}{hint}")
    return folder


def load_pipeline(path: str, device: str = "cpu", dtype: str = "float32") -> DiffusionPipeline:
    """Loads a local diffusers pipeline folder, ours (ShapesPipeline) or one of diffusers'."""
    folder = resolve_model_path(path)
    class_name = json.loads((folder / "model_index.json").read_text())["_class_name"]
    cls = CUSTOM_PIPELINES.get(class_name, DiffusionPipeline)
    pipe = cls.from_pretrained(folder, dtype=getattr(torch, dtype), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class PipelineBackend:
    """One text-to-image pipeline with fixed sampler settings."""

    def __init__(self, pipe: DiffusionPipeline, steps: int, guidance: float, eta: float):
        self.pipe, self.steps, self.guidance, self.eta = pipe, steps, guidance, eta

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> PipelineBackend:
        return cls(load_pipeline(cfg.path, cfg.device, cfg.dtype), cfg.steps, cfg.guidance, cfg.eta)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one z_T, without the batch dimension."""
        unet = self.pipe.unet.config
        size = unet.sample_size
        size = tuple(size) if isinstance(size, list | tuple) else (size, size)
        return (unet.in_channels, *size)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """One embedding per prompt (B, D): the text encoder's pooled output."""
        ids = self.pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.pipe.text_encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.pipe.text_encoder.device)
        return self.pipe.text_encoder(ids).pooler_output.float().cpu()

    @torch.no_grad()
    def generate(
        self,
        z_T: torch.Tensor,
        prompts: list[str],
        steps: int | None = None,
        guidance: float | None = None,
        eta: float | None = None,
        seed: int | Sequence[int] = 0,
    ) -> torch.Tensor:
        """Denoises z_T (B, *latent_shape) into images (B, 3, H, W) in [0, 1] on the CPU.

        `seed` seeds one generator per image for the sampler's own noise (eta > 0): seed + i
        for an int, seed[i] for a sequence (so an image does not depend on its batch).
        """
        if z_T.shape[0] != len(prompts) or tuple(z_T.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"z_T {tuple(z_T.shape)} does not fit {len(prompts)} prompts x {self.latent_shape}"
            )
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        images = self.pipe(
            prompt=prompts,
            latents=z_T.to(self.pipe.device, self.pipe.unet.dtype),
            num_inference_steps=steps or self.steps,
            guidance_scale=self.guidance if guidance is None else guidance,
            eta=self.eta if eta is None else eta,
            generator=generators,
            output_type="pt",
        ).images
        return images.float().cpu()
