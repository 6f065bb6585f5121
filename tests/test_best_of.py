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


def test_a_policy_and_the_base_choose_from_the_same_candidates():
    policy = PerPromptPolicy(3, (3, 8, 8))
    with torch.no_grad():
        policy.mu.fill_(0.5)  # brighter images: the policy's picks beat the base's
    base, _ = run(best_of=4)
    trained, _ = run(best_of=4, transform=policy_transform(policy))
    one, _ = run(best_of=1, transform=policy_transform(policy))
    for b, t, o in zip(base, trained, one, strict=True):
        assert (t.scores > b.scores).all()  # same eps, shifted by mu: every pick is brighter
        assert t.scores.mean() > o.scores.mean()  # and the best of 4 beats one sample
