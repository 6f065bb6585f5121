"""The FIND loop in one process: draw rollouts of the current policy, score, store, update.

The synchronous reference of the algorithm: the Ray system runs the same worker, scorer and
learner on actors, and in sync mode reproduces this loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from find_ray.algo.learner import Learner
from find_ray.algo.rollout import RolloutWorker, iteration_prompt_ids, score_rollouts
from find_ray.backends import Backend
from find_ray.config import FindRayConfig
from find_ray.rewards import RewardFn


def reward_metrics(rewards: list[float], prompt_rows: list[int]) -> dict[str, float]:
    """Mean and std of fresh rewards, overall and per prompt by its row (`reward_mean/p03`)."""
    if not rewards:
        return {}
    rewards_t, rows = torch.tensor(rewards), torch.tensor(prompt_rows)
    metrics = {"reward_mean": rewards_t.mean().item(), "reward_std": rewards_t.std().item()}
    for p in rows.unique().tolist():
        mine = rewards_t[rows == p]
        metrics[f"reward_mean/p{p:02d}"] = mine.mean().item()
        metrics[f"reward_std/p{p:02d}"] = mine.std().item()
    return metrics


class FindLoop:
    """Iterating yields each iteration's metrics (learner, fresh rewards, drops so far)."""

    def __init__(
        self, cfg: FindRayConfig, backend: Backend, reward: RewardFn, prompts: list[str]
    ) -> None:
        self.cfg, self.reward, self.prompts = cfg, reward, prompts
        self.learner = Learner(
            cfg.learner,
            backend.latent_shape,
            prompts,
            backend.encode_prompts(prompts),
            cfg.train.seed,
            cfg.policy,
        )
        self.worker = RolloutWorker(
            backend,
            prompts,
            cfg.train.rollout_batch_size,
            cfg.learner.loss.logp_reduction,
            cfg.train.seed,
        )
        self.rollouts = 0  # drawn so far (the next rollout's id)
        self.iteration = 0  # the next iteration's index
        self.drops = Counter[str]()

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the learner's state and where the loop stands."""
        return {
            "learner": self.learner.state_dict(),
            "rollouts": self.rollouts,
            "iteration": self.iteration,
            "drops": dict(self.drops),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes where `state_dict` was taken: the next iterations equal an unbroken run's."""
        self.learner.load_state_dict(state["learner"])
        self.rollouts, self.iteration = int(state["rollouts"]), int(state["iteration"])
        self.drops = Counter(state["drops"])

    def __iter__(self) -> Iterator[dict[str, float]]:
        """Iterations `iteration` .. train.iterations - 1 (all of them for a new loop)."""
        t, drops = self.cfg.train, self.drops
        for it in range(self.iteration, t.iterations):
            ids = iteration_prompt_ids(
                len(self.prompts), t.samples_per_prompt, t.prompts_per_iteration, it, t.seed
            )
            self.worker.set_weights(*self.learner.weights())
            rollout_ids = list(range(self.rollouts, self.rollouts + len(ids)))
            rollouts, images = self.worker.rollout(ids, rollout_ids)
            self.rollouts += len(ids)
            scored, dropped = score_rollouts(self.reward, rollouts, images)
            drops.update({reason: len(ids) for reason, ids in dropped.items()})
            self.learner.add(scored)
            metrics = self.learner.update()
            rows = [self.learner.prompt_rows[r.prompt] for r in scored]
            metrics.update(reward_metrics([r.reward for r in scored], rows))
            for reason, n in drops.items():
                metrics[f"drops/{reason}"] = float(n)
            self.iteration = it + 1
            yield metrics
