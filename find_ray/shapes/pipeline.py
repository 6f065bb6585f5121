"""ShapesPipeline: a pixel-space text-to-image diffusers pipeline for the shapes world.

It follows StableDiffusionPipeline's call signature (prompt, steps, guidance, eta, generator,
`latents=`), minus the VAE: the "latent" is the 3x32x32 image itself. `ShapesPipelineBase` is
what it shares with the flow-matching pipeline (`flow_pipeline.ShapesFlowPipeline`).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, PreTrainedTokenizerBase


class ShapesPipelineBase(DiffusionPipeline):
    """The shapes pipelines' common part: a pixel-space unet, its scheduler, the word tokenizer
    and tiny text encoder that condition it; the initial latents, the guided unet output and
    the image output. A subclass owns the sampling loop."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.text_encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Per-token text embeddings (B, L, D) that condition the unet."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        return (batch_size, self.unet.config.in_channels, size, size)

    def prepare(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int,
        guidance_scale: float,
        latents: torch.Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text states, the empty prompt's first under guidance; initial latents: `latents`
        or drawn from `generator`) for `num_images_per_prompt` images of each prompt."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        device, dtype = self.unet.device, self.unet.dtype
        cond = self.encode_prompt(prompts)
        if guidance_scale > 1.0:
            cond = torch.cat([self.encode_prompt([""] * len(prompts)), cond])
        if latents is None:
            latents = randn_tensor(
                self.latent_shape(len(prompts)), generator=generator, device=device, dtype=dtype
            )
        return cond, latents.to(device=device, dtype=dtype)

    def guided_output(
        self, model_input: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float
    ) -> torch.Tensor:
        """The unet's output at `t`, classifier-free guided (one batch of 2B) when guidance > 1."""
        if guidance > 1.0:
            model_input = torch.cat([model_input] * 2)
        out = self.unet(model_input, t, encoder_hidden_states=cond).sample
        if guidance > 1.0:
            uncond_out, cond_out = out.chunk(2)
            out = uncond_out + guidance * (cond_out - uncond_out)
        return out

    def images_output(self, latents: torch.Tensor, output_type: str, return_dict: bool):
        """Pixels in [-1, 1] -> images in [0, 1]: a tensor ("pt"), numpy ("np") or PIL."""
        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            result = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                result = DiffusionPipeline.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


class ShapesPipeline(ShapesPipelineBase):
    """DDIM sampling of the v-prediction unet (`scheduler`: a DDIMScheduler)."""

    scheduler: DDIMScheduler

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        cond, latents = self.prepare(
            prompt, num_images_per_prompt, guidance_scale, latents, generator
        )
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(latents, t)
            out = self.guided_output(model_input, t, cond, guidance_scale)
            latents = self.scheduler.step(out, t, latents, eta=eta, generator=generator).prev_sample
        return self.images_output(latents, output_type, return_dict)
