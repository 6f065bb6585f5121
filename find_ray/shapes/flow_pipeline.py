"""ShapesFlowPipeline: the shapes world's rectified-flow text-to-image pipeline.

The unet predicts the velocity v = eps - x_0 of x_t = (1 - t) x_0 + t eps, and diffusers'
`FlowMatchEulerDiscreteScheduler` integrates it from t = 1 (z_T) to 0 with Euler steps, as
StableDiffusion3Pipeline does. Its call takes SD3's arguments that apply to a pixel-space model
without a VAE (prompt, num_inference_steps, sigmas, guidance_scale, num_images_per_prompt,
generator, latents, output_type, return_dict), so a flow-matching backend drives it like SD3.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from find_ray.shapes.pipeline import ShapesPipelineBase


class ShapesFlowPipeline(ShapesPipelineBase):
    """Euler sampling of the velocity unet (`scheduler`: a FlowMatchEulerDiscreteScheduler)."""

    scheduler: FlowMatchEulerDiscreteScheduler

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 20,
        sigmas: list[float] | None = None,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Images of `prompt` from z_T = `latents` (or drawn from `generator`): Euler steps of
        the guided velocity (SD3's loop: the unet sees the scheduler's timesteps, sigma * 1000)."""
        cond, latents = self.prepare(
            prompt, num_images_per_prompt, guidance_scale, latents, generator
        )
        steps = None if sigmas is not None else num_inference_steps
        self.scheduler.set_timesteps(steps, device=self.unet.device, sigmas=sigmas)
        for t in self.progress_bar(self.scheduler.timesteps):
            velocity = self.guided_output(latents, t, cond, guidance_scale)
            latents = self.scheduler.step(velocity, t, latents).prev_sample
        return self.images_output(latents, output_type, return_dict)
