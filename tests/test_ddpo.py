"""DDPO on the tiny shapes pipeline: step log-probs, PPO loss, per-prompt advantages, epochs."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.ddpo import (
    DDPOConfig,
    DDPOTrainer,
    PerPromptStats,
    ppo_loss,
    sample_with_log_probs,
)
from find_ray.shapes.components import build_pipeline
from tests.conftest import TINY_SHAPES

PROMPTS = ["a red circle", "a blue square"]


def tiny_pipe():
    torch.manual_seed(0)
    return build_pipeline(TINY_SHAPES)


def red(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].flatten(1).mean(1)


@pytest.mark.parametrize("eta", [1.0, 0.6])
def test_step_log_probs_are_the_ddim_gaussians_by_hand(eta):
    """Each stored log-prob is log N(x_{i+1}; mean_i, sigma_i^2) averaged over dimensions, with
    mean and sigma of DDIM's step (epsilon prediction, no clipping) from alphas_cumprod."""
    pipe = tiny_pipe()
    pipe.scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    guidance = 2.0
    chain = DenoisingChain(pipe, steps=3, guidance=guidance, eta=eta)
    prompts = PROMPTS + PROMPTS[:1]
    c = chain.conditions(prompts)
    z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = sample_with_log_probs(chain, c, z, torch.Generator().manual_seed(2))
    assert out.latents.shape == (4, 3, 3, 8, 8) and out.log_probs.shape == (3, 3)
    assert out.images.shape == (3, 3, 8, 8)
    torch.testing.assert_close(out.latents[0], z)
    torch.testing.assert_close(out.images, (out.latents[-1] / 2 + 0.5).clamp(0, 1))
    ac = pipe.scheduler.alphas_cumprod.double()
    assert out.timesteps.tolist() == [999, 666, 332] and out.stochastic.all()
    with torch.no_grad():
        for i, t in enumerate(out.timesteps.tolist()):
            x = out.latents[i]
            e_u = pipe.unet(x, t, encoder_hidden_states=c.uncond).sample.double()
            e_c = pipe.unet(x, t, encoder_hidden_states=c.cond).sample.double()
            eps = e_u + guidance * (e_c - e_u)
            a_t = ac[t]
            a_prev = ac[t - 333] if t >= 333 else ac[0]  # set_alpha_to_one=False
            x0 = (x.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
            x_prev = out.latents[i + 1].double()
            by_hand = (
                (
                    -((x_prev - mean) ** 2) / (2 * sigma**2)
                    - sigma.log()
                    - 0.5 * math.log(2 * math.pi)
                )
                .flatten(1)
                .mean(1)
            )
            torch.testing.assert_close(out.log_probs[:, i].double(), by_hand, rtol=1e-4, atol=1e-3)
            # and x_prev is a draw from it: its standardised noise is not absurd
            assert ((x_prev - mean) / sigma).abs().max() < 6


def test_deterministic_chain_is_refused():
    chain = DenoisingChain(tiny_pipe(), steps=3, guidance=1.0, eta=0.0)
    with pytest.raises(ValueError, match="eta"):
        sample_with_log_probs(chain, chain.conditions(PROMPTS), torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="eta"):
        DDPOTrainer(chain, red, PROMPTS)


def test_ppo_loss_before_any_step_has_ratio_one():
    """Before training the LoRA UNet is the sampler: recomputed log-probs equal the stored ones
    exactly, so ratio = 1, loss = -mean(clipped advantages), nothing clipped, zero KL; the
    loss still carries a gradient to the LoRA weights."""
    pipe = tiny_pipe()
    trainer = DDPOTrainer(pipe, red, PROMPTS, DDPOConfig(steps=3, guidance=2.0), seed=0)
    chain = trainer.chain
    c = chain.conditions(PROMPTS + PROMPTS)
    out = sample_with_log_probs(chain, c, torch.randn(4, 3, 8, 8), torch.Generator().manual_seed(0))
    advantages = torch.tensor([-7.0, 0.5, 3.0, 6.0])
    assert out.stochastic.tolist() == [True, True, False]  # the shapes schedule's last step
    assert out.log_probs[:, 2].eq(0).all()
    for i, t in enumerate(out.timesteps[:2]):
        loss, info = ppo_loss(
            chain,
            c,
            out.latents[i],
            t,
            out.latents[i + 1],
            out.log_probs[:, i],
            advantages,
            clip_range=1e-4,
            adv_clip_max=5.0,
        )
        assert info["ratio_mean"] == 1.0 and info["clipfrac"] == 0.0 and info["approx_kl"] == 0.0
        assert loss.item() == pytest.approx(-(-5.0 + 0.5 + 3.0 + 5.0) / 4, abs=1e-7)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.params)
    assert all(p.grad is None for p in pipe.unet.parameters() if not p.requires_grad)


