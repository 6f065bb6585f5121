"""Diffusers pipelines driven by an explicit z_T, one class per family where they differ.

The noise enters through the pipeline's own `latents=` argument, so with the same z_T the
images (or videos) equal those of the plain pipeline bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from find_ray.backends.families import AUTO_FAMILY
from find_ray.backends.loading import load_pipeline
from find_ray.config import ModelConfig
from find_ray.errors import ConfigError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)


class PipelineBackend:
    """A text-to-image pipeline (SD 1.x/2.x, SD-Turbo, the shapes world), fixed sampler settings.

    `height`/`width` (pixels, 0: the unet's default size) apply to pipelines with a VAE.
    """

    output = "images"  # the field of the pipeline's output that holds the result

    def __init__(
        self,
        pipe: DiffusionPipeline,
        steps: int,
        guidance: float,
        eta: float,
        *,
        height: int = 0,
        width: int = 0,
        num_frames: int = 16,
    ):
        self.pipe, self.steps, self.guidance, self.eta = pipe, steps, guidance, eta
        self.num_frames = num_frames
        self.call_args: dict[str, Any] = {}  # size arguments of every pipeline call
        self.latent_shape = self._latent_shape(height, width)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> PipelineBackend:
        """The backend of the pipeline's family (any subclass), loaded with `cfg`'s options."""
        pipe = load_pipeline(cfg)
        backend = BACKENDS[AUTO_FAMILY[type(pipe).__name__]]
        return backend(
            pipe,
            cfg.steps,
            cfg.guidance,
            cfg.eta,
            height=cfg.height,
            width=cfg.width,
            num_frames=cfg.num_frames,
        )

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width; sets the pipeline's pixel size arguments."""
        size = self.pipe.unet.config.sample_size
        h, w = tuple(size) if isinstance(size, list | tuple) else (size, size)
        scale = getattr(self.pipe, "vae_scale_factor", None)
        if scale is None:  # pixel space (shapes): the unet's size is the image size
            if height or width:
                log.info("model.height/width ignored: %s is pixel-space", type(self.pipe).__name__)
            return h, w
        h, w = (height // scale if height else h), (width // scale if width else w)
        if h is None or w is None:
            raise ConfigError("config key 'model.height': the unet has no default size; set both")
        self.call_args.update(height=h * scale, width=w * scale)
        return h, w

    def _latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one z_T, without the batch dimension: (C, H, W)."""
        return (self.pipe.unet.config.in_channels, *self._latent_hw(height, width))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """One embedding per prompt (B, D): the text encoder's pooled output."""
        ids = self.pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.pipe.text_encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.pipe._execution_device)
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

        `seed` seeds one generator per image for the sampler's own noise (eta > 0, ancestral
        samplers): seed + i for an int, seed[i] for a sequence (so an image does not depend on
        its batch).
        """
        if z_T.shape[0] != len(prompts) or tuple(z_T.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"z_T {tuple(z_T.shape)} does not fit {len(prompts)} prompts x {self.latent_shape}"
            )
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        output = self.pipe(
            prompt=prompts,
            latents=z_T.to(self.pipe._execution_device, self.pipe.unet.dtype),
            num_inference_steps=steps or self.steps,
            guidance_scale=self.guidance if guidance is None else guidance,
            eta=self.eta if eta is None else eta,
            generator=self._generators(seeds),
            output_type="pt",
            **self.call_args,
        )
        return getattr(output, self.output).float().cpu()

    def _generators(self, seeds: list[int]) -> torch.Generator | list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]


class SDXLBackend(PipelineBackend):
    """SDXL (and SDXL-Turbo): two text encoders; the prompt embedding is the pooled one."""

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """text_encoder_2's projected pooled output (B, projection_dim), the embedding SDXL
        itself conditions on (its `text_embeds`); the per-token states of both encoders are
        not pooled into it."""
        pooled = self.pipe.encode_prompt(
            prompts, device=self.pipe._execution_device, do_classifier_free_guidance=False
        )[2]
        return pooled.float().cpu()


class VideoBackend(PipelineBackend):
    """Text-to-video (TextToVideoSDPipeline, AnimateDiffPipeline): z_T is (C, F, H, W) and
    `generate` returns videos (B, F, 3, H, W) in [0, 1]."""

    output = "frames"

    def _latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        self.call_args["num_frames"] = self.num_frames
        h, w = self._latent_hw(height, width)
        return (self.pipe.unet.config.in_channels, self.num_frames, h, w)


class T2VBackend(VideoBackend):
    """TextToVideoSDPipeline. Its scheduler steps the batch's frames as one (B*F) batch, so a
    per-video generator list does not fit: its sampler noise (eta > 0, ancestral schedulers) is
    seeded per call by the first seed. With DDIM eta 0 (its default) there is none."""

    def _generators(self, seeds: list[int]) -> torch.Generator:
        return torch.Generator().manual_seed(seeds[0])


BACKENDS: dict[str, type[PipelineBackend]] = {
    "sd": PipelineBackend,
    "sdxl": SDXLBackend,
    "t2v": T2VBackend,
    "animatediff": VideoBackend,
}
