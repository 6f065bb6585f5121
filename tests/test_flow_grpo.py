"""Flow-GRPO on the tiny flow shapes pipeline: the SDE step's log-prob, group advantages, the
clipped ratio, the KL to the reference, NFE per epoch, and an epoch on the exact detector."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from find_ray.baselines.ddpo import sample_with_log_probs
from find_ray.baselines.flow_chain import FlowChain
from find_ray.baselines.flow_grpo import (
    FlowGRPOConfig,
    FlowGRPOTrainer,
    group_advantages,
    grpo_loss,
)
from find_ray.config import RewardConfig
from find_ray.errors import ConfigError
from find_ray.rewards import make_reward
from tests.tiny_flow import red, tiny_flow

PROMPTS = ["a red circle", "a blue square"]


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def config(**changes) -> FlowGRPOConfig:
    settings = dict(steps=3, guidance=2.0, noise_level=0.7, lr=1e-2, rank=4, alpha=8.0)
    return FlowGRPOConfig(**{**settings, **changes})


def test_step_log_probs_are_the_sde_gaussians_by_hand():
    """Each log-prob is log N(x_{i+1}; mean_i, (std_i sqrt(-dt_i))^2) averaged over dimensions,
    with flow_grpo's sde_step_with_logprob: std_i = a sqrt(sigma / (1 - sigma)) (sigma = 1:
    1 - sigmas[1] below), mean_i = x (1 + std^2 dt / (2 sigma))
    + v (1 + std^2 (1 - sigma) / (2 sigma)) dt."""
    pipe, a, g = tiny_flow(), 0.7, 2.0
    chain = FlowChain(pipe, steps=3, guidance=g, noise_level=a)
    prompts = PROMPTS + PROMPTS[:1]
    c = chain.conditions(prompts)
    z = noise(3, 1)
    out = sample_with_log_probs(chain, c, z, torch.Generator().manual_seed(2))
    assert out.latents.shape == (4, 3, 3, 8, 8) and out.log_probs.shape == (3, 3)
    assert out.stochastic.all()
    torch.testing.assert_close(out.latents[0], z)
    torch.testing.assert_close(out.images, (out.latents[-1] / 2 + 0.5).clamp(0, 1))
    sigmas = [1.0, 1 - 0.999 / 2, 0.001, 0.0]  # linspace(1, 1/1000, 3), then 0
    with torch.no_grad():
        for i, t in enumerate(out.timesteps):
            x = out.latents[i]
            v_u = pipe.unet(x, t, encoder_hidden_states=c.uncond).sample.double()
            v_c = pipe.unet(x, t, encoder_hidden_states=c.cond).sample.double()
            v, x = v_u + g * (v_c - v_u), x.double()
            sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
            std = a * math.sqrt(sigma / (1 - (sigmas[1] if sigma == 1 else sigma)))
            mean = (
                x * (1 + std**2 / (2 * sigma) * dt)
                + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
            )
            normal = torch.distributions.Normal(mean, std * math.sqrt(-dt))
            by_hand = normal.log_prob(out.latents[i + 1].double()).flatten(1).mean(1)
            torch.testing.assert_close(out.log_probs[:, i].double(), by_hand, rtol=1e-4, atol=1e-3)
            # and x_{i+1} is a draw from it: its standardised noise is not absurd
            assert ((out.latents[i + 1] - mean) / (std * math.sqrt(-dt))).abs().max() < 6


def test_group_advantages_by_hand():
    """(r - group mean) / (std + 1e-4): the std of the whole batch (global_std) or the group's."""
    prompts = ["a", "b", "a", "b", "b"]
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.5, 1.0])
    s = rewards.double().std(unbiased=False).item() + 1e-4
    expected = torch.tensor([-1 / s, -0.5 / s, 1 / s, 0.0, 0.5 / s])
    torch.testing.assert_close(group_advantages(prompts, rewards), expected)
    sa, sb = 1.0 + 1e-4, math.sqrt(1 / 6) + 1e-4
    expected = torch.tensor([-1 / sa, -0.5 / sb, 1 / sa, 0.0, 0.5 / sb])
    torch.testing.assert_close(group_advantages(prompts, rewards, global_std=False), expected)
    # a group that all scored alike has zero advantages (Flow-GRPO drops those samples)
    assert group_advantages(["a", "a"], torch.tensor([0.3, 0.3])).eq(0).all()


