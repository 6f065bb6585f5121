"""A FIND loop on a Gaussian bandit with a known optimum, built only from policy/find/store.

Two prompts, a 16-dim latent, reward(z, c) = -||z - target_c||^2 with target_0 = +1 and
target_1 = -1 in every dim. The squared distance is summed (not averaged) so that the
advantage outweighs the lambda = 0.01 regulariser: with -mean(...) the regulariser's pull
towards 0 leaves the optimum of the loss at mu ~ 0.86, not 1.
"""

import math
from dataclasses import dataclass

import pytest
import torch

from find_ray.algo.gaussian import diagonal_gaussian_kl
from find_ray.algo.learner import Learner
from find_ray.config import FindLossConfig, LearnerConfig
from tests.learner_inputs import prompt_names, scored_rollouts

DIM = 16
TARGETS = torch.stack([torch.ones(DIM), -torch.ones(DIM)])


@dataclass
class BanditResult:
    mu_error: float  # mean |mu_c - target_c| at the end
    max_kl: float  # max over updates of KL(pi_v || pi_v+1) (kl_reduction), worst prompt
    max_approx_kl: float  # max of the approx_kl metric over all minibatches
    first_reward: float
    last_reward: float


def run_find_bandit(
    eps: float = 0.2,
    iters: int = 40,
    per_prompt: int = 16,
    seed: int = 0,
    kl_reduction: str = "mean",
    **learner: object,
) -> BanditResult:
    """The Learner on the bandit: sample from the behaviour policy, score, add, update.

    Unless `learner` overrides them, sigma is unbounded and there is no trust region.
    """
    gen = torch.Generator().manual_seed(seed)
    defaults: dict[str, object] = dict(
        optimizer="adamw",
        epochs=4,
        minibatch_size=32,
        drcm_steps=5,
        store_capacity=4 * per_prompt,
        max_policy_lag=1,  # this batch + the previous one
        sigma_max=math.inf,
        loss=FindLossConfig(eps=eps, policy_lr=0.05, drcm_lr=1e-2, drcm_hidden=64),
    )
    cfg = LearnerConfig(**{**defaults, **learner})
    learner = Learner(cfg, (DIM,), prompt_names(2), torch.eye(2), seed=seed)
    all_prompts = torch.arange(2)
    ids = all_prompts.repeat(per_prompt)
    next_id, max_kl, max_approx_kl, rewards = 0, 0.0, 0.0, []

    for version in range(iters):
        policy = learner.policy
        z = policy.sample(ids, gen)
        logp = policy.log_prob(z, ids, cfg.loss.logp_reduction).detach()
        reward = -((z - TARGETS[ids]) ** 2).sum(1)
        rewards.append(reward.mean().item())
        learner.add(scored_rollouts(learner, ids, z, logp, reward, next_id, version))
        next_id += len(ids)
        with torch.no_grad():
            mu, sigma = policy.mean_std(all_prompts)
        metrics = learner.update()
        max_approx_kl = max(max_approx_kl, metrics["approx_kl"])
        with torch.no_grad():
            new_mu, new_sigma = policy.mean_std(all_prompts)
            kl = diagonal_gaussian_kl(mu, sigma, new_mu, new_sigma, kl_reduction).max().item()
        max_kl = max(max_kl, kl)

    mu_error = (learner.policy.mu.detach() - TARGETS).abs().mean().item()
    return BanditResult(mu_error, max_kl, max_approx_kl, rewards[0], rewards[-1])


def test_find_reaches_bandit_optimum_with_bounded_updates():
    res = run_find_bandit(eps=0.2, iters=40)
    assert res.mu_error < 0.2  # measured ~0.08 over 14 seeds (worst 0.09)
    assert res.last_reward > 0.1 * res.first_reward  # E[r] at pi_0 is -16 * (1 + 1) = -32
    # per-update KL stays small thanks to ratio clipping (measured max 0.08-0.16 per element)
    assert res.max_kl < 0.3
    assert res.max_approx_kl < 0.3


def test_without_clipping_updates_are_unbounded():
    # same loop with eps = inf: measured max per-update KL 7-96 over 6 seeds
    res = run_find_bandit(eps=float("inf"), iters=40)
    assert res.max_kl > 1.0


@pytest.mark.parametrize("optimizer", ["natural", "adamw"])
def test_trust_region_bounds_the_true_per_update_kl(optimizer):
    # learned, bounded sigma; large steps and no clipping, so only the trust region holds them
    target = 0.5
    kw = dict(
        iters=15,
        eps=float("inf"),
        kl_reduction="sum",
        optimizer=optimizer,
        sigma_max=2.0,
        loss=FindLossConfig(eps=float("inf"), policy_lr=1.0, drcm_lr=1e-2, drcm_hidden=64),
    )
    free = run_find_bandit(**kw)
    bounded = run_find_bandit(target_kl=target, **kw)
    assert free.max_kl > 4 * target  # the steps the region has to cut back
    assert bounded.max_kl <= target * (1 + 1e-5)  # stated tolerance: float rounding only
    assert bounded.last_reward > 0.5 * bounded.first_reward  # and it still learns
