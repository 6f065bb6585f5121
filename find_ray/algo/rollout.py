"""Rollout worker: samples z_T from the newest policy weights, denoises, scores, returns records.

Plain PyTorch; the Ray rollout actor only wraps it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
from torch import Tensor

from find_ray.algo.noise import normals_by_index, seeded_generator
from find_ray.algo.policy import PerPromptPolicy
from find_ray.algo.policy_files import policy_from_state
from find_ray.algo.store import Rollout
from find_ray.backends import Backend
from find_ray.config import Reduction
from find_ray.rewards import RewardFn

log = logging.getLogger(__name__)


def iteration_prompt_ids(
    num_prompts: int,
    samples_per_prompt: int,
    prompts_per_iteration: int = 0,
    iteration: int = 0,
    seed: int = 0,
) -> list[int]:
    """The prompt of each rollout of one iteration, prompt-major: [0, 0, ..., 1, 1, ...].

    With `prompts_per_iteration` (0: all), each iteration draws that many distinct prompts,
    a pure function of (seed, iteration), so that a policy over a large suite (the amortized
    one) sees a different sample of it every update.
    """
    chosen = range(num_prompts)
    if 0 < prompts_per_iteration < num_prompts:
        generator = seeded_generator(seed, iteration)
        picked = torch.randperm(num_prompts, generator=generator)[:prompts_per_iteration]
        chosen = sorted(picked.tolist())
    return [p for p in chosen for _ in range(samples_per_prompt)]


class RolloutWorker:
    """Holds a backend and a copy of the policy at some version."""

    def __init__(
        self,
        backend: Backend,
        prompts: list[str],
        batch_size: int = 64,
        logp_reduction: Reduction = "mean",
        seed: int = 0,
    ) -> None:
        self.backend, self.prompts, self.batch_size = backend, prompts, batch_size
        self.logp_reduction = logp_reduction
        self.policy = PerPromptPolicy(len(prompts), backend.latent_shape)
        self.version = 0
        self.seed = seed

    def set_weights(self, weights: dict[str, Tensor], version: int) -> None:
        self.policy = policy_from_state(weights)  # per-prompt or amortized, as the learner's
        self.version = version

    @torch.no_grad()
    def rollout(
        self, prompt_ids: list[int], rollout_ids: list[int]
    ) -> tuple[list[Rollout], Tensor]:
        """Unscored rollouts (reward NaN) and their images (B, 3, H, W) in [0, 1].

        z = mu_c + sigma_c * eps(seed, rollout id): a rollout is the same whichever worker draws
        it, in whatever batch, so a Ray run and the in-process loop see the same noise.
        """
        ids = torch.tensor(prompt_ids)
        eps = normals_by_index(self.policy.shape, rollout_ids, self.seed)
        z = self.policy.reparameterise(ids, eps)  # the action: its log-prob makes the ratio
        logp = self.policy.log_prob(z, ids, self.logp_reduction)
        latents = self.policy.latent(z)  # what the denoiser gets (z, or z on the shell)
        images = torch.cat(
            [
                self.backend.generate(
                    latents[s : s + self.batch_size],
                    [self.prompts[i] for i in prompt_ids[s : s + self.batch_size]],
                    seed=rollout_ids[s],
                )
                for s in range(0, len(prompt_ids), self.batch_size)
            ]
        )
        rollouts = [
            Rollout(rid, self.prompts[pid], z[n].clone(), float(logp[n]), self.version, math.nan)
            for n, (rid, pid) in enumerate(zip(rollout_ids, prompt_ids, strict=True))
        ]
        return rollouts, images


def score_rollouts(
    reward: RewardFn, rollouts: list[Rollout], images: Tensor
) -> tuple[list[Rollout], dict[str, list[int]]]:
    """Scored rollouts and the dropped ids by reason: a scorer that raises drops the whole batch
    ("reward_error"), a NaN/inf score drops its rollout ("bad_reward")."""
    try:
        scores, _ = reward(images, [r.prompt for r in rollouts])
    except Exception:  # a scorer failure must not reach the learner
        log.exception("reward scorer failed on %d rollouts", len(rollouts))
        return [], {"reward_error": [r.rollout_id for r in rollouts]}
    kept, bad = [], []
    for rollout, score in zip(rollouts, scores.tolist(), strict=True):
        if math.isfinite(score):
            kept.append(replace(rollout, reward=float(score)))
        else:
            bad.append(rollout.rollout_id)
    return kept, {"bad_reward": bad} if bad else {}
