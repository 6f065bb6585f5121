"""The flow-matching sampler one step at a time, for Flow-GRPO and ReNO.

`FlowChain` runs the pipeline's own UNet (a velocity model) on a private copy of its
`FlowMatchEulerDiscreteScheduler` and its sigmas. Each step is Flow-GRPO's SDE form of the Euler
step (yifan123/flow_grpo, `sde_step_with_logprob`): with noise level a,

    std_t = a sqrt(sigma / (1 - sigma))      (sigma = 1: sigma / (1 - sigmas[1]))
    mean  = x + dt v + std_t^2 dt / (2 sigma) (x + (1 - sigma) v),     dt = sigma_next - sigma < 0
    x'    ~ N(mean, std_t^2 |dt| I)

At a = 0 it is the scheduler's Euler step x + dt v, so the chain reproduces the pipeline's ODE
sampler from the same z_T bit for bit (tested). The loop, conditions and log-density are
`chain.Chain`'s, shared with the DDIM chain.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from find_ray.baselines.chain import Chain, Step
from find_ray.errors import ConfigError


class FlowChain(Chain):
    """Flow-matching Euler sampling on `pipe`'s UNet: `steps` steps, CFG `guidance`, and
    `noise_level` a of the SDE (0: the ODE). `eta` holds a, the chain's noise knob under the
    name the shared code (the sampling loop, LoraTrainer.generate) reads."""

    def __init__(self, pipe: Any, steps: int, guidance: float, noise_level: float):
        if not hasattr(pipe, "unet") or not isinstance(
            getattr(pipe, "scheduler", None), FlowMatchEulerDiscreteScheduler
        ):
            raise ConfigError(
                f"model: the flow chain methods (Flow-GRPO, ReNO) run a UNet with a "
                f"FlowMatchEulerDiscreteScheduler (the shapes flow model), not "
                f"{type(pipe).__name__}"
            )
        if noise_level < 0:
            raise ConfigError(f"the flow chain's noise level must be >= 0, got {noise_level}")
        super().__init__(pipe, guidance)
        self.eta = noise_level
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(steps)
        self.sigmas = self.scheduler.sigmas.float()

    def index(self, t: torch.Tensor | float) -> int:
        """The step index of timestep t in the chain's schedule."""
        hits = (self.timesteps.cpu() == torch.as_tensor(t).cpu()).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {float(t)} is not one of the chain's {self.timesteps}")
        return int(hits[0])

    def scales(self, t: torch.Tensor | float) -> tuple[float, torch.Tensor, float]:
        """(sigma, dt, std_t) of the step at t: its noise level, sigma_next - sigma (a 0-d
        float32 tensor, as the scheduler computes it) and the SDE's std_t (before the
        sqrt(|dt|) of the step's Gaussian)."""
        i = self.index(t)
        sigma, dt = float(self.sigmas[i]), self.sigmas[i + 1] - self.sigmas[i]
        denominator = 1 - (float(self.sigmas[1]) if sigma == 1 else sigma)
        std_t = self.eta * math.sqrt(sigma / denominator) if self.eta else 0.0
        return sigma, dt, std_t

    def step(
        self, output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, noise: torch.Tensor | None
    ) -> Step:
        """The SDE step at t from x with the velocity `output`: prev = mean + std * noise."""
        sigma, dt, std_t = self.scales(t)
        v, x = output.float(), x.float()
        mean = x + dt.to(x.device) * v  # the scheduler's Euler step, to the bit
        if std_t > 0:
            mean = mean + (std_t**2 * float(dt) / (2 * sigma)) * (x + (1 - sigma) * v)
        std = std_t * math.sqrt(-float(dt))
        prev = mean if noise is None or std == 0 else mean + std * noise
        return Step(t, prev, mean, std, x - sigma * v)
