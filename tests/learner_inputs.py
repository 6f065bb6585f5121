"""Prompts and scored rollouts for tests that drive a Learner by hand."""

from torch import Tensor

from find_ray.algo.learner import Learner
from find_ray.algo.store import Rollout


def prompt_names(n: int) -> list[str]:
    """`n` distinct prompt texts: a Learner keys rollouts by text."""
    return [f"prompt {i}" for i in range(n)]


def scored_rollouts(
    learner: Learner,
    ids: Tensor,
    z: Tensor,
    logp: Tensor,
    reward: Tensor,
    first_id: int,
    version: int,
) -> list[Rollout]:
    """Rollouts of the learner's prompts `ids` (rows), ids from `first_id`, drawn by `version`."""
    prompts = list(learner.prompt_rows)
    return [
        Rollout(first_id + i, prompts[int(ids[i])], z[i], float(logp[i]), version, float(reward[i]))
        for i in range(len(ids))
    ]
