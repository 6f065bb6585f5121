"""FIND as the proposal of best-of-N: each eval result is the reward's pick of N samples, the
same N candidates for base and policy (paired), N times the denoiser calls."""

import numpy as np
import torch

from find_ray.algo.policy import PerPromptPolicy
from find_ray.backends.simulated import SimulatedBackend
from find_ray.config import RewardConfig
from find_ray.eval.evaluate import evaluate, policy_transform
from find_ray.rewards import make_reward

PROMPTS = ["a", "b", "c"]


class Counting(SimulatedBackend):
    """The simulated backend (image = sigmoid(z)), counting the images it generates."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def generate(self, z_T, prompts, seed=0, **sampler):
        self.images += len(prompts)
        return super().generate(z_T, prompts, seed, **sampler)


def run(best_of: int, transform=None, k: int = 4):
    backend = Counting()
    reward = make_reward(RewardConfig(name="brightness"))
    results = evaluate(backend, reward, PROMPTS, k, seed=7, batch_size=5, grid_samples=2,
                       transform=transform, best_of=best_of)  # fmt: skip
    return results, backend.images


def test_best_of_n_picks_the_argmax_of_each_group_and_costs_n_times_the_images():
    pool, pool_images = run(best_of=1, k=12)  # the same 12 draws per prompt, unselected
    best, best_images = run(best_of=3, k=4)
    assert pool_images == 3 * 12 and best_images == 3 * 4 * 3
    for p, b in zip(pool, best, strict=True):
        np.testing.assert_allclose(b.scores, p.scores.reshape(4, 3).max(1))
        picked = p.scores.reshape(4, 3).argmax(1) + 3 * np.arange(4)
        np.testing.assert_allclose(b.shell, p.shell[picked])  # the chosen samples' own noise
        assert len(b.images) == 2  # the grid shows the first two picks


def test_a_policy_picks_from_its_own_latents_of_the_bases_candidates():
    """Under a policy, the N candidates of a result are the policy's latents of the same eps
    the base's N candidates are: each pick's ||z||^2 / d is that of the policy's pooled sample
    at the picked index, and it differs from the base's at the same index."""
    policy = PerPromptPolicy(3, (3, 8, 8), shell="none")
    with torch.no_grad():
        policy.mu.fill_(0.5)
    transform = policy_transform(policy)
    pool, _ = run(best_of=1, transform=transform, k=12)
    base_pool, _ = run(best_of=1, k=12)
    best, _ = run(best_of=3, transform=transform, k=4)
    for p, b, base in zip(pool, best, base_pool, strict=True):
        picked = p.scores.reshape(4, 3).argmax(1) + 3 * np.arange(4)
        np.testing.assert_allclose(b.scores, p.scores[picked])
        np.testing.assert_allclose(b.shell, p.shell[picked])
        assert not np.allclose(b.shell, base.shell[picked])  # mu + eps, not eps
        assert (p.scores > base.scores).all()  # sample by sample, on the same eps
