"""The denoising chain one step at a time, for the methods that look inside it.

DDPO scores each DDIM step's Gaussian, DNO optimises the noises the chain draws, DRTune
backpropagates the reward through it. All three run the pipeline's own UNet, scheduler
(a private copy, DDIM) and text conditioning, so that with the same z_T and step noises
`DenoisingChain.sample` reproduces `pipeline(latents=z_T)` (tested). One loop (`Chain`) serves
every method and every sampler (the flow-matching one is `flow_chain.FlowChain`); its options
say where gradients flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch.utils.checkpoint import checkpoint as checkpointed

from find_ray.errors import ConfigError

# (images (B, 3, H, W) in [0, 1], prompts) -> (B,) scores: what the peers optimise (DNO and
# DRTune differentiate it, DDPO only calls it)
ScoreFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


@dataclass
class Conditions:
    """Text states the UNet attends to: the prompts' and, under guidance, the empty prompt's."""

    cond: torch.Tensor
    uncond: torch.Tensor | None = None

    def select(self, index: torch.Tensor | list[int]) -> Conditions:
        """The states of the prompts at `index` (rows of the batch)."""
        return Conditions(self.cond[index], None if self.uncond is None else self.uncond[index])

    def repeat(self, n: int) -> Conditions:
        """Each prompt's states n times in a row (n samples per prompt)."""
        return Conditions(
            self.cond.repeat_interleave(n, 0),
            None if self.uncond is None else self.uncond.repeat_interleave(n, 0),
        )


@dataclass
class Step:
    """One sampler step x_t -> x_{t-1} ~ N(mean, std^2 I), with the predicted x_0."""

    t: torch.Tensor
    prev: torch.Tensor
    mean: torch.Tensor
    std: float
    x0: torch.Tensor


