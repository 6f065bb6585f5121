"""The amortized noise policy: N(0, I) exactly at initialisation, Normal log-densities, saved
and rebuilt from files and state dicts, trained by the Learner, bounded by the trust region,
and for prompts it never saw."""

from __future__ import annotations

import math

import pytest
import torch

from find_ray.algo.amortized import AmortizedNoisePolicy
from find_ray.algo.learner import Learner, per_prompt_mean
from find_ray.algo.policy import PerPromptPolicy
from find_ray.algo.policy_files import load_policy, policy_from_state
from find_ray.algo.trust_region import parameters_of, trust_region_
from find_ray.config import FindLossConfig, LearnerConfig, PolicyConfig, load_config
from find_ray.errors import ConfigError
from tests.learner_inputs import prompt_names, scored_rollouts

SHAPES = [(3, 8, 8), (4, 16, 8), (4, 2, 8, 8)]  # no upsampling; upsampled; a video latent


def perturbed(policy: AmortizedNoisePolicy, seed: int = 0) -> AmortizedNoisePolicy:
    """The policy with every parameter moved by noise (so that mu and sigma vary)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return policy


@pytest.mark.parametrize("shape", SHAPES)
def test_initial_policy_is_exactly_standard_normal(shape):
    emb = torch.randn(5, 12)
    policy = AmortizedNoisePolicy(emb, shape, (0.5, 2.0), hidden=16, grid=4)
    for e in (emb, 100 * torch.randn(3, 12)):  # training prompts and prompts never seen
        mu, sigma = policy.mean_std_of(e)
        assert mu.shape == sigma.shape == (len(e), *shape)
        assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(sigma, torch.ones_like(sigma))
    z = torch.randn(5, *shape)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert torch.equal(policy.log_prob(z, torch.arange(5), "sum"), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_log_prob_matches_torch_normal(shape):
    emb = torch.randn(4, 12)
    policy = perturbed(AmortizedNoisePolicy(emb, shape, (0.5, 2.0), hidden=16, grid=4))
    ids = torch.tensor([0, 3, 3, 1])
    mu, sigma = policy.mean_std(ids)
    assert mu.abs().min() > 0 and (sigma - 1).abs().max() > 0.01  # not at init any more
    assert sigma.min() >= 0.5 and sigma.max() <= 2.0
    z = policy.sample(ids, torch.Generator().manual_seed(1))
    normal = torch.distributions.Normal(mu, sigma).log_prob(z).flatten(1)
    torch.testing.assert_close(policy.log_prob(z, ids, "sum"), normal.sum(1))
    torch.testing.assert_close(policy.log_prob(z, ids, "mean"), normal.mean(1))


@pytest.mark.parametrize("shape", SHAPES)
def test_file_and_state_round_trip(tmp_path, shape):
    policy = perturbed(AmortizedNoisePolicy(torch.randn(3, 12), shape, (0.5, 2.0), 16, grid=4))
    policy.save(tmp_path / "p.safetensors", version=7, prompts=["a", "b", "c"])
    unseen = torch.randn(2, 12)
    for copy in (load_policy(tmp_path / "p.safetensors"), policy_from_state(policy.state_dict())):
        assert isinstance(copy, AmortizedNoisePolicy) and copy.bounds() == (0.5, 2.0)
        for got, want in zip(copy.mean_std_of(unseen), policy.mean_std_of(unseen), strict=True):
            assert torch.equal(got, want)
    per_prompt = PerPromptPolicy(2, shape)
    assert isinstance(policy_from_state(per_prompt.state_dict()), PerPromptPolicy)


def test_learn_sigma_false_keeps_sigma_one():
    policy = perturbed(AmortizedNoisePolicy(torch.randn(3, 8), (2, 4, 4), (0.5, 2.0), 8, 4, False))
    mu, sigma = policy.mean_std(torch.arange(3))
    assert mu.abs().max() > 0 and torch.equal(sigma, torch.ones_like(sigma))


def test_per_prompt_copy_equals_the_policy_on_its_prompts():
    policy = perturbed(AmortizedNoisePolicy(torch.randn(3, 6), (2, 4, 4), (0.5, 2.0), 16, 2))
    copy = PerPromptPolicy.copy_of(policy)
    ids = torch.arange(3)
    for ours, theirs in zip(copy.mean_std(ids), policy.mean_std(ids), strict=True):
        torch.testing.assert_close(ours, theirs.detach())


def test_projection_fits_the_network_to_per_prompt_targets():
    from find_ray.algo.learner import project_

    emb = torch.randn(4, 6)
    policy = AmortizedNoisePolicy(emb, (2, 4, 4), (0.5, 2.0), hidden=32, grid=4)
    other = AmortizedNoisePolicy(emb, (2, 4, 4), (0.5, 2.0), hidden=32, grid=4)
    target = PerPromptPolicy.copy_of(perturbed(other, seed=1))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.0)
    before = project_(policy, target, opt, steps=0)
    after = project_(policy, target, opt, steps=300)
    assert before.min() > 1.0 and after.max() < 0.02 * before.mean()


def test_natural_optimizer_is_accepted_for_the_amortized_policy():
    cfg = load_config(None, ["policy.kind=amortized", "learner.optimizer=natural"])
    assert cfg.policy.kind == "amortized" and cfg.learner.optimizer == "natural"
    with pytest.raises(ConfigError, match="learner.projection_steps"):
        load_config(None, ["learner.projection_steps=0"])


TARGET = 1.5  # reward(z, c) = -||z - sign_c * TARGET||^2, sign_c the first embedding coordinate


def bandit(
    target_kl: float = 0.0, iters: int = 25, seed: int = 0, lr: float = 3e-3, optimizer="adamw"
) -> tuple[Learner, list[float], list[dict[str, float]]]:
    """The Learner with an amortized policy on a bandit whose optimum depends on the prompt's
    embedding: +TARGET in every dim for embeddings with a positive first coordinate, else
    -TARGET. Four training prompts; returns the learner, the reward per iteration and the
    learner's metrics per update."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.tensor([[1.0, 0.2], [0.8, -0.4], [-1.0, 0.3], [-0.7, -0.2]])
    cfg = LearnerConfig(
        optimizer=optimizer,
        epochs=4,
        minibatch_size=32,
        drcm_steps=5,
        max_policy_lag=1,
        target_kl=target_kl,
        loss=FindLossConfig(policy_lr=lr, drcm_lr=1e-2, drcm_hidden=32, logp_reduction="sum"),
    )
    learner = Learner(
        cfg,
        (1, 2, 2),
        prompt_names(len(emb)),
        emb,
        seed,
        PolicyConfig("amortized", hidden=32, grid=2),
    )
    ids = torch.arange(4).repeat(16)
    signs = emb[:, 0].sign()
    rewards, history, next_id = [], [], 0
    for version in range(iters):
        z = learner.policy.sample(ids, gen)
        logp = learner.policy.log_prob(z, ids, "sum").detach()
        reward = -((z - TARGET * signs[ids].view(-1, 1, 1, 1)) ** 2).flatten(1).sum(1)
        rewards.append(reward.mean().item())
        learner.add(scored_rollouts(learner, ids, z, logp, reward, next_id, version))
        next_id += len(ids)
        history.append(learner.update())
    return learner, rewards, history


