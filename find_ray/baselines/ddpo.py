"""DDPO (Black et al., "Training Diffusion Models with Reinforcement Learning"), after
kvablack/ddpo-pytorch: the DDIM chain with eta > 0 is a policy whose actions are the steps'
Gaussian draws; LoRA on the UNet is trained with PPO's clipped surrogate on per-prompt
normalised rewards, each timestep of each trajectory one PPO sample.

One epoch = sample a batch of trajectories (log-probs stored), score the images, turn rewards
into advantages, then `inner_epochs` passes over the batch, each over a random subset
(`timestep_fraction`) of the stochastic timesteps in random order, gradients accumulated over
a train batch's timesteps (and `gradient_accumulation_steps` train batches) before one AdamW
step with the gradient norm clipped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from find_ray.baselines.chain import Conditions, DenoisingChain, ScoreFn
from find_ray.baselines.lora import LoraTrainer


@dataclass
class DDPOConfig:
    """DDPO's settings; the defaults are ddpo-pytorch's config/base.py (`use_lora=True`)."""

    # the chain, used when the trainer is given a pipeline (a given chain keeps its own)
    steps: int = 50  # sample.num_steps
    guidance: float = 5.0  # sample.guidance_scale (train.cfg=True: also in the train passes)
    eta: float = 1.0  # sample.eta
    eval_eta: float = 1.0  # `generate`'s eta; ddpo-pytorch evaluates with its sampler, eta=1
    # LoRA and AdamW
    rank: int = 4  # LoRAAttnProcessor's default rank
    lr: float = 3e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    # PPO
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    inner_epochs: int = 1
    timestep_fraction: float = 1.0
    # batches: an epoch samples sample_batches x sample_batch_size trajectories
    sample_batch_size: int = 1
    sample_batches: int = 2  # sample.num_batches_per_epoch
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    # advantages: per-prompt statistics (else the batch's)
    per_prompt_stat_tracking: bool = True
    stat_buffer_size: int = 16
    stat_min_count: int = 16


@dataclass
class Rollout:
    """Trajectories with their per-step log-probs.

    latents: (T+1, B, *latent), x_T first; timesteps: (T,); log_probs: (B, T), the log-density
    of latents[i + 1] under step i's Gaussian (0 where the step is deterministic); stochastic:
    (T,) bool, the steps with a Gaussian (std > 0); images: (B, 3, H, W) in [0, 1].
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    log_probs: torch.Tensor
    stochastic: torch.Tensor
    images: torch.Tensor


def stochastic_steps(chain: DenoisingChain) -> list[int]:
    """The indices of the chain's steps that draw noise (std > 0).

    With eta > 0 every DDIM step does but a last one to t < 0 when the scheduler has
    set_alpha_to_one (the shapes world's 'trailing' schedule): it lands on x_0 exactly.
    ddpo-pytorch clamps that step's target to t = 0 instead; we keep the scheduler's step and
    leave it out of training (a deterministic step carries no policy gradient).
    """
    stride = chain.scheduler.config.num_train_timesteps // chain.scheduler.num_inference_steps
    return [
        i
        for i, t in enumerate(chain.timesteps)
        if chain.eta * float(chain.scheduler._get_variance(t, t - stride)) ** 0.5 > 0
    ]


