"""The FIND learner: rollout store -> DRCM calibration -> clipped policy steps -> new version.

Plain PyTorch; the Ray learner actor only wraps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from find_ray.algo.amortized import AmortizedNoisePolicy
from find_ray.algo.gaussian import diagonal_gaussian_kl
from find_ray.algo.losses import (
    DRCM,
    advantage_variance_report,
    advantages,
    calibration_step,
    policy_loss,
)
from find_ray.algo.policy import NoisePolicy, PerPromptPolicy
from find_ray.algo.store import Rollout, RolloutStore, prompt_table, stack_rollouts
from find_ray.algo.trust_region import parameters_of, trust_region_
from find_ray.config import LearnerConfig, PolicyConfig

MIN_SLOPE = 0.1
Advantage = Callable[[Tensor, Tensor], Tensor]  # (prompt rows, rewards) -> advantages


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
            embeddings, latent_shape, bounds, cfg.hidden, cfg.grid, learner.learn_sigma, cfg.shell
        )
    return PerPromptPolicy(embeddings.shape[0], latent_shape, bounds, cfg.shell)


def natural_gradient_(policy: PerPromptPolicy, reduction: str) -> None:
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
        if isinstance(self.policy, PerPromptPolicy):
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
        """One new version: advantages against the baseline (the DRCM calibrated first), epochs
        of clipped policy steps over the store (for the amortized natural step, on a per-prompt
        copy projected back onto the network), the trust region if set; returns its metrics."""
        self.store.evict_stale(self.version)
        if not len(self.store):  # nothing to learn from: a new version with the same weights
            self.version += 1
            return {"store_size": 0.0}
        all_prompts = torch.arange(self.policy.num_prompts)
        with torch.no_grad():
            mu, sigma = self.policy.mean_std(all_prompts)
        advantage, metrics = self._calibrate(mu, sigma)
        before = parameters_of(self.policy)
        if self.projected:  # the natural steps go to a per-prompt copy, projected back below
            stepped = PerPromptPolicy.copy_of(self.policy)
            stepped.log_sigma.requires_grad_(self.cfg.learn_sigma)
            trained = [p for p in stepped.parameters() if p.requires_grad]
            steps = self._policy_steps(
                stepped, torch.optim.SGD(trained, self.cfg.loss.policy_lr), advantage
            )
            metrics.update(self._project(stepped, mu, sigma))
        else:
            steps = self._policy_steps(self.policy, self.policy_opt, advantage)
        if self.cfg.target_kl > 0:
            region = trust_region_(self.policy, before, self.cfg.target_kl)
            metrics["kl_update_raw_max"] = region.kl_raw.max().item()
            metrics["trust_region_scale"] = region.scale.mean().item()
        self.version += 1
        for key in steps[0] if steps else ():
            metrics[key] = sum(s[key] for s in steps) / len(steps)
        metrics["skipped_steps"] = float(self.skipped_steps)
        return {**metrics, **self._policy_metrics(mu, sigma)}

    def _calibrate(self, mu: Tensor, sigma: Tensor) -> tuple[Advantage, dict[str, float]]:
        """The advantage function of this update (the DRCM trained on the store first, for
        `baseline: drcm`) and the advantage variance with and without the baseline."""
        held = stack_rollouts(self.store.rollouts(), self.prompt_rows)
        pid, emb, baseline = held.prompt_row, self.prompt_embeddings, self.cfg.baseline
        if baseline == "prompt_mean":
            prompt_mean = per_prompt_mean(held.reward, pid, self.policy.num_prompts)

        def advantage(ids: Tensor, reward: Tensor) -> Tensor:
            if baseline == "prompt_mean":
                return reward - prompt_mean[ids]
            if baseline == "none":
                return reward
            return advantages(self.drcm, mu[ids], sigma[ids], emb[ids], reward)

        drcm_mse = [
            calibration_step(self.drcm, self.drcm_opt, mu[pid], sigma[pid], emb[pid], held.reward)
            for _ in range(self.cfg.drcm_steps if baseline == "drcm" else 0)
        ]
        metrics = advantage_variance_report(held.reward, advantage(pid, held.reward))
        metrics["drcm_mse"] = drcm_mse[-1] if drcm_mse else float("nan")
        with torch.no_grad():  # where the denoiser's inputs sit: ||z_T||^2 / d
            metrics["shell_mean"] = self.policy.latent(held.z).pow(2).flatten(1).mean().item()
        return advantage, metrics

    def _policy_steps(
        self, policy: NoisePolicy, opt: torch.optim.Optimizer, advantage: Advantage
    ) -> list[dict[str, float]]:
        """Epochs of clipped steps of `policy` over the store; a step whose loss or gradient is
        not finite is skipped and counted, never applied."""
        steps = []
        for batch in self.store.minibatches(
            self.cfg.minibatch_size, self.prompt_rows, self.cfg.epochs, self.generator
        ):
            b = batch.prompt_row
            adv = advantage(b, batch.reward)
            loss, step = policy_loss(policy, batch.z, b, batch.behaviour_logp, adv, self.cfg.loss)
            if not torch.isfinite(loss):  # e.g. an overflowing ratio
                self.skipped_steps += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in policy.parameters() if p.grad is not None]
            if not all(torch.isfinite(g).all() for g in grads):
                self.skipped_steps += 1
                continue
            if self.cfg.optimizer == "natural":
                natural_gradient_(policy, self.cfg.loss.logp_reduction)
            opt.step()
            steps.append(step)
        return steps

    def _project(self, stepped: PerPromptPolicy, mu: Tensor, sigma: Tensor) -> dict[str, float]:
        """Fits the network to the stepped per-prompt copy; the step's KL and what was left."""
        with torch.no_grad():
            natural = diagonal_gaussian_kl(mu, sigma, *stepped.mean_std(torch.arange(len(mu))))
        left = project_(self.policy, stepped, self.policy_opt, self.cfg.projection_steps)
        return {"natural_step_kl": natural.mean().item(), "projection_kl": left.mean().item()}

    @torch.no_grad()
    def _policy_metrics(self, mu: Tensor, sigma: Tensor) -> dict[str, float]:
        """The new policy: its distance from N(0, I) and from the version before (mu, sigma),
        sigma's range, and the store's size and drops."""
        all_prompts = torch.arange(self.policy.num_prompts)
        new_mu, new_sigma = self.policy.mean_std(all_prompts)
        kl_update = diagonal_gaussian_kl(mu, sigma, new_mu, new_sigma)
        metrics = {
            "kl_to_prior": self.policy.kl_to_standard_normal(all_prompts).mean().item(),
            "kl_to_prior_total": self.policy.kl_to_standard_normal(all_prompts, "sum")
            .mean()
            .item(),
            "kl_update_mean": kl_update.mean().item(),
            "kl_update_max": kl_update.max().item(),
            "mu_step": (new_mu - mu).abs().mean().item(),
            "sigma_mean": new_sigma.mean().item(),
            "sigma_min": new_sigma.min().item(),
            "sigma_max": new_sigma.max().item(),
            "store_size": float(len(self.store)),
        }
        metrics.update({f"drops/{reason}": float(n) for reason, n in self.store.drops.items()})
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
