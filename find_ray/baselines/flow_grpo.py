"""Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL"), after
yifan123/flow_grpo: the flow-matching Euler sampler turned into an SDE (`flow_chain.FlowChain`)
is a policy whose actions are the steps' Gaussian draws; LoRA on the velocity model is trained
with GRPO: advantages relative to the group of images drawn for the same prompt, PPO's clipped
ratio, and a KL penalty to the reference (the base model, LoRA off).

One epoch (`scripts/train_sd3.py`) = `prompts_per_epoch` prompts x `group_size` images sampled
with the SDE (latents and per-step log-probs kept), rewards, group advantages, samples whose
advantage is 0 dropped (a group that all scored alike teaches nothing), then `inner_epochs`
passes over the rest in train batches, each trained on the first
int(timestep_fraction * steps) steps in order, gradients accumulated over the batches and steps
of one of `updates_per_epoch` AdamW updates (the reference's gradient accumulation is half an
epoch's batches: two updates per epoch). Evaluation samples the ODE (noise level 0), as the
reference's `eval` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from find_ray.baselines.chain import Conditions, ScoreFn
from find_ray.baselines.ddpo import sample_with_log_probs
from find_ray.baselines.flow_chain import FlowChain
from find_ray.baselines.lora import LoraTrainer, adapters_disabled
from find_ray.errors import ConfigError


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO's settings: flow_grpo's config/base.py and its geneval_sd3 config, with the
    batch sizes (48 prompts x 24 images per epoch there, on 32 GPUs) scaled to one machine."""

    # the chain, used when the trainer is given a pipeline (a given chain keeps its own)
    steps: int = 10  # sample.num_steps
    guidance: float = 4.5  # sample.guidance_scale (train.cfg=True: also in the train passes)
    noise_level: float = 0.7  # sample.noise_level: a of the SDE
    eval_noise_level: float = 0.0  # `generate`'s: the reference evaluates the ODE
    # LoRA (r=32, alpha=64 on SD3's attention) and AdamW
    rank: int = 32
    alpha: float = 64.0
    lr: float = 3e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    # GRPO
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    beta: float = 0.04  # weight of the KL to the reference (geneval_sd3)
    timestep_fraction: float = 0.99  # trains the first int(0.99 * steps) steps
    inner_epochs: int = 1
    global_std: bool = True  # advantages divided by the std of the whole epoch's rewards
    # batches
    prompts_per_epoch: int = 2
    group_size: int = 8  # sample.num_image_per_prompt: the images a prompt's advantage compares
    sample_batch_size: int = 8  # images per sampling call
    train_batch_size: int = 8  # images per training forward
    updates_per_epoch: int = 2  # AdamW steps per inner epoch

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError("flow_grpo.group_size: at least 2 images per prompt to compare")
        sizes = ("prompts_per_epoch", "sample_batch_size", "train_batch_size", "updates_per_epoch")
        if min(getattr(self, key) for key in sizes) < 1 or self.inner_epochs < 1:
            raise ConfigError(f"flow_grpo: {', '.join(sizes)} and inner_epochs must be positive")
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError("flow_grpo.timestep_fraction: in (0, 1]")


def group_advantages(
    prompts: list[str], rewards: torch.Tensor, global_std: bool = True
) -> torch.Tensor:
    """GRPO's advantages (B,): each reward minus the mean of its prompt's group, divided by
    (the population std of all `rewards` if global_std, else of the group) + 1e-4, as
    flow_grpo's PerPromptStatTracker cleared after every epoch."""
    values = rewards.detach().double().cpu()
    advantages = torch.empty_like(values)
    for prompt in sorted(set(prompts)):
        mask = torch.tensor([p == prompt for p in prompts])
        group = values[mask]
        std = (values if global_std else group).std(unbiased=False) + 1e-4
        advantages[mask] = (group - group.mean()) / std
    return advantages.to(rewards.dtype).to(rewards.device)


