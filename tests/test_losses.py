"""Tests of find_ray.algo.losses: ratio, clipped surrogate (values, grads), DRCM, policy loss."""

import math

import pytest
import torch

from find_ray.algo.gaussian import initial_log_prob
from find_ray.algo.losses import (
    DRCM,
    MAX_LOG_RATIO,
    FindLossConfig,
    advantage_variance_report,
    advantages,
    calibration_step,
    clipped_surrogate,
    policy_loss,
    ratio,
)
from find_ray.algo.policy import PerPromptPolicy

RHO = torch.tensor([0.5, 1.0, 1.5, 0.5])
ADV = torch.tensor([1.0, -2.0, 3.0, -1.0])


def test_ratio():
    logp_new = torch.tensor([math.log(2.0), 0.0])
    logp_ref = torch.tensor([0.0, math.log(2.0)])
    assert torch.allclose(ratio(logp_new, logp_ref), torch.tensor([2.0, 0.5]))


def test_clipped_surrogate_ppo_hand_values():
    # min(rho A, clip(rho) A): min(0.5, 0.8)=0.5, -2, min(4.5, 3.6)=3.6, min(-0.5, -0.8)=-0.8
    out = clipped_surrogate(RHO, ADV, eps=0.2, form="ppo")
    assert out.loss.item() == pytest.approx(-(0.5 - 2.0 + 3.6 - 0.8) / 4)
    assert out.clip_fraction.item() == pytest.approx(3 / 4)  # |rho - 1| > 0.2 for 3 of 4


def test_clipped_surrogate_clamp_hand_values():
    # clip(rho) A: 0.8, -2, 3.6, -0.8
    out = clipped_surrogate(RHO, ADV, eps=0.2, form="clamp")
    assert out.loss.item() == pytest.approx(-(0.8 - 2.0 + 3.6 - 0.8) / 4)
    assert out.clip_fraction.item() == pytest.approx(3 / 4)


def test_clipped_surrogate_rejects_unknown_form():
    with pytest.raises(ValueError):
        clipped_surrogate(RHO, ADV, form="spo")


def _grad(rho_value: float, adv_value: float, form: str = "ppo") -> float:
    logp_new = torch.tensor([math.log(rho_value)], requires_grad=True)
    rho = ratio(logp_new, torch.zeros(1))
    clipped_surrogate(rho, torch.tensor([adv_value]), 0.2, form).loss.backward()
    return logp_new.grad.item()


def test_ppo_gradient_clipped_outside_band():
    assert _grad(1.5, 1.0) == 0.0  # A > 0, rho > 1 + eps: no push further up
    assert _grad(0.5, -1.0) == 0.0  # A < 0, rho < 1 - eps: no push further down
    assert _grad(1.1, 1.0) == pytest.approx(-1.1)  # inside: d(-rho A)/dlogp = -rho A
    assert _grad(0.9, -1.0) == pytest.approx(0.9)
    # pessimistic side is not clipped in "ppo" (it is in the plain clamp)
    assert _grad(0.5, 1.0) == pytest.approx(-0.5)
    assert _grad(0.5, 1.0, "clamp") == 0.0


def _policy(seed: int = 0) -> PerPromptPolicy:
    g = torch.Generator().manual_seed(seed)
    policy = PerPromptPolicy(num_prompts=2, shape=(3, 2, 2))
    with torch.no_grad():
        policy.mu.copy_(0.5 * torch.randn(policy.mu.shape, generator=g))
        policy.log_sigma.copy_(0.2 * torch.randn(policy.log_sigma.shape, generator=g))
    return policy


