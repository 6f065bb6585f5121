"""DRTune (Wu et al. 2024, "Deep Reward Supervisions for Tuning Text-to-Image Diffusion Models").

LoRA fine-tuning by backpropagating a differentiable reward through the whole sampling chain
down to the input noise. Three devices keep that affordable and stable:

- stop-gradient at the denoiser's input: the UNet sees sg(x_t), so gradients reach earlier
  latents only through the sampler's linear path x_{t-1} = a_t x_t + b_t eps(sg(x_t));
- only K of the sampled steps build a graph, evenly spaced with a random offset; the others
  run under no_grad (their outputs still enter the linear path, as constants);
- early stop: sampling ends at a random step m and the reward scores that step's predicted x_0.

The chain is deterministic DDIM (eta = 0) by default, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from find_ray.baselines.chain import Conditions, DenoisingChain, ScoreFn
from find_ray.baselines.lora import LoraTrainer
from find_ray.errors import ConfigError


@dataclass
class DRTuneConfig:
    """DRTune's settings.

    train_steps: K, the steps per chain whose UNet call builds a graph.
    early_stop: the closed range of the fraction of final steps left out: floor(f * T) steps
        are skipped, drawn uniformly between the two ends ((0, 0): never stop early).
    steps, guidance, eta: the training chain, used when the trainer is given a pipeline.
    checkpoint: recompute the K UNet calls in the backward pass (memory for NFE; the
        recomputations count as training NFE).
    The defaults are unverified against the paper's text: K = 5 of T = 50 and eta = 0 as we
    recall it; rank, lr, the early-stop range and the guidance are the bench's choice.
    """

    rank: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-2
    train_steps: int = 5
    early_stop: tuple[float, float] = (0.0, 0.2)
    batch_size: int = 4
    max_grad_norm: float = 1.0
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    checkpoint: bool = False

    def __post_init__(self) -> None:
        low, high = self.early_stop
        if not 0 <= low <= high < 1:
            raise ConfigError(f"drtune: early_stop needs 0 <= low <= high < 1, got {low, high}")
        if self.train_steps < 1 or self.batch_size < 1 or self.rank < 1:
            raise ConfigError("drtune: train_steps, batch_size and rank must be positive")


@dataclass
class DRTuneInfo:
    """What one DRTune loss saw: the stop step m, the trained step indices, the rewards."""

    stop_at: int
    train_steps: list[int]
    rewards: torch.Tensor  # (B,), detached
    grad_norm: float | None = None  # set by DRTuneTrainer.step

    @property
    def reward(self) -> float:
        return float(self.rewards.mean())


def training_steps(T: int, K: int, generator: torch.Generator | None = None) -> set[int]:
    """K of the step indices 0..T-1, evenly spaced with a random offset: with stride
    s = T // K and offset o ~ U{0, ..., s - 1}, the steps o, o + s, ..., o + (K - 1) s."""
    if not 1 <= K <= T:
        raise ValueError(f"training_steps needs 1 <= K <= T, got K={K}, T={T}")
    stride = T // K
    offset = int(torch.randint(stride, (), generator=generator))
    return {offset + i * stride for i in range(K)}


def early_stop_step(T: int, low: int, high: int, generator: torch.Generator | None = None) -> int:
    """The step index m ~ U{low, ..., high} after which the chain stops (T - 1: the last step)."""
    if not 0 <= low <= high <= T - 1:
        raise ValueError(f"early_stop_step needs 0 <= low <= high <= T - 1, got {low, high, T}")
    return low + int(torch.randint(high - low + 1, (), generator=generator))


def drtune_loss(
    chain: DenoisingChain,
    conditions: Conditions,
    z_T: torch.Tensor,
    prompts: list[str],
    reward_fn: ScoreFn,
    config: DRTuneConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, DRTuneInfo]:
    """-mean reward of the predicted x_0 at a random stop step m, the chain run from z_T with
    the UNet input detached and only K steps (chosen among the m + 1 run, all of them if
    fewer) building a graph. Draws m, then the steps, then (eta > 0) the chain's noises."""
    T = len(chain.timesteps)
    low, high = (min(math.floor(f * T), T - 1) for f in config.early_stop)
    stop = early_stop_step(T, T - 1 - high, T - 1 - low, generator)
    steps = training_steps(stop + 1, min(config.train_steps, stop + 1), generator)
    trajectory = chain.sample(
        z_T,
        conditions,
        generator=generator,
        grad_steps=steps,
        detach_input=True,
        checkpoint=config.checkpoint,
        stop_at=stop,
    )
    rewards = reward_fn(chain.decode(trajectory.final), prompts)
    return -rewards.mean(), DRTuneInfo(stop, sorted(steps), rewards.detach())


class DRTuneTrainer(LoraTrainer):
    """DRTune on a pipeline's UNet (LoRA, AdamW, gradient clipping), counting its NFE.

    pipe_or_chain: a diffusers pipeline (a DDIM chain is built from the config's steps,
        guidance and eta) or a DenoisingChain, used as it is (its eta must be the config's).
    reward_fn: (images in [0, 1], prompts) -> (B,) rewards, differentiable in the images.
    prompts: the training prompts; each step draws a batch of them with replacement.
    """

    def __init__(
        self,
        pipe_or_chain: Any,
        reward_fn: ScoreFn,
        prompts: list[str],
        config: DRTuneConfig | None = None,
        seed: int = 0,
    ):
        self.config = config = config or DRTuneConfig()
        if isinstance(pipe_or_chain, DenoisingChain) and pipe_or_chain.eta != config.eta:
            raise ConfigError(
                f"drtune: the chain's eta {pipe_or_chain.eta} is not the config's {config.eta}"
            )
        super().__init__(
            pipe_or_chain, prompts, config, seed, lr=config.lr, weight_decay=config.weight_decay
        )
        self.reward_fn = reward_fn

    def step(self) -> DRTuneInfo:
        """One optimisation step on a fresh batch of prompts and noises."""
        prompts = self.draw_prompts(self.config.batch_size)
        z_T = self.noise(len(prompts))
        with self.counter.phase("train"):
            loss, info = drtune_loss(
                self.chain,
                self.chain.conditions(prompts),
                z_T,
                prompts,
                self.reward_fn,
                self.config,
                self.generator,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        info.grad_norm = float(norm)
        return info
