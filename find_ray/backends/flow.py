"""The flow-matching families: SD3/3.5, FLUX.1 (schnell, dev), Wan 2.x, and `flow`, any
text-to-image pipeline called like SD3's (prompt, latents, num_inference_steps,
guidance_scale, generator, output_type) whose denoiser predicts velocity.

Their samplers (flow-matching Euler; UniPC on flow sigmas for Wan) integrate an ODE from z_T:
no per-step noise, and the pipelines take no `eta`, so `model.eta` must be 0 for them.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from find_ray.backends.base import DiffusersBackend
from find_ray.backends.families import reject_eta, size_error

WAN_MAX_TOKENS = 512  # WanPipeline's max_sequence_length
SCHNELL_MAX_TOKENS = 256  # FLUX.1-schnell's T5 length (its model card; dev reads 512)


class FlowBackend(DiffusersBackend):
    """A flow-matching text-to-image pipeline (the `flow` family; base of the others): no
    eta; the prompt embedding is its text encoder's pooled output."""

    def __init__(self, pipe: Any, steps: int, guidance: float, eta: float, **sizes: int):
        reject_eta(eta)
        super().__init__(pipe, steps, guidance, eta, **sizes)

    def _sampler_args(self, eta: float) -> dict[str, Any]:
        reject_eta(eta)
        return {}

    def _patch(self) -> int:
        """Latent elements per token side: the transformer's patch size (1 for a unet)."""
        patch = self.denoiser.config.get("patch_size") or 1
        return patch[-1] if isinstance(patch, list | tuple) else patch

    def _pixel_multiple(self) -> int:
        return self._vae_scale() * self._patch()

    def _why_multiple(self) -> str:
        return (
            f"its VAE downsamples {self._vae_scale()}x and its transformer takes "
            f"{self._patch()}x{self._patch()} patches of the latent"
        )


class SD3Backend(FlowBackend):
    """Stable Diffusion 3 / 3.5: 16-channel latent (C, H/8, W/8); the prompt embedding is the
    pooled CLIP one SD3 conditions on (both CLIP encoders' pooled outputs, concatenated)."""

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, 768 + 1280) for SD3/3.5; T5 is not run."""
        device = self.pipe._execution_device
        pooled = [
            self.pipe._get_clip_prompt_embeds(prompts, device=device, clip_model_index=i)[1]
            for i in (0, 1)
        ]
        return torch.cat(pooled, dim=-1).float().cpu()


class FluxBackend(FlowBackend):
    """FLUX.1 (schnell, dev). The pipeline takes packed latents (B, (h/2)(w/2), 4C); z_T is
    the unpacked (C, h, w) = (16, H/8, W/8), so a convolutional policy sees space, and the
    backend packs it with the pipeline's own `_pack_latents`. `guidance` is dev's distilled
    guidance embedding (one transformer pass a step); schnell has none and ignores it, and
    reads 256 T5 tokens, as its model card samples it."""

    def __init__(self, pipe: Any, steps: int, guidance: float, eta: float, **sizes: int):
        super().__init__(pipe, steps, guidance, eta, **sizes)
        if not self.denoiser.config.guidance_embeds:  # schnell
            self.call_args["max_sequence_length"] = SCHNELL_MAX_TOKENS

    def _patch(self) -> int:
        return 2  # the 2x2 packing (the transformer's own patch size is 1)

    def _latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (self.denoiser.config.in_channels // 4, *self._latent_hw(height, width))

    def _check_latents(self, z_T: torch.Tensor, prompts: list[str]) -> None:
        if z_T.dim() == 3:
            raise ValueError(
                f"z_T {tuple(z_T.shape)} looks packed (B, tokens, {z_T.shape[-1]}); FLUX's "
                f"z_T is the unpacked latent {self.latent_shape}, which the backend packs"
            )
        super()._check_latents(z_T, prompts)

    def _pipeline_latents(self, z_T: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z_T.shape
        return self.pipe._pack_latents(super()._pipeline_latents(z_T), b, c, h, w)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pooled CLIP embedding FLUX conditions on (B, 768); T5 is not run."""
        device = self.pipe._execution_device
        return self.pipe._get_clip_prompt_embeds(prompts, device=device).float().cpu()


class WanBackend(FlowBackend):
    """Wan 2.x text-to-video: z_T is (C, (F-1)/4+1, H/8, W/8) (its VAE keeps the first frame
    and compresses each 4 after it into one latent frame); `generate` returns videos
    (B, F, 3, H, W) in [0, 1]; the prompt embedding is the mean of umT5's token states."""

    output = "frames"

    def _vae_scale(self) -> int:
        return self.pipe.vae_scale_factor_spatial

    def _default_latent_hw(self) -> tuple[int, int]:
        """The pipeline's own default size (480x832 for Wan 2.1), in latent elements."""
        call, scale = inspect.signature(type(self.pipe).__call__).parameters, self._vae_scale()
        return (call["height"].default // scale, call["width"].default // scale)

    def _latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        per = self.pipe.vae_scale_factor_temporal
        if (self.num_frames - 1) % per:
            why = f"its VAE keeps the first frame and packs each {per} after it into one"
            raise size_error("num_frames", "Wan (num_frames - 1)", per, why, self.num_frames)
        self.call_args["num_frames"] = self.num_frames
        h, w = self._latent_hw(height, width)
        return (self.denoiser.config.in_channels, (self.num_frames - 1) // per + 1, h, w)

    def _pipeline_latents(self, z_T: torch.Tensor) -> torch.Tensor:
        """float32, as WanPipeline keeps its latents (it casts them for each step)."""
        return z_T.to(self.pipe._execution_device, torch.float32)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The mean of umT5's last hidden states over each prompt's tokens (B, d_model), the
        prompts cleaned as WanPipeline cleans them."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = self.pipe.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="longest",
            max_length=WAN_MAX_TOKENS,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        ).to(self.pipe._execution_device)
        states = self.pipe.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
        mask = tokens.attention_mask[..., None].to(states.dtype)
        return ((states * mask).sum(1) / mask.sum(1)).float().cpu()
