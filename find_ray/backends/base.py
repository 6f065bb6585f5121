"""DiffusersBackend: a diffusers pipeline driven by an explicit z_T, with fixed sampler settings.

The noise enters through the pipeline's own `latents=` argument, so with the same z_T the
images (or videos) equal those of the plain pipeline bit for bit. Subclasses (one per family
where they differ: `pipeline`, `flow`) say how a family's latent is shaped and handed to its
pipeline, which sampler arguments it takes, and how a prompt becomes one embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from find_ray.backends.families import size_error
from find_ray.errors import ConfigError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)


class DiffusersBackend:
    """latent_shape, encode_prompts and generate over one loaded pipeline.

    `height`/`width` (pixels, 0: the model's default size) apply to pipelines with a VAE.
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

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that denoises: the unet, or the transformer of a DiT pipeline."""
        return self.pipe.unet if hasattr(self.pipe, "unet") else self.pipe.transformer

    def _vae_scale(self) -> int | None:
        """Pixels per latent element (None: the pipeline works in pixel space)."""
        return getattr(self.pipe, "vae_scale_factor", None)

    def _pixel_multiple(self) -> int:
        """What height and width must be a multiple of: the VAE's downsampling."""
        return self._vae_scale() or 1

    def _default_latent_hw(self) -> tuple[int | None, int | None]:
        """The model's default latent size: its denoiser's sample_size, else the pipeline's."""
        size = self.denoiser.config.get("sample_size") or getattr(
            self.pipe, "default_sample_size", None
        )
        return tuple(size) if isinstance(size, list | tuple) else (size, size)

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width; sets the pipeline's pixel size arguments."""
        h, w = self._default_latent_hw()
        scale = self._vae_scale()
        if scale is None:  # pixel space (shapes): the denoiser's size is the image size
            if height or width:
                log.info("model.height/width ignored: %s is pixel-space", type(self.pipe).__name__)
            return h, w
        multiple = self._pixel_multiple()
        for key, pixels in (("height", height), ("width", width)):
            if pixels % multiple:
                model = f"{type(self.pipe).__name__} (pixels)"
                raise size_error(key, model, multiple, self._why_multiple(), pixels)
        h, w = (height // scale if height else h), (width // scale if width else w)
        if h is None or w is None:
            raise ConfigError("config key 'model.height': the model has no default size; set both")
        self.call_args.update(height=h * scale, width=w * scale)
        return h, w

    def _why_multiple(self) -> str:
        return f"its VAE downsamples {self._vae_scale()}x"

    def _latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one z_T, without the batch dimension: (C, H, W)."""
        return (self.denoiser.config.in_channels, *self._latent_hw(height, width))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """One embedding per prompt (B, D): the text encoder's pooled output (projected, for
        an encoder with a projection: CLIPTextModelWithProjection's text_embeds)."""
        ids = self.pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.pipe.text_encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.pipe._execution_device)
        out = self.pipe.text_encoder(ids)
        pooled = out.pooler_output if "pooler_output" in out else out.text_embeds
        return pooled.float().cpu()

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
        """Denoises z_T (B, *latent_shape) into images (B, 3, H, W) or videos (B, F, 3, H, W)
        in [0, 1] on the CPU.

        `seed` seeds one generator per image for the sampler's own noise (eta > 0, ancestral
        samplers): seed + i for an int, seed[i] for a sequence (so an image does not depend on
        its batch).
        """
        self._check_latents(z_T, prompts)
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        output = self.pipe(
            prompt=prompts,
            latents=self._pipeline_latents(z_T),
            num_inference_steps=steps or self.steps,
            guidance_scale=self.guidance if guidance is None else guidance,
            generator=self._generators(seeds),
            output_type="pt",
            **self._sampler_args(self.eta if eta is None else eta),
            **self.call_args,
        )
        return getattr(output, self.output).float().cpu()

    def _check_latents(self, z_T: torch.Tensor, prompts: list[str]) -> None:
        if z_T.shape[0] != len(prompts) or tuple(z_T.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"z_T {tuple(z_T.shape)} does not fit {len(prompts)} prompts x {self.latent_shape}"
            )

    def _pipeline_latents(self, z_T: torch.Tensor) -> torch.Tensor:
        """z_T as the pipeline's `latents=` takes it: on its device, in the denoiser's dtype."""
        return z_T.to(self.pipe._execution_device, self.denoiser.dtype)

    def _sampler_args(self, eta: float) -> dict[str, Any]:
        """Pipeline arguments of the sampler beyond steps and guidance: DDIM's eta."""
        return {"eta": eta}

    def _generators(self, seeds: list[int]) -> torch.Generator | list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]
