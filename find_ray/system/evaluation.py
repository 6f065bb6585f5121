"""Evaluation on the actors: rollout actors sample each policy's eval batches, reward actors
score them, at most two batches per rollout actor in flight; a lost batch is sent again."""

from __future__ import annotations

import logging
import time
from collections import deque

import ray
from ray.exceptions import RayTaskError
from torch import Tensor
from tqdm import tqdm

from find_ray.algo.policy_files import policy_from_state
from find_ray.config import EvalConfig
from find_ray.errors import FindRayError
from find_ray.eval.evaluate import (
    EvalCollector,
    PromptResult,
    eval_batches,
    eval_shell,
    grid_rows,
    policy_transform,
)
from find_ray.system.pools import LOST

log = logging.getLogger(__name__)


def evaluate_on_actors(
    rollout_actors: list,
    reward_actors: list,
    prompts: list[str],
    cfg: EvalConfig,
    policies: list[dict[str, Tensor] | None],
    latent_shape: tuple[int, ...],
    max_attempts: int,
    retry_after_s: float = 1.0,
) -> list[list[PromptResult]]:
    """Each policy's results on the eval suite (weights None: the base N(0, I)), on the same
    eval noise (`eval.best_of` samples per result); a lost batch is sent again after
    `retry_after_s` (Ray restarts its actor meanwhile), and one lost `max_attempts` times ends
    the evaluation with the reason."""
    n_samples = cfg.samples_per_prompt * cfg.best_of
    batches = eval_batches(len(prompts), n_samples, cfg.batch_size)
    collectors = []
    for weights in policies:
        collector = EvalCollector(prompts, cfg.samples_per_prompt, cfg.grid_samples, cfg.best_of)
        transform = None if weights is None else policy_transform(policy_from_state(weights))
        shell = eval_shell(latent_shape, len(prompts), n_samples, cfg.seed, transform)
        collector.shell, collector.latent_dim = shell
        collectors.append(collector)
    todo = deque((k, n, 0) for k in range(len(policies)) for n in range(len(batches)))
    flying: dict[ray.ObjectRef, tuple[int, int, int]] = {}
    bar = tqdm(total=len(todo), desc="eval (ray)", unit="batch")
    while todo or flying:
        while todo and len(flying) < 2 * len(rollout_actors):
            k, n, attempt = job = todo.popleft()
            rollout = rollout_actors[(n + attempt) % len(rollout_actors)]
            reward = reward_actors[(n + attempt) % len(reward_actors)]
            images = rollout.eval_images.remote(cfg, policies[k], n, batches[n])
            rows = grid_rows(batches[n], cfg.grid_samples * cfg.best_of)
            batch_prompts = [prompts[i] for i, _ in batches[n]]
            flying[reward.score_eval.remote(images, batch_prompts, rows)] = job
        ready, _ = ray.wait(list(flying), num_returns=1)
        k, n, attempt = flying.pop(ready[0])
        try:
            collectors[k].add(batches[n], *ray.get(ready[0]))
            bar.update()
        except (*LOST, RayTaskError) as e:
            if attempt >= max_attempts:
                raise FindRayError(f"evaluation failed: actors kept dying ({e})") from e
            log.warning("an eval batch lost its actor, sending it again: %s", e)
            time.sleep(retry_after_s)  # let Ray restart it
            todo.append((k, n, attempt + 1))
    bar.close()
    return [c.results() for c in collectors]
