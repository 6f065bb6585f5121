"""ReNO (Eyring et al. 2024, "ReNO: Enhancing One-step Text-to-Image Models through Reward-based
Noise Optimization"), after ExplainableML/ReNO's `training/trainer.py`.

ReNO leaves the model alone and optimises, per prompt, only the initial noise z_T of a one- or
few-step sampler by gradient ascent on a differentiable reward through the whole sampler. A
regulariser keeps z_T typical for N(0, I): the negative log-likelihood of its norm r = ||z||
under the chi distribution with d degrees of freedom,

    R(z) = ||z||^2 / 2 - (d - 1) log ||z||      (+ const; smallest at ||z||^2 = d - 1)

weighted by `reg_weight` (0.01). As in the reference the optimiser is SGD (lr 5, momentum 0.9,
Nesterov) with the gradient's norm clipped to 0.1, the last iteration renders without a step,
and the image kept for each prompt is the best-scoring one seen (best-so-far, by the reward
alone). Here the sampler is a chain (the flow model's Euler ODE, or DDIM eta 0), run with
gradients, its UNet frozen: only z_T moves.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from find_ray.baselines.chain import Chain, ScoreFn
from find_ray.baselines.dno import clip_per_prompt_, frozen
from find_ray.errors import ConfigError


@dataclass
class ReNOConfig:
    """ReNO's settings; the defaults are its arguments.py (`--optim sgd`)."""

    iterations: int = 50  # n_iters: renders per prompt (the last one takes no step)
    lr: float = 5.0
    momentum: float = 0.9
    nesterov: bool = True
    grad_clip: float = 0.1  # max norm of each prompt's gradient on z_T
    reg_weight: float = 0.01  # weight of the norm regulariser (0: off)
    reward_weight: float = 1.0  # the reward loss is reward_weight * (1 - reward)

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.lr <= 0 or self.grad_clip <= 0 or self.reg_weight < 0:
            raise ConfigError(
                "reno: iterations, lr and grad_clip must be positive, reg_weight >= 0"
            )


def norm_regulariser(z: torch.Tensor) -> torch.Tensor:
    """ReNO's regulariser of each latent z (B, *latent): ||z||^2 / 2 - (d - 1) log ||z||, the
    chi_d negative log-likelihood of the norm up to a constant, computed in fp32 (B,)."""
    norm = torch.linalg.vector_norm(z.flatten(1).float(), dim=1)
    d = z[0].numel()
    return 0.5 * norm**2 - (d - 1) * torch.log(norm)


@dataclass
class ReNOResult:
    """Optimised noise per prompt and what it gives.

    z_T: (B, *latent), each prompt's best-scoring latent; best_images (B, 3, H, W) in [0, 1]
    and best_rewards (B,): what it rendered and scored; rewards: (iterations, B), each
    iteration's reward (iteration 0 is the starting noise's); final_z: the latent after the
    last step; snapshots: iteration count -> the best images after that many renders.
    """

    z_T: torch.Tensor
    best_images: torch.Tensor
    best_rewards: torch.Tensor
    rewards: torch.Tensor
    final_z: torch.Tensor
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


class BestSoFar:
    """Per prompt, the best reward seen, with the latent and image that made it."""

    def __init__(self, batch: int):
        self.rewards = torch.full((batch,), -torch.inf)
        self.z: torch.Tensor | None = None
        self.images: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, rewards: torch.Tensor, z: torch.Tensor, images: torch.Tensor) -> None:
        rewards = rewards.detach().float().cpu()
        better = rewards > self.rewards
        if self.z is None:
            self.z, self.images = z.detach().clone(), images.detach().clone()
        self.rewards = torch.where(better, rewards, self.rewards)
        self.z[better.to(z.device)] = z.detach()[better.to(z.device)]
        self.images[better.to(images.device)] = images.detach()[better.to(images.device)]


def optimise_initial_noise(
    chain: Chain,
    prompts: list[str],
    reward_fn: ScoreFn,
    z_T: torch.Tensor,
    config: ReNOConfig | None = None,
    *,
    snapshots: Collection[int] = (),
    progress: bool = False,
) -> ReNOResult:
    """ReNO: per prompt, gradient ascent of reward_fn(images, prompts) (B,) over z_T through
    `chain` (its eta must be 0: ReNO's samplers are deterministic), minimising

        reward_weight * (1 - reward) + reg_weight * norm_regulariser(z_T)

    z_T: (B, *latent) starting latents (left unchanged), B = len(prompts). Each iteration
    renders every prompt once (B x steps NFE, x2 under guidance); iterations - 1 of them
    backpropagate (no UNet call) and step. snapshots: iteration counts k whose best-so-far
    images (after k renders) are returned; they cost nothing more.
    """
    config = config or ReNOConfig()
    if chain.eta:
        raise ValueError(f"ReNO optimises z_T of a deterministic sampler: eta is {chain.eta}")
    if z_T.shape[0] != len(prompts):
        raise ValueError(f"z_T holds {z_T.shape[0]} latents for {len(prompts)} prompts")
    z = z_T.detach().clone().float().requires_grad_(True)
    optimiser = torch.optim.SGD(
        [z], lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
    )
    c, best, history, taken = chain.conditions(prompts), BestSoFar(len(prompts)), [], {}
    with frozen(chain.unet, chain.vae, getattr(chain.pipe, "text_encoder", None)):
        for i in tqdm(range(config.iterations), desc="reno", disable=not progress):
            optimiser.zero_grad()
            images = chain.decode(chain.sample(z.to(z_T.dtype), c).final)
            rewards = reward_fn(images, prompts).float()
            best.update(rewards, z, images)
            history.append(rewards.detach().cpu())
            if i + 1 in snapshots:
                taken[i + 1] = best.images.clone()
            if i == config.iterations - 1:
                break
            loss = (config.reward_weight * (1 - rewards)).sum()
            if config.reg_weight:
                loss = loss + config.reg_weight * norm_regulariser(z).sum()
            loss.backward()
            clip_per_prompt_(z.grad, config.grad_clip)
            optimiser.step()
    return ReNOResult(
        z_T=best.z.to(z_T.dtype),
        best_images=best.images,
        best_rewards=best.rewards,
        rewards=torch.stack(history) if history else torch.empty(0, len(prompts)),
        final_z=z.detach().to(z_T.dtype),
        snapshots=taken,
    )