def test_grpo_loss_before_any_step_has_ratio_one_and_no_kl():
    """Before training the LoRA UNet is the sampler and the reference: recomputed log-probs
    equal the stored ones exactly, ratio = 1, nothing clipped, KL 0, loss = -mean(clipped A);
    the loss still reaches the LoRA weights and only them."""
    pipe = tiny_flow()
    trainer = FlowGRPOTrainer(pipe, red, PROMPTS, config=config(beta=0.04))
    chain, cfg = trainer.chain, trainer.config
    c = chain.conditions(PROMPTS + PROMPTS)
    out = sample_with_log_probs(chain, c, noise(4, 3), torch.Generator().manual_seed(0))
    advantages = torch.tensor([-7.0, 0.5, 3.0, 6.0])
    for i, t in enumerate(out.timesteps):
        args = (out.latents[i], t, out.latents[i + 1], out.log_probs[:, i], advantages)
        loss, info = grpo_loss(chain, c, *args, cfg)
        assert info["ratio_mean"] == 1.0 and info["clipfrac"] == 0.0
        assert info["approx_kl"] == 0.0 and info["kl"] == 0.0
        assert loss.item() == pytest.approx(-(-5.0 + 0.5 + 3.0 + 5.0) / 4, abs=1e-7)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.params)
    assert all(p.grad is None for p in pipe.unet.parameters() if not p.requires_grad)
    assert all(p.requires_grad for p in trainer.params)  # the reference pass left them on


def test_grpo_loss_clips_the_ratio():
    """Old log-probs shifted by +-0.1: |ratio - 1| > clip_range everywhere, and the surrogate is
    PPO's pessimistic max of the clipped and unclipped terms (beta 0: no KL)."""
    trainer = FlowGRPOTrainer(tiny_flow(), red, PROMPTS, config=config(beta=0.0, clip_range=0.05))
    chain = trainer.chain
    c = chain.conditions(PROMPTS)
    out = sample_with_log_probs(chain, c, noise(2, 4))
    old = out.log_probs[:, 0] + torch.tensor([0.1, -0.1])  # ratios e^-0.1, e^0.1
    args = (chain, c, out.latents[0], out.timesteps[0], out.latents[1], old)
    loss, info = grpo_loss(*args, torch.tensor([1.0, 1.0]), trainer.config)
    assert info["clipfrac"] == 1.0 and info["kl"] == 0.0
    assert info["approx_kl"] == pytest.approx(0.5 * 0.01, rel=1e-4)
    torch.testing.assert_close(loss, -torch.tensor([math.exp(-0.1), 1.05]).mean())
    loss, _ = grpo_loss(*args, torch.tensor([-1.0, -1.0]), trainer.config)
    torch.testing.assert_close(loss, torch.tensor([0.95, math.exp(0.1)]).mean())