@dataclass
class Trajectory:
    """The latents x_T, ..., x_0 of a chain (`latents[0]` is z_T), its steps and the output."""

    latents: list[torch.Tensor] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    final: torch.Tensor | None = None  # the last latent, or x0 of the early-stop step


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample, averaged over the dimensions (as ddpo-pytorch does,
    so that one clip range fits any latent size)."""
    log_density = (
        -((x - mean) ** 2) / (2 * std**2)
        - torch.log(torch.tensor(std))
        - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    )
    return log_density.flatten(1).mean(1)


class Chain:
    """What the one-step-at-a-time samplers share: `pipe`'s UNet, its text conditions under
    CFG `guidance`, the sampling loop and the decoding. A subclass owns the scheduler (a
    private copy) and the step; `eta` is its noise level (0: deterministic)."""

    scheduler: Any
    eta: float

    def __init__(self, pipe: Any, guidance: float):
        self.pipe, self.unet, self.guidance = pipe, pipe.unet, guidance
        self.vae = getattr(pipe, "vae", None)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0

    @torch.no_grad()
    def conditions(self, prompts: list[str]) -> Conditions:
        """The text states of `prompts` (and of "" when guided), as the pipeline computes them."""
        device = self.unet.device
        if self.vae is None:  # the shapes pipelines: one encoder call per prompt list
            cond = self.pipe.encode_prompt(prompts)
            uncond = self.pipe.encode_prompt([""] * len(prompts)) if self.guided else None
            return Conditions(cond, uncond)
        cond, uncond = self.pipe.encode_prompt(prompts, device, 1, self.guided)
        return Conditions(cond, uncond)

    def model_output(self, x: torch.Tensor, t: torch.Tensor, c: Conditions) -> torch.Tensor:
        """The guided UNet output at x_t: one batch of 2B under guidance (2 NFE per image)."""
        if not self.guided:
            return self.unet(x, t, encoder_hidden_states=c.cond).sample
        both = self.unet(
            torch.cat([x, x]), t, encoder_hidden_states=torch.cat([c.uncond, c.cond])
        ).sample
        uncond, cond = both.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet sees for the latent x_t (the scheduler's input scaling, if any)."""
        return x

    def initial(self, z_T: torch.Tensor) -> torch.Tensor:
        """The first latent of the chain from the noise z_T."""
        return z_T

    def step(
        self, output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None
    ) -> Step:
        """The scheduler's step at t from x with the UNet `output`, split into its Gaussian."""
        raise NotImplementedError

    def log_prob(self, step: Step, x_prev: torch.Tensor | None = None) -> torch.Tensor:
        """log-density (per-dimension mean) of x_prev (default: the step's own) under it."""
        if step.std == 0:
            raise ValueError("a deterministic step (eta = 0) has no log-probability")
        return gaussian_log_prob(step.prev if x_prev is None else x_prev, step.mean, step.std)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W): the VAE's decoding, or the shapes pixels themselves."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (latents / 2 + 0.5).clamp(0, 1)

    def sample(
        self,
        z_T: torch.Tensor,
        c: Conditions,
        noises: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        *,
        grad_steps: set[int] | None = None,
        detach_input: bool = False,
        checkpoint: bool = False,
        stop_at: int | None = None,
    ) -> Trajectory:
        """Runs the chain from z_T (B, *latent) under the conditions `c` (B prompts).

        noises: the per-step Gaussian noises (eta > 0), one (B, *latent) per step; drawn
            from `generator` when absent.
        grad_steps: the step indices whose UNet call builds a graph (default: all of them, when
            grad is enabled at all); the others run under no_grad (DRTune trains K of T).
        detach_input: stop the gradient at the UNet's input (DRTune): gradients still reach
            earlier latents through the step's linear path, never through the UNet's input.
        checkpoint: recompute each UNet call in the backward pass (DNO), trading an NFE for
            the activations' memory.
        stop_at: end after this step with its predicted x_0 as `final` (DRTune's early stop).
        """
        x = self.initial(z_T)
        trajectory = Trajectory(latents=[x])
        last = len(self.timesteps) - 1 if stop_at is None else stop_at
        for i, t in enumerate(self.timesteps[: last + 1]):
            inp = self.model_input(x.detach() if detach_input else x, t)
            with torch.set_grad_enabled(
                torch.is_grad_enabled() and (grad_steps is None or i in grad_steps)
            ):
                if checkpoint and torch.is_grad_enabled():
                    output = checkpointed(self.model_output, inp, t, c, use_reentrant=False)
                else:
                    output = self.model_output(inp, t, c)
            noise = None
            if self.eta:
                noise = (
                    noises[i]
                    if noises is not None
                    else torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                )
            step = self.step(output, t, x, noise)
            trajectory.steps.append(step)
            x = step.prev
            trajectory.latents.append(x)
        trajectory.final = trajectory.steps[-1].x0 if stop_at is not None else x
        return trajectory


class DenoisingChain(Chain):
    """DDIM sampling on `pipe`'s UNet: `steps` steps, CFG `guidance`, eta (0: deterministic)."""

    def __init__(self, pipe: Any, steps: int, guidance: float, eta: float):
        if not hasattr(pipe, "unet") or type(pipe).__name__.startswith("StableDiffusionXL"):
            raise ConfigError(
                f"model: the bench's chain methods run SD 1.x/2.x and the shapes world, "
                f"not {type(pipe).__name__}"
            )
        super().__init__(pipe, guidance)
        self.eta = eta
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(steps)

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.scale_model_input(x, t)

    def initial(self, z_T: torch.Tensor) -> torch.Tensor:
        return z_T * self.scheduler.init_noise_sigma

    def step(
        self, output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None
    ) -> Step:
        """The scheduler's DDIM step, split into its Gaussian: prev = mean + std * noise."""
        prev_t = t - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        std = self.eta * float(self.scheduler._get_variance(t, prev_t)) ** 0.5
        out = self.scheduler.step(
            output, t, x, eta=self.eta, variance_noise=torch.zeros_like(x) if self.eta else None
        )
        mean = out.prev_sample
        prev = mean if noise is None or std == 0 else mean + std * noise
        return Step(t, prev, mean, std, out.pred_original_sample)