@torch.no_grad()
def sample_with_log_probs(
    chain: DenoisingChain,
    conditions: Conditions,
    z_T: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Runs the stochastic chain from z_T, keeping every latent and each step's log-prob."""
    if chain.eta == 0:
        raise ValueError("DDPO needs a stochastic sampler: the chain's eta is 0 (use eta > 0)")
    trajectory = chain.sample(z_T, conditions, generator=generator)
    zero = torch.zeros(z_T.shape[0], device=z_T.device)
    log_probs = [
        chain.log_prob(step, trajectory.latents[i + 1]) if step.std > 0 else zero
        for i, step in enumerate(trajectory.steps)
    ]
    return Rollout(
        latents=torch.stack(trajectory.latents),
        timesteps=chain.timesteps.clone(),
        log_probs=torch.stack(log_probs, dim=1),
        stochastic=torch.tensor([step.std > 0 for step in trajectory.steps]),
        images=chain.decode(trajectory.final),
    )


class PerPromptStats:
    """ddpo-pytorch's PerPromptStatTracker: each prompt's rewards normalised by the mean and
    std of its last `buffer_size` rewards (this batch's included), or by the whole batch's
    when fewer than `min_count` are buffered. The buffers persist across epochs."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        """Advantages (B,) for `rewards` (B,) of `prompts`; adds the rewards to the buffers."""
        values = rewards.detach().double().cpu()
        advantages = torch.empty_like(values)
        for prompt in sorted(set(prompts)):
            mask = torch.tensor([p == prompt for p in prompts])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[mask].tolist())
            ref = values if len(buffer) < self.min_count else torch.tensor(list(buffer))
            std = ref.std(unbiased=False) + 1e-6  # np.std: population std
            advantages[mask] = (values[mask] - ref.mean()) / std
        return advantages.to(rewards.dtype).to(rewards.device)

    def stats(self) -> dict[str, dict[str, float]]:
        """Each prompt's buffered mean, std and count."""
        out = {}
        for prompt, buffer in self.buffers.items():
            v = torch.tensor(list(buffer), dtype=torch.float64)
            out[prompt] = {
                "mean": v.mean().item(),
                "std": v.std(unbiased=False).item(),
                "count": len(v),
            }
        return out


def ppo_loss(
    chain: DenoisingChain,
    conditions: Conditions,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x_prev: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate for one timestep `t` shared by a batch: the step's Gaussian is
    recomputed under the current UNet (one guided UNet call) and scores the stored x_prev.

    Returns the loss (mean over the batch) and info: approx_kl (0.5 mean squared log-ratio),
    clipfrac (share of |ratio - 1| > clip_range), ratio_mean.
    """
    output = chain.model_output(chain.scheduler.scale_model_input(x_t, t), t, conditions)
    log_prob = chain.log_prob(chain.step(output, t, x_t, None), x_prev.detach())
    adv = advantages.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        info = {
            "approx_kl": (0.5 * log_ratio.square().mean()).item(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean().item(),
            "ratio_mean": ratio.mean().item(),
        }
    return loss, info


def _select(c: Conditions, index: torch.Tensor) -> Conditions:
    return Conditions(c.cond[index], None if c.uncond is None else c.uncond[index])


def _cat(cs: list[Conditions]) -> Conditions:
    uncond = None if cs[0].uncond is None else torch.cat([c.uncond for c in cs])
    return Conditions(torch.cat([c.cond for c in cs]), uncond)


class DDPOTrainer(LoraTrainer):
    """DDPO with LoRA on `pipe_or_chain`'s UNet (the base weights stay frozen).

    reward_fn(images (B, 3, H, W) in [0, 1], prompts) -> (B,) rewards, no gradient needed.
    prompts: the training prompts, drawn uniformly with replacement for each sample.
    All UNet calls of `epoch` (sampling and training passes) count as "train" NFE; those of
    `generate` as "inference".
    """

    def __init__(
        self,
        pipe_or_chain: Any,
        reward_fn: ScoreFn,
        prompts: list[str],
        config: DDPOConfig | None = None,
        seed: int = 0,
    ):
        self.config = config = config or DDPOConfig()
        super().__init__(
            pipe_or_chain,
            prompts,
            config,
            seed,
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
            eps=config.adam_eps,
        )
        if self.chain.eta == 0:
            raise ValueError("DDPO trains a stochastic sampler: eta must be > 0")
        samples = config.sample_batch_size * config.sample_batches
        per_step = config.train_batch_size * config.gradient_accumulation_steps
        if samples % per_step:
            raise ValueError(
                f"the {samples} samples of an epoch do not split into optimizer steps of "
                f"train_batch_size x gradient_accumulation_steps = {per_step}"
            )
        self.steps = stochastic_steps(self.chain)  # the timesteps PPO can train on
        self.train_timesteps = int(len(self.steps) * config.timestep_fraction)
        if self.train_timesteps < 1:
            raise ValueError("timestep_fraction leaves no (stochastic) timestep to train on")
        self.reward_fn = reward_fn
        self.stats = PerPromptStats(config.stat_buffer_size, config.stat_min_count)
        self.optimizer_steps = 0

    def extra_state(self) -> dict[str, Any]:
        """The per-prompt reward buffers and the optimiser-step count."""
        buffers = {prompt: list(buffer) for prompt, buffer in self.stats.buffers.items()}
        return {"buffers": buffers, "optimizer_steps": self.optimizer_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        size = self.stats.buffer_size
        self.stats.buffers = {p: deque(b, maxlen=size) for p, b in state["buffers"].items()}
        self.optimizer_steps = int(state["optimizer_steps"])

    def _advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        if self.config.per_prompt_stat_tracking:
            return self.stats.update(prompts, rewards)
        return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-8)

    def epoch(self) -> dict[str, float]:
        """One DDPO epoch (sampling, advantages, PPO updates); returns its mean statistics."""
        with self.counter.phase("train"):
            self.unet.eval()
            sampled, prompts, reward = self._sample()
            advantages = self._advantages(prompts, reward).to(self.unet.device)
            self.unet.train()
            info = self._train_on(*sampled, advantages)
            self.unet.eval()
        out = {k: sum(v) / len(v) for k, v in info.items()}
        out.update(reward_mean=reward.mean().item(), reward_std=reward.std(unbiased=False).item())
        return out

    def _sample(self) -> tuple[tuple, list[str], torch.Tensor]:
        """`sample_batches` batches of the chain: ((latents (T+1, N, ...), log-probs (N, T),
        conditions), their prompts, their rewards (N,))."""
        cfg, chain = self.config, self.chain
        rollouts, conds, prompts, rewards = [], [], [], []
        for _ in range(cfg.sample_batches):
            batch_prompts = self.draw_prompts(cfg.sample_batch_size)
            c = chain.conditions(batch_prompts)
            rollout = sample_with_log_probs(
                chain, c, self.noise(len(batch_prompts)), self.generator
            )
            with torch.no_grad():
                r = self.reward_fn(rollout.images, batch_prompts)
            rewards.append(torch.as_tensor(r, dtype=torch.float32).flatten().cpu())
            rollouts.append(rollout)
            conds.append(c)
            prompts += batch_prompts
        latents = torch.cat([r.latents for r in rollouts], dim=1)
        log_probs = torch.cat([r.log_probs for r in rollouts])
        return (latents, log_probs, _cat(conds)), prompts, torch.cat(rewards)

    def _train_on(
        self, latents: torch.Tensor, log_probs: torch.Tensor, cond, advantages: torch.Tensor
    ) -> dict[str, list[float]]:
        """`inner_epochs` of PPO steps on `train_timesteps` random steps per train batch."""
        cfg, chain, device = self.config, self.chain, self.unet.device
        info: dict[str, list[float]] = {"loss": [], "approx_kl": [], "clipfrac": []}
        accumulate = self.train_timesteps * cfg.gradient_accumulation_steps
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(log_probs.shape[0], generator=self.generator)
            for b, idx in enumerate(order.split(cfg.train_batch_size)):
                # one timestep order per train batch (ddpo-pytorch: per sample)
                times = torch.randperm(len(self.steps), generator=self.generator)
                idx = idx.to(device)
                c = _select(cond, idx)
                for j in [self.steps[k] for k in times[: self.train_timesteps].tolist()]:
                    loss, step_info = ppo_loss(
                        chain,
                        c,
                        latents[j, idx],
                        chain.timesteps[j],
                        latents[j + 1, idx],
                        log_probs[idx, j],
                        advantages[idx],
                        cfg.clip_range,
                        cfg.adv_clip_max,
                    )
                    (loss / accumulate).backward()
                    info["loss"].append(loss.item())
                    for key in ("approx_kl", "clipfrac"):
                        info[key].append(step_info[key])
                if (b + 1) % cfg.gradient_accumulation_steps == 0:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                    self.optimizer_steps += 1
        return info

    def generate(
        self, prompts: list[str], z_T: torch.Tensor | None = None, eta: float | None = None
    ) -> torch.Tensor:
        """Images of the tuned UNet with eta `eta` (default config.eval_eta: ddpo-pytorch
        evaluates with its training sampler)."""
        return super().generate(prompts, z_T, self.config.eval_eta if eta is None else eta)
