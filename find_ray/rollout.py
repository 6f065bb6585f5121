"""Rollout worker: samples z_T from the newest policy weights, denoises, scores, returns records.

Plain PyTorch; the Ray rollout actor only wraps it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import replace

import torch
from torch import Tensor

from find_ray.backends import PipelineBackend
from find_ray.policy import GaussianNoisePolicy, Reduction
from find_ray.rewards import RewardFn
from find_ray.store import Rollout

log = logging.getLogger(__name__)


class RolloutWorker:
    """Holds a backend and a copy of the policy at some version."""

    def __init__(
        self,
        backend: PipelineBackend,
        prompts: list[str],
        batch_size: int = 64,
        logp_reduction: Reduction = "mean",
        seed: int = 0,
    ) -> None:
        self.backend, self.prompts, self.batch_size = backend, prompts, batch_size
        self.logp_reduction = logp_reduction
        self.policy = GaussianNoisePolicy(len(prompts), backend.latent_shape)
        self.version = 0
        self.generator = torch.Generator().manual_seed(seed)

    def set_weights(self, weights: dict[str, Tensor], version: int) -> None:
        self.policy.load_state_dict(weights)
        self.version = version

    @torch.no_grad()
    def rollout(
        self, prompt_ids: list[int], rollout_ids: list[int]
    ) -> tuple[list[Rollout], Tensor]:
        """Unscored rollouts (reward NaN) and their images (B, 3, H, W) in [0, 1]."""
        ids = torch.tensor(prompt_ids)
        z = self.policy.sample(ids, self.generator)
        logp = self.policy.log_prob(z, ids, self.logp_reduction)
        images = torch.cat(
            [
                self.backend.generate(
                    z[s : s + self.batch_size],
                    [self.prompts[i] for i in prompt_ids[s : s + self.batch_size]],
                    seed=rollout_ids[s],
                )
                for s in range(0, len(prompt_ids), self.batch_size)
            ]
        )
        rollouts = [
            Rollout(rid, pid, z[n].clone(), float(logp[n]), self.version, math.nan)
            for n, (rid, pid) in enumerate(zip(rollout_ids, prompt_ids, strict=True))
        ]
        return rollouts, images


def score_rollouts(
    reward: RewardFn, rollouts: list[Rollout], images: Tensor, prompts: list[str]
) -> tuple[list[Rollout], Counter[str]]:
    """Scored rollouts; a scorer that raises or returns NaN/inf drops them, counted by reason."""
    try:
        scores, _ = reward(images, [prompts[r.prompt_id] for r in rollouts])
    except Exception:  # a scorer failure must not reach the learner
        log.exception("reward scorer failed on %d rollouts", len(rollouts))
        return [], Counter({"reward_error": len(rollouts)})
    kept, drops = [], Counter[str]()
    for rollout, score in zip(rollouts, scores.tolist(), strict=True):
        if math.isfinite(score):
            kept.append(replace(rollout, reward=float(score)))
        else:
            drops["bad_reward"] += 1
    return kept, drops