def test_policy_loss_on_policy_behaviour_reference():
    policy = _policy()
    ids = torch.tensor([0, 1, 1, 0])
    z = policy.sample(ids, torch.Generator().manual_seed(1))
    logp = policy.log_prob(z, ids).detach()
    adv = torch.tensor([1.0, -0.5, 2.0, 0.0])
    cfg = FindLossConfig()
    loss, m = policy_loss(policy, z, ids, logp, adv, cfg)
    # rho == 1: no clipping, pg_loss = -mean(A)
    assert m["ratio_mean"] == pytest.approx(1.0)
    assert m["clip_fraction"] == 0.0 and m["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert m["pg_loss"] == pytest.approx(-adv.mean().item())
    assert m["reg_loss"] == pytest.approx(policy.regulariser(ids).item())
    assert loss.item() == pytest.approx(m["pg_loss"] + 0.01 * m["reg_loss"], rel=1e-6)
    loss.backward()
    assert policy.mu.grad.abs().sum() > 0


def test_policy_loss_ratio_reference_initial_uses_pi0():
    policy = _policy(seed=2)
    ids = torch.tensor([0, 1, 0])
    z = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    bogus_behaviour = torch.full((3,), 100.0)  # must be ignored
    adv = torch.ones(3)
    _, m = policy_loss(
        policy, z, ids, bogus_behaviour, adv, FindLossConfig(ratio_reference="initial")
    )
    expected = torch.exp(policy.log_prob(z, ids) - initial_log_prob(z)).mean()
    assert m["ratio_mean"] == pytest.approx(expected.item(), rel=1e-6)
    _, m_behaviour = policy_loss(policy, z, ids, bogus_behaviour, adv, FindLossConfig())
    # the behaviour reference was used there: log rho ~ -100, clamped at -MAX_LOG_RATIO
    assert m_behaviour["ratio_mean"] == pytest.approx(math.exp(-MAX_LOG_RATIO))


def test_normalise_advantages():
    policy = _policy()
    ids = torch.tensor([0, 1, 0, 1])
    z = policy.sample(ids, torch.Generator().manual_seed(4))
    logp = policy.log_prob(z, ids).detach()
    adv = torch.tensor([10.0, 20.0, 30.0, 40.0])
    _, m = policy_loss(policy, z, ids, logp, adv, FindLossConfig(normalise_advantages=True))
    assert m["pg_loss"] == pytest.approx(0.0, abs=1e-6)  # standardised A has mean 0


def test_drcm_shapes_and_pooling():
    mu, sigma = torch.zeros(5, 4, 16, 16), torch.ones(5, 4, 16, 16)
    drcm = DRCM((4, 16, 16), embed_dim=8, hidden=16, pool=2)
    assert drcm.net[0].in_features == 2 * 4 * 2 * 2 + 8
    assert drcm(mu, sigma, torch.zeros(5, 8)).shape == (5,)
    with pytest.raises(ValueError):
        drcm(mu, sigma)  # built with an embedding, none given
    assert DRCM((4, 16, 16), hidden=16)(mu, sigma).shape == (5,)


def test_drcm_lowers_advantage_variance():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    num_prompts, per_prompt, dim = 8, 8, 4
    prompt_mu = torch.randn(num_prompts, dim, generator=g)
    mu = prompt_mu.repeat_interleave(per_prompt, 0)
    sigma = torch.ones_like(mu)
    target = torch.ones(dim)
    noise = 0.1 * torch.randn(mu.shape[0], generator=g)
    rewards = -((mu - target) ** 2).sum(1) + noise

    drcm = DRCM((dim,), hidden=64)
    opt = torch.optim.AdamW(drcm.parameters(), lr=1e-2)
    first = calibration_step(drcm, opt, mu, sigma, None, rewards)
    for _ in range(300):
        last = calibration_step(drcm, opt, mu, sigma, None, rewards)
    assert last < 0.05 * first

    adv = advantages(drcm, mu, sigma, None, rewards)
    assert not adv.requires_grad
    report = advantage_variance_report(rewards, adv)
    assert report["adv_var_raw"] == pytest.approx(rewards.var(unbiased=False).item())
    assert report["adv_var_calibrated"] < 0.3 * report["adv_var_raw"]
