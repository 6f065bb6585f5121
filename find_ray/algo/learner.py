"""The FIND learner: rollout store -> DRCM calibration -> clipped policy steps -> new version.

Plain PyTorch; the Ray learner actor only wraps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from find_ray.algo.amortized import AmortizedNoisePolicy
from find_ray.algo.losses import (
    DRCM,
    FindLossConfig,
    advantage_variance_report,
    advantages,
    calibration_step,
    policy_loss,
)
from find_ray.algo.policy import GaussianNoisePolicy, NoisePolicy, diagonal_gaussian_kl
from find_ray.algo.store import Rollout, RolloutStore, prompt_table, stack_rollouts
from find_ray.algo.trust_region import parameters_of, trust_region_

Optimizer = Literal["natural", "sgd", "adamw"]
MIN_SLOPE = 0.1


@dataclass
class PolicyConfig:
    """Which noise policy the learner trains (`policy.*` in a config)."""

    kind: Literal["per_prompt", "amortized"] = "per_prompt"  # amortized: mu, sigma from e_c
    hidden: int = 256  # amortized: MLP width
    grid: int = 8  # amortized: the low-resolution map's size before the learned upsampling

    def __post_init__(self) -> None:
        from find_ray.errors import ConfigError

        if self.hidden < 1 or self.grid < 1:
            raise ConfigError("config keys 'policy.hidden', 'policy.grid': must be >= 1")


@dataclass
class LearnerConfig:
    # natural: SGD on the Fisher-preconditioned gradient (step size loss.policy_lr). For the
    # amortized policy the natural step is taken on a per-prompt copy of its outputs and then
    # projected onto its network (projection_steps AdamW steps at projection_lr on the KL)
    optimizer: Optimizer = "natural"
    projection_steps: int = 100
    projection_lr: float = 1e-3
    epochs: int = 4  # passes over the stored rollouts per update
    minibatch_size: int = 64
    # drcm: A = r - g(mu, sigma, e_c); prompt_mean: A = r - the prompt's mean stored reward
    # (a running mean over the store's window); none: A = r (the no-baseline ablation)
    baseline: Literal["drcm", "prompt_mean", "none"] = "drcm"
    drcm_steps: int = 20  # DRCM MSE steps on the stored rollouts before each policy update
    drcm_pool: int = 0  # average-pool mu/sigma to pool x pool before the DRCM (0: no pooling)
    learn_sigma: bool = True
    sigma_min: float = 0.5  # sigma is squashed into [sigma_min, sigma_max] (max .inf: unbounded)
    sigma_max: float = 2.0
    target_kl: float = 0.0  # per-update trust region on KL(pi_old || pi_new) per prompt (0: off)
    store_capacity: int = 1024
    max_policy_lag: int = 2  # older rollouts are dropped ("stale"); the ratio corrects the rest
    loss: FindLossConfig = field(default_factory=FindLossConfig)

    def __post_init__(self) -> None:
        from find_ray.errors import ConfigError

        for key in ("epochs", "minibatch_size", "store_capacity", "projection_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'learner.{key}': must be >= 1")
        if self.max_policy_lag < 0:
            raise ConfigError("config key 'learner.max_policy_lag': must be >= 0")
        if not 0 < self.sigma_min < 1 < self.sigma_max:
            raise ConfigError(
                "config keys 'learner.sigma_min', 'learner.sigma_max': need 0 < min < 1 < max"
            )
        if self.target_kl < 0:
            raise ConfigError("config key 'learner.target_kl': must be >= 0 (0 turns it off)")


def per_prompt_mean(rewards: Tensor, prompt_ids: Tensor, num_prompts: int) -> Tensor:
    """(num_prompts,) mean reward of each prompt's rollouts (0 for a prompt with none)."""
    total = torch.zeros(num_prompts, dtype=rewards.dtype).index_add_(0, prompt_ids, rewards)
    count = torch.zeros(num_prompts, dtype=rewards.dtype).index_add_(
        0, prompt_ids, torch.ones_like(rewards)
    )
    return total / count.clamp_min(1)


def make_policy(
    cfg: PolicyConfig, learner: LearnerConfig, latent_shape: tuple[int, ...], embeddings: Tensor
) -> NoisePolicy:
    """The policy at initialisation, N(0, I) for every prompt, of the configured kind."""
    bounds = (learner.sigma_min, learner.sigma_max)
    if cfg.kind == "amortized":
        return AmortizedNoisePolicy(
            embeddings, latent_shape, bounds, cfg.hidden, cfg.grid, learner.learn_sigma
        )
    return GaussianNoisePolicy(embeddings.shape[0], latent_shape, bounds)