def grpo_loss(
    chain: FlowChain,
    conditions: Conditions,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x_next: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    config: FlowGRPOConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-GRPO's loss at one step `t` shared by a batch: the SDE step is recomputed under the
    current UNet (one guided call) and scores the stored x_next.

        ratio       = exp(log p_theta(x_next | x_t) - old_log_prob)
        policy_loss = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))), |A| <= adv_clip_max
        kl          = mean_batch( mean_dims((mean_theta - mean_ref)^2) / (2 std_t^2) )
        loss        = policy_loss + beta kl

    mean_ref is the step's mean under the reference (LoRA off, one more guided call, no
    gradient) and std_t the SDE's std before sqrt(|dt|), as the reference computes it. Returns
    the loss and info: policy_loss, kl, approx_kl (0.5 mean squared log-ratio), clipfrac,
    ratio_mean.
    """
    model_input = chain.model_input(x_t, t)
    kl = torch.zeros((), device=x_t.device)
    if config.beta > 0:  # the reference first: disabling the adapters toggles their grads
        with torch.no_grad(), adapters_disabled(chain.unet):
            ref_output = chain.model_output(model_input, t, conditions)
        ref_mean = chain.step(ref_output, t, x_t, None).mean
    step = chain.step(chain.model_output(model_input, t, conditions), t, x_t, None)
    if config.beta > 0:
        std_t = chain.scales(t)[2]
        kl = ((step.mean - ref_mean) ** 2).flatten(1).mean(1).mean() / (2 * std_t**2)
    log_ratio = chain.log_prob(step, x_next.detach()) - old_log_prob
    ratio = torch.exp(log_ratio)
    adv = advantages.clamp(-config.adv_clip_max, config.adv_clip_max)
    bounded = ratio.clamp(1.0 - config.clip_range, 1.0 + config.clip_range)
    policy_loss = torch.maximum(-adv * ratio, -adv * bounded).mean()
    loss = policy_loss + config.beta * kl
    with torch.no_grad():
        info = {
            "policy_loss": policy_loss.item(),
            "kl": kl.item(),
            "approx_kl": (0.5 * log_ratio.square().mean()).item(),
            "clipfrac": ((ratio - 1.0).abs() > config.clip_range).float().mean().item(),
            "ratio_mean": ratio.mean().item(),
        }
    return loss, info


class FlowGRPOTrainer(LoraTrainer):
    """Flow-GRPO with LoRA on `pipe_or_chain`'s velocity UNet (the base weights stay frozen).

    reward_fn(images (B, 3, H, W) in [0, 1], prompts) -> (B,) rewards, no gradient needed (the
    shapes world's exact detector). All UNet calls of `epoch` (sampling, training passes and
    the reference's passes for the KL) count as "train" NFE; those of `generate` as "inference".
    """

    def __init__(
        self,
        pipe_or_chain: Any,
        reward_fn: ScoreFn,
        prompts: list[str],
        *,
        config: FlowGRPOConfig | None = None,
        seed: int = 0,
    ):
        self.config = config = config or FlowGRPOConfig()
        super().__init__(pipe_or_chain, prompts, config, seed)  # AdamW from the config
        if not isinstance(self.chain, FlowChain) or self.chain.eta <= 0:
            raise ConfigError(
                "flow_grpo: trains the SDE of a flow-matching chain (a FlowChain with "
                "noise_level > 0)"
            )
        self.train_timesteps = int(len(self.chain.timesteps) * config.timestep_fraction)
        if self.train_timesteps < 1:
            raise ConfigError("flow_grpo.timestep_fraction leaves no step to train on")
        self.reward_fn = reward_fn

    def make_chain(self, pipe: Any, config: FlowGRPOConfig) -> FlowChain:
        return FlowChain(pipe, config.steps, config.guidance, config.noise_level)

    def epoch_prompts(self) -> list[str]:
        """`prompts_per_epoch` distinct prompts (while the suite has them), each `group_size`
        times in a row."""
        order = torch.randperm(len(self.prompts), generator=self.generator).tolist()
        picks = [self.prompts[order[i % len(order)]] for i in range(self.config.prompts_per_epoch)]
        return [p for p in picks for _ in range(self.config.group_size)]

    def epoch(self) -> dict[str, float]:
        """One Flow-GRPO epoch (sampling, group advantages, GRPO updates); returns its mean
        statistics."""
        with self.counter.phase("train"):
            self.unet.eval()
            prompts = self.epoch_prompts()
            conditions = self.chain.conditions(prompts)
            latents, log_probs, rewards = self._sample(prompts, conditions)
            advantages = group_advantages(prompts, rewards, self.config.global_std)
            kept = (advantages != 0).nonzero().flatten()
            self.unet.train()
            info = self._train_on(latents, log_probs, conditions, advantages, kept)
            self.unet.eval()
        out = {k: sum(v) / len(v) for k, v in info.items() if v}
        out.update(
            reward_mean=rewards.mean().item(),
            reward_std=rewards.std(unbiased=False).item(),
            kept_fraction=len(kept) / len(prompts),
        )
        return out

    def _sample(
        self, prompts: list[str], conditions: Conditions
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The SDE from fresh z_T for every prompt: latents (T+1, N, ...), log-probs (N, T)
        and rewards (N,)."""
        latents, log_probs, rewards = [], [], []
        for lo in range(0, len(prompts), self.config.sample_batch_size):
            index = list(range(lo, min(lo + self.config.sample_batch_size, len(prompts))))
            rollout = sample_with_log_probs(
                self.chain, conditions.select(index), self.noise(len(index)), self.generator
            )
            with torch.no_grad():
                r = self.reward_fn(rollout.images, [prompts[i] for i in index])
            rewards.append(torch.as_tensor(r, dtype=torch.float32).flatten().cpu())
            latents.append(rollout.latents)
            log_probs.append(rollout.log_probs)
        return torch.cat(latents, dim=1), torch.cat(log_probs), torch.cat(rewards)

    def _train_on(
        self,
        latents: torch.Tensor,
        log_probs: torch.Tensor,
        conditions: Conditions,
        advantages: torch.Tensor,
        kept: torch.Tensor,
    ) -> dict[str, list[float]]:
        """`inner_epochs` passes over the kept samples: per train batch, GRPO's loss at each of
        the first `train_timesteps` steps; an AdamW step after each share of the batches."""
        cfg, chain, device = self.config, self.chain, self.unet.device
        info: dict[str, list[float]] = {"loss": [], "policy_loss": [], "kl": [], "clipfrac": []}
        advantages = advantages.to(device)
        for _ in range(cfg.inner_epochs if len(kept) else 0):
            order = kept[torch.randperm(len(kept), generator=self.generator)]
            batches = order.split(cfg.train_batch_size)
            per_update = math.ceil(len(batches) / cfg.updates_per_epoch)
            for b, idx in enumerate(batches):
                share = min(per_update, len(batches) - (b // per_update) * per_update)
                c = conditions.select(idx)
                for j in range(self.train_timesteps):
                    loss, step_info = grpo_loss(
                        chain,
                        c,
                        latents[j, idx],
                        chain.timesteps[j],
                        latents[j + 1, idx],
                        log_probs[idx, j],
                        advantages[idx.to(device)],
                        cfg,
                    )
                    (loss / (share * self.train_timesteps)).backward()
                    info["loss"].append(loss.item())
                    for key in ("policy_loss", "kl", "clipfrac"):
                        info[key].append(step_info[key])
                if (b + 1) % per_update == 0 or b + 1 == len(batches):
                    self.optimizer_step(cfg.max_grad_norm)
        return info

    def generate(
        self, prompts: list[str], z_T: torch.Tensor | None = None, eta: float | None = None
    ) -> torch.Tensor:
        """Images of the tuned UNet with noise level `eta` (default config.eval_noise_level,
        0: the ODE, i.e. the pipeline's own sampler)."""
        noise_level = self.config.eval_noise_level if eta is None else eta
        return super().generate(prompts, z_T, noise_level)