def test_ppo_loss_clips_the_ratio():
    """Old log-probs shifted by +-0.1: |ratio - 1| > clip_range everywhere, and the surrogate is
    PPO's pessimistic max of the clipped and unclipped terms."""
    trainer = DDPOTrainer(tiny_pipe(), red, PROMPTS, DDPOConfig(steps=2, guidance=1.0))
    chain = trainer.chain
    c = chain.conditions(PROMPTS)
    out = sample_with_log_probs(chain, c, torch.randn(2, 3, 8, 8))
    advantages = torch.tensor([1.0, 1.0])
    old = out.log_probs[:, 0] + torch.tensor([0.1, -0.1])  # ratios e^-0.1, e^0.1
    args = (chain, c, out.latents[0], out.timesteps[0], out.latents[1], old)
    loss, info = ppo_loss(*args, advantages, clip_range=0.05, adv_clip_max=5.0)
    assert info["clipfrac"] == 1.0
    assert info["approx_kl"] == pytest.approx(0.5 * 0.01, rel=1e-4)
    # A > 0: max(-r, -clip(r)) -> -e^-0.1 (unclipped), -1.05 (clipped)
    torch.testing.assert_close(loss, -torch.tensor([math.exp(-0.1), 1.05]).mean())
    # A < 0: max(r, clip(r)) -> 0.95 (clipped), e^0.1 (unclipped)
    loss, _ = ppo_loss(*args, -advantages, clip_range=0.05, adv_clip_max=5.0)
    torch.testing.assert_close(loss, torch.tensor([0.95, math.exp(0.1)]).mean())


def test_per_prompt_stats_by_hand():
    """Per-prompt mean/std over the buffer once it holds min_count rewards, else the whole
    batch's; buffers keep the last buffer_size rewards across updates."""
    stats = PerPromptStats(buffer_size=3, min_count=2)
    eps = 1e-6
    adv = stats.update(["a", "a", "b"], torch.tensor([1.0, 3.0, 10.0]))
    batch = torch.tensor([1.0, 3.0, 10.0], dtype=torch.float64)
    b_mean, b_std = batch.mean(), batch.std(unbiased=False)
    expected = [-1 / (1 + eps), 1 / (1 + eps), ((10 - b_mean) / (b_std + eps)).item()]
    torch.testing.assert_close(adv, torch.tensor(expected))
    # b: buffer [10, 0, 2] -> mean 4, std sqrt(56/3); a: [1, 3, 5] -> mean 3, std sqrt(8/3)
    adv = stats.update(["b", "b", "a"], torch.tensor([0.0, 2.0, 5.0]))
    sb, sa = math.sqrt(56 / 3) + eps, math.sqrt(8 / 3) + eps
    torch.testing.assert_close(adv, torch.tensor([-4 / sb, -2 / sb, 2 / sa]))
    # a: 1 drops out of the buffer -> [3, 5, 7], mean 5
    adv = stats.update(["a"], torch.tensor([7.0]))
    torch.testing.assert_close(adv, torch.tensor([2 / sa]))
    assert stats.stats()["a"]["count"] == 3 and stats.stats()["a"]["mean"] == 5.0


def test_one_epoch_trains_only_lora_and_counts_nfe():
    """One epoch (3 steps, eta 1, guidance 2, 4 samples in 2 sampling batches, train batches of
    2, 2 inner epochs, timestep_fraction 0.5 of the 2 stochastic steps -> 1 trained timestep)
    moves the LoRA weights only. Train NFE = sampling (samples x steps x 2, all 3 steps) + one
    guided forward per sample, trained timestep and inner epoch (x 2); the backward passes are
    not UNet calls and count nothing, nor does the reward. generate counts inference NFE only:
    prompts x steps x 2 per call."""
    pipe = tiny_pipe()
    text = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    cfg = DDPOConfig(
        steps=3,
        guidance=2.0,
        eta=1.0,
        lr=1e-2,
        sample_batch_size=2,
        sample_batches=2,
        train_batch_size=2,
        inner_epochs=2,
        timestep_fraction=0.5,
    )
    trainer = DDPOTrainer(pipe, red, PROMPTS, cfg, seed=0)
    assert trainer.steps == [0, 1] and trainer.train_timesteps == 1
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    lora = [k for k in before if "lora" in k]
    assert lora and {n for n, p in pipe.unet.named_parameters() if p.requires_grad} == set(lora)
    info = trainer.epoch()
    samples, steps, guided = 4, 3, 2
    assert trainer.train_nfe == samples * steps * guided + 2 * samples * 1 * guided  # 24 + 16
    assert trainer.inference_nfe == 0
    assert trainer.optimizer_steps == 2 * (samples // 2)
    assert set(info) >= {"loss", "approx_kl", "clipfrac", "reward_mean"}
    after = pipe.unet.state_dict()
    frozen = [k for k in before if "lora" not in k]
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in text.items())
    changed = [k for k in lora if not torch.equal(after[k], before[k])]
    assert any("lora_B" in k for k in changed)

    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    first = trainer.generate(PROMPTS, z, eta=0.0)
    assert first.shape == (2, 3, 8, 8)
    torch.testing.assert_close(trainer.generate(PROMPTS, z, eta=0.0), first, rtol=0, atol=0)
    assert trainer.inference_nfe == 2 * 2 * steps * guided and trainer.train_nfe == 40
    noisy = trainer.generate(PROMPTS, z)  # eval_eta = 1 by default: stochastic
    assert not torch.equal(noisy, first)