def test_learner_trains_it_and_it_generalises_to_unseen_prompts():
    learner, rewards, _ = bandit()
    assert rewards[-1] > 0.5 * rewards[0]  # E[r] at N(0, I): -4 * (1 + 2.25) = -13
    unseen = torch.tensor([[0.9, 0.0], [-0.9, 0.1]])  # never trained, one of each side
    with torch.no_grad():
        mu, _ = learner.policy.mean_std_of(unseen)
    assert mu[0].mean() > 0.5 and mu[1].mean() < -0.5


def test_projected_natural_step_trains_it_and_it_generalises():
    learner, rewards, history = bandit(iters=12, lr=0.1, optimizer="natural")
    assert rewards[-1] > 0.5 * rewards[0]
    assert all(m["projection_kl"] < 0.5 * m["natural_step_kl"] for m in history[1:])
    unseen = torch.tensor([[0.9, 0.0], [-0.9, 0.1]])
    with torch.no_grad():
        mu, _ = learner.policy.mean_std_of(unseen)
    assert mu[0].mean() > 0.5 and mu[1].mean() < -0.5


def test_trust_region_bounds_every_prompt_with_one_shared_step():
    policy = AmortizedNoisePolicy(torch.randn(4, 6), (2, 4, 4), (0.5, 2.0), hidden=16, grid=2)
    old = parameters_of(policy)
    new = parameters_of(perturbed(policy))
    step = trust_region_(policy, old, target_kl=0.05)
    assert step.kl_raw.max() > 1.0  # the perturbation is far outside the region
    assert step.kl.max() <= 0.05 * (1 + 1e-5) and step.kl.max() > 0.04  # the worst prompt binds
    scale = step.scale[0]
    assert 0 < scale < 1 and torch.equal(step.scale, scale.expand(4))  # one fraction for all
    for param, start, end in zip(policy.parameters(), old, new, strict=True):
        torch.testing.assert_close(param.detach(), start + scale * (end - start))


def test_trust_region_in_the_learner_bounds_the_amortized_update():
    _, _, free = bandit(iters=6, lr=3e-2)
    _, rewards, bounded = bandit(target_kl=0.2, iters=6, lr=3e-2)
    assert max(m["kl_update_max"] for m in free) > 0.8  # steps the region has to cut back
    assert max(m["kl_update_max"] for m in bounded) <= 0.2 * (1 + 1e-5)
    assert min(m["trust_region_scale"] for m in bounded) < 1
    assert rewards[-1] > rewards[0]  # and it still learns


def test_per_prompt_mean_baseline():
    rewards = torch.tensor([1.0, 3.0, 5.0, -2.0])
    ids = torch.tensor([0, 0, 2, 2])
    assert per_prompt_mean(rewards, ids, 3).tolist() == [2.0, 0.0, 1.5]
    assert not math.isnan(per_prompt_mean(rewards, ids, 3)[1])


def test_prompts_per_iteration_draws_distinct_prompts_per_iteration():
    from find_ray.algo.rollout import iteration_prompt_ids

    assert iteration_prompt_ids(3, 2) == [0, 0, 1, 1, 2, 2]  # 0: every prompt
    plans = [iteration_prompt_ids(28, 2, 5, it, seed=3) for it in range(4)]
    for plan in plans:
        prompts = plan[::2]
        assert len(plan) == 10 and plan[1::2] == prompts  # prompt-major, 2 samples each
        assert len(set(prompts)) == 5 and prompts == sorted(prompts)
    assert len({tuple(p) for p in plans}) == 4  # a new draw every iteration
    assert iteration_prompt_ids(28, 2, 5, 1, seed=3) == plans[1]  # a pure function