def natural_gradient_(policy: GaussianNoisePolicy, reduction: str) -> None:
    """Preconditions the gradients in place by the inverse Fisher of the Gaussian.

    For a summed log-density the Fisher is 1/sigma^2 for mu and 2 for log sigma (2 s^2 for the
    raw parameter, s = d log sigma / d raw of the bounded squash; s^2 is floored at MIN_SLOPE^2
    so the step stays finite at the bounds); a per-element mean divides it by the number of
    elements. The natural step on mu is then the advantage-weighted mean of (z - mu):
    scale-free, unlike Adam's per-element unit steps.
    """
    scale = math.prod(policy.shape) if reduction == "mean" else 1.0
    with torch.no_grad():
        _, sigma = policy.mean_std(torch.arange(policy.num_prompts))
        if policy.mu.grad is not None:
            policy.mu.grad.mul_(sigma**2 * scale)
        if policy.log_sigma.grad is not None:
            slope_sq = policy.log_sigma_slope().square().clamp_min(MIN_SLOPE**2)
            policy.log_sigma.grad.mul_(0.5 * scale / slope_sq)


def project_(
    policy: NoisePolicy, target: NoisePolicy, opt: torch.optim.Optimizer, steps: int
) -> Tensor:
    """Fits `policy` to `target` on the training prompts: `steps` steps of `opt` on the mean over
    prompts of KL(target || policy) (summed over the latent); returns the KL left, (P,)."""
    ids = torch.arange(policy.num_prompts)
    with torch.no_grad():
        mu_t, sigma_t = target.mean_std(ids)
    for _ in range(steps):
        loss = diagonal_gaussian_kl(mu_t, sigma_t, *policy.mean_std(ids)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return diagonal_gaussian_kl(mu_t, sigma_t, *policy.mean_std(ids))


class Learner:
    """Holds the policy, the DRCM and the rollout store; `update()` makes one new version."""

    def __init__(
        self,
        cfg: LearnerConfig,
        latent_shape: tuple[int, ...],
        prompts: list[str],
        prompt_embeddings: Tensor,
        seed: int = 0,
        policy: PolicyConfig | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.cfg = cfg
        if len(prompts) != len(prompt_embeddings):
            raise ValueError(f"{len(prompts)} prompts but {len(prompt_embeddings)} embeddings")
        self.prompt_rows = prompt_table(prompts)  # rollouts come keyed by prompt text
        self.prompt_embeddings = prompt_embeddings.float()
        self.policy = make_policy(
            policy or PolicyConfig(), cfg, latent_shape, self.prompt_embeddings
        )
        if isinstance(self.policy, GaussianNoisePolicy):
            self.policy.log_sigma.requires_grad_(cfg.learn_sigma)
        self.drcm = DRCM(
            latent_shape, prompt_embeddings.shape[1], cfg.loss.drcm_hidden, cfg.drcm_pool or None
        )
        # the amortized policy's natural step is projected: its optimiser fits the network
        self.projected = cfg.optimizer == "natural" and not self.policy.independent_prompts
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.projected:
            self.policy_opt = torch.optim.AdamW(params, lr=cfg.projection_lr, weight_decay=0.0)
        elif cfg.optimizer == "adamw":
            self.policy_opt = torch.optim.AdamW(params, lr=cfg.loss.policy_lr, weight_decay=0.0)
        else:
            self.policy_opt = torch.optim.SGD(params, lr=cfg.loss.policy_lr)
        self.drcm_opt = torch.optim.AdamW(self.drcm.parameters(), lr=cfg.loss.drcm_lr)
        self.store = RolloutStore(cfg.store_capacity, cfg.max_policy_lag)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0
        self.skipped_steps = 0  # policy steps whose loss was not finite

    def weights(self) -> tuple[dict[str, Tensor], int]:
        """The current policy parameters (detached copies) and their version."""
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}, self.version

    def add(self, rollouts: list[Rollout]) -> list[int]:
        """Stores scored rollouts; returns the ids rejected as too stale (lag > max_policy_lag)."""
        return [r.rollout_id for r in rollouts if not self.store.add(r, self.version)]

    def update(self) -> dict[str, float]:
        """DRCM calibration, then epochs of clipped policy steps over the store."""
        self.store.evict_stale(self.version)
        if not len(self.store):  # nothing to learn from: a new version with the same weights
            self.version += 1
            return {"store_size": 0.0}
        held = stack_rollouts(self.store.rollouts(), self.prompt_rows)
        pid, emb = held.prompt_row, self.prompt_embeddings
        with torch.no_grad():
            mu, sigma = self.policy.mean_std(torch.arange(self.policy.num_prompts))
        use_drcm = self.cfg.baseline == "drcm"
        if self.cfg.baseline == "prompt_mean":
            prompt_mean = per_prompt_mean(held.reward, pid, self.policy.num_prompts)

        def advantage(ids: Tensor, reward: Tensor) -> Tensor:
            if self.cfg.baseline == "prompt_mean":
                return reward - prompt_mean[ids]
            if not use_drcm:
                return reward
            return advantages(self.drcm, mu[ids], sigma[ids], emb[ids], reward)

        drcm_mse = [
            calibration_step(self.drcm, self.drcm_opt, mu[pid], sigma[pid], emb[pid], held.reward)
            for _ in range(self.cfg.drcm_steps if use_drcm else 0)
        ]
        calibrated = advantage(pid, held.reward)
        metrics: dict[str, float] = {
            **advantage_variance_report(held.reward, calibrated),
            "drcm_mse": drcm_mse[-1] if drcm_mse else float("nan"),
        }
        before = parameters_of(self.policy)
        stepped, opt = self.policy, self.policy_opt
        if self.projected:  # the natural steps go to a per-prompt copy, projected back below
            stepped = GaussianNoisePolicy.copy_of(self.policy)
            stepped.log_sigma.requires_grad_(self.cfg.learn_sigma)
            trained = [p for p in stepped.parameters() if p.requires_grad]
            opt = torch.optim.SGD(trained, lr=self.cfg.loss.policy_lr)
        steps: list[dict[str, float]] = []
        for batch in self.store.minibatches(
            self.cfg.minibatch_size, self.prompt_rows, self.cfg.epochs, self.generator
        ):
            b = batch.prompt_row
            adv = advantage(b, batch.reward)
            loss, step = policy_loss(stepped, batch.z, b, batch.behaviour_logp, adv, self.cfg.loss)
            if not torch.isfinite(loss):  # e.g. an overflowing ratio: skip, never apply it
                self.skipped_steps += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not all(
                torch.isfinite(p.grad).all() for p in stepped.parameters() if p.grad is not None
            ):
                self.skipped_steps += 1  # a non-finite gradient is never applied either
                continue
            if self.cfg.optimizer == "natural":
                natural_gradient_(stepped, self.cfg.loss.logp_reduction)
            opt.step()
            steps.append(step)
        if self.projected:
            with torch.no_grad():
                natural = diagonal_gaussian_kl(mu, sigma, *stepped.mean_std(torch.arange(len(mu))))
            left = project_(self.policy, stepped, self.policy_opt, self.cfg.projection_steps)
            metrics["natural_step_kl"] = natural.mean().item()
            metrics["projection_kl"] = left.mean().item()  # of the natural step, not captured
        if self.cfg.target_kl > 0:
            region = trust_region_(self.policy, before, self.cfg.target_kl)
            metrics["kl_update_raw_max"] = region.kl_raw.max().item()
            metrics["trust_region_scale"] = region.scale.mean().item()
        self.version += 1
        for key in steps[0] if steps else ():
            metrics[key] = sum(s[key] for s in steps) / len(steps)
        metrics["skipped_steps"] = float(self.skipped_steps)
        all_prompts = torch.arange(self.policy.num_prompts)
        with torch.no_grad():
            metrics["kl_to_prior"] = self.policy.kl_to_standard_normal(all_prompts).mean().item()
            prior = self.policy.kl_to_standard_normal(all_prompts, "sum")
            metrics["kl_to_prior_total"] = prior.mean().item()
            new_mu, new_sigma = self.policy.mean_std(all_prompts)
            kl_update = diagonal_gaussian_kl(mu, sigma, new_mu, new_sigma)
        metrics["kl_update_mean"] = kl_update.mean().item()
        metrics["kl_update_max"] = kl_update.max().item()
        metrics["mu_step"] = (new_mu - mu).abs().mean().item()
        metrics["sigma_mean"] = new_sigma.mean().item()
        metrics["sigma_min"] = new_sigma.min().item()
        metrics["sigma_max"] = new_sigma.max().item()
        metrics["store_size"] = float(len(self.store))
        for reason, count in self.store.drops.items():
            metrics[f"drops/{reason}"] = float(count)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: policy, DRCM, optimisers, store, version, RNG."""
        return {
            "policy": self.policy.state_dict(),
            "drcm": self.drcm.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "drcm_opt": self.drcm_opt.state_dict(),
            "store": self.store.state_dict(),
            "version": self.version,
            "skipped_steps": self.skipped_steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.drcm.load_state_dict(state["drcm"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.drcm_opt.load_state_dict(state["drcm_opt"])
        self.store.load_state_dict(state["store"])
        self.version = int(state["version"])
        self.skipped_steps = int(state["skipped_steps"])
        self.generator.set_state(state["generator"])