def test_kl_term_is_the_mean_gap_to_the_reference_by_hand():
    """With LoRA weights moved, kl = mean_batch(mean_dims((mean_theta - mean_ref)^2)) /
    (2 std_t^2), mean_ref from the base UNet, and loss = policy_loss + beta kl."""
    pipe = tiny_flow()
    base = copy.deepcopy(pipe.unet)
    trainer = FlowGRPOTrainer(pipe, red, PROMPTS, config=config(beta=0.5))
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.3 * torch.randn_like(p))
    chain = trainer.chain
    c = chain.conditions(PROMPTS)
    out = sample_with_log_probs(chain, c, noise(2, 5))
    i, t = 1, out.timesteps[1]
    x = out.latents[i]
    loss, info = grpo_loss(
        chain, c, x, t, out.latents[i + 1], out.log_probs[:, i], torch.zeros(2), trainer.config
    )
    with torch.no_grad():
        mean_theta = chain.step(chain.model_output(x, t, c), t, x, None).mean
        ref_chain = copy.copy(chain)
        ref_chain.unet = base
        mean_ref = chain.step(ref_chain.model_output(x, t, c), t, x, None).mean
    sigma = 1 - 0.999 / 2
    std_t = 0.7 * math.sqrt(sigma / (1 - sigma))
    kl = ((mean_theta - mean_ref) ** 2).flatten(1).mean(1).mean() / (2 * std_t**2)
    assert kl > 0 and info["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(info["policy_loss"] + 0.5 * kl.item(), rel=1e-5)
    assert info["policy_loss"] == 0.0  # zero advantages: only the KL moves the weights


def test_one_epoch_counts_nfe_exactly_and_trains_only_lora():
    """2 prompts x 3 images, 3 steps, guidance 2 (2 NFE per image and step), timestep_fraction
    0.99 -> the first 2 steps trained, beta > 0 (a reference pass beside each training pass).
    The group of "a blue square" all scores 1: its advantages are 0 and it is not trained."""
    pipe = tiny_flow()
    text = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}

    def reward(images, prompts):
        flat = torch.tensor([p == "a blue square" for p in prompts], dtype=torch.float32)
        return torch.where(flat.bool(), flat, red(images, prompts))

    cfg = config(prompts_per_epoch=2, group_size=3, sample_batch_size=4, train_batch_size=2)
    trainer = FlowGRPOTrainer(pipe, reward, PROMPTS, config=cfg, seed=0)
    assert trainer.train_timesteps == 2
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    info = trainer.epoch()
    sampled, steps, guided = 6, 3, 2
    trained = 3 * 2 * guided * 2  # kept samples x trained steps x CFG x (policy + reference)
    assert trainer.train_nfe == sampled * steps * guided + trained
    assert info["kept_fraction"] == 0.5 and trainer.optimizer_steps == 2
    assert trainer.inference_nfe == 0
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if "lora" not in k)
    assert any(not torch.equal(after[k], v) for k, v in before.items() if "lora_B" in k)
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in text.items())

    # generate samples the tuned UNet's ODE: the pipeline's own images, counted as inference
    z = noise(2, 6)
    images = trainer.generate(PROMPTS, z)
    assert trainer.inference_nfe == 2 * steps * guided and trainer.train_nfe == 36 + trained
    theirs = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, latents=z, output_type="pt")
    assert torch.equal(images, theirs.images)


def test_an_epoch_on_the_exact_detector_reward():
    """The shapes world's detector scores the images (no gradient); the NFE count follows the
    share of samples kept (a group scored all alike is skipped)."""
    detector = make_reward(RewardConfig())
    trainer = FlowGRPOTrainer(
        tiny_flow(),
        lambda images, prompts: detector(images, prompts)[0],
        PROMPTS,
        config=config(guidance=1.0, prompts_per_epoch=1, group_size=4, beta=0.0),
    )
    info = trainer.epoch()
    assert 0.0 <= info["reward_mean"] <= 1.0
    kept = round(info["kept_fraction"] * 4)
    assert trainer.train_nfe == 4 * 3 + kept * 2


def test_flow_grpo_needs_a_stochastic_flow_chain():
    with pytest.raises(ConfigError, match="noise_level"):
        FlowGRPOTrainer(tiny_flow(), red, PROMPTS, config=config(noise_level=0.0))
    with pytest.raises(ConfigError, match="group_size"):
        config(group_size=1)
    with pytest.raises(ConfigError, match="updates_per_epoch"):
        config(updates_per_epoch=0)
