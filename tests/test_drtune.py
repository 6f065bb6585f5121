"""DRTune on the tiny shapes pipeline: stop-gradient at the UNet input, K trained steps, early
stop on the predicted x_0, and one optimisation step that moves only LoRA."""

from __future__ import annotations

import pytest
import torch
from torch.utils.hooks import RemovableHandle

from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.drtune import (
    DRTuneConfig,
    DRTuneTrainer,
    drtune_loss,
    early_stop_step,
    training_steps,
)
from find_ray.baselines.lora import add_lora
from find_ray.errors import ConfigError
from find_ray.shapes.components import build_pipeline
from tests.conftest import TINY_SHAPES

PROMPTS = ["a red circle", "a blue square"]


def red(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A differentiable reward: the mean red channel."""
    return images[:, 0].mean((1, 2))


def tuned_chain(steps: int, guidance: float) -> DenoisingChain:
    """A fresh tiny shapes pipeline with LoRA whose B is nudged off zero, so that the LoRA
    output (and the gradient of every adapter weight) is nonzero."""
    torch.manual_seed(0)
    pipe = build_pipeline(TINY_SHAPES)
    with torch.no_grad():
        for p in add_lora(pipe.unet, rank=2):
            p.add_(0.01 * torch.randn_like(p))
    return DenoisingChain(pipe, steps=steps, guidance=guidance, eta=0.0)


def record_calls(chain: DenoisingChain) -> tuple[list[tuple[bool, bool]], RemovableHandle]:
    """(grad enabled, input requires grad) for every UNet call, and the hook's handle."""
    calls: list[tuple[bool, bool]] = []
    handle = chain.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append((torch.is_grad_enabled(), a[0].requires_grad)),
        with_kwargs=True,
    )
    return calls, handle


def latents(n: int, seed: int, grad: bool = False) -> torch.Tensor:
    z = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return z.requires_grad_(grad)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_gradient_stops_at_the_unet_input_but_reaches_lora_and_z(guidance):
    chain = tuned_chain(steps=4, guidance=guidance)
    config = DRTuneConfig(train_steps=4, early_stop=(0.0, 0.0))  # every step trained
    z = latents(2, 1, grad=True)
    calls, handle = record_calls(chain)
    try:
        loss, info = drtune_loss(
            chain, chain.conditions(PROMPTS), z, PROMPTS, red, config, torch.Generator()
        )
        loss.backward()
    finally:
        handle.remove()
    assert info.stop_at == 3 and info.train_steps == [0, 1, 2, 3]
    assert [grad for grad, _ in calls] == [True] * 4
    assert not any(needs for _, needs in calls)  # the stop-gradient
    lora = [p for n, p in chain.unet.named_parameters() if "lora" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for n, p in chain.unet.named_parameters() if "lora" not in n)
    assert z.grad is not None and z.grad.abs().sum() > 0  # through the linear path


def test_only_the_k_training_steps_before_the_stop_build_a_graph():
    chain = tuned_chain(steps=8, guidance=1.0)
    config = DRTuneConfig(train_steps=2, early_stop=(0.25, 0.25))  # skip 2 of 8: m = 5
    for seed in range(3):
        calls, handle = record_calls(chain)
        try:
            loss, info = drtune_loss(
                chain,
                chain.conditions(PROMPTS),
                latents(2, seed),
                PROMPTS,
                red,
                config,
                torch.Generator().manual_seed(seed),
            )
        finally:
            handle.remove()
        assert info.stop_at == 5 and len(calls) == 6
        graphed = [i for i, (grad, _) in enumerate(calls) if grad]
        assert graphed == info.train_steps and len(graphed) == 2
        assert graphed[1] - graphed[0] == 3  # stride (m + 1) // K
        assert loss.requires_grad


def test_early_stop_scores_the_predicted_x0_of_the_stop_step():
    chain = tuned_chain(steps=6, guidance=2.0)
    config = DRTuneConfig(train_steps=2, early_stop=(0.5, 0.5))  # skip 3 of 6: m = 2
    seen: list[torch.Tensor] = []

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        seen.append(images.detach())
        return red(images, prompts)

    z, c = latents(2, 4), chain.conditions(PROMPTS)
    loss, info = drtune_loss(chain, c, z, PROMPTS, reward, config, torch.Generator())
    assert info.stop_at == 2
    torch.testing.assert_close(loss.detach(), -info.rewards.mean())  # the reward is maximised
    with torch.no_grad():
        stopped = chain.sample(z, c, stop_at=2)
        full = chain.sample(z, c)
    torch.testing.assert_close(seen[0], chain.decode(stopped.steps[2].x0))
    torch.testing.assert_close(info.rewards, red(seen[0], PROMPTS))
    assert not torch.allclose(seen[0], chain.decode(full.final), atol=1e-3)


def test_training_steps_are_k_evenly_spaced_with_a_random_offset():
    for T, K in [(4, 1), (4, 4), (10, 3), (50, 5), (7, 2)]:
        stride, offsets = T // K, set()
        for seed in range(60):
            steps = sorted(training_steps(T, K, torch.Generator().manual_seed(seed)))
            assert len(steps) == K and steps[0] >= 0 and steps[-1] < T
            assert steps == [steps[0] + i * stride for i in range(K)]
            offsets.add(steps[0])
        assert offsets == set(range(stride))  # every offset 0..stride-1 drawn
    for T, K in [(4, 0), (4, 5)]:
        with pytest.raises(ValueError):
            training_steps(T, K)


def test_early_stop_step_is_uniform_on_its_closed_range():
    drawn = {early_stop_step(10, 6, 9, torch.Generator().manual_seed(s)) for s in range(80)}
    assert drawn == {6, 7, 8, 9}
    assert early_stop_step(5, 4, 4) == 4
    for low, high in [(-1, 3), (3, 2), (2, 10)]:
        with pytest.raises(ValueError):
            early_stop_step(10, low, high)
    with pytest.raises(ConfigError):
        DRTuneConfig(early_stop=(0.3, 0.1))


def test_one_step_moves_only_lora_and_counts_training_nfe():
    """Training NFE = images through the UNet in forward calls: B per call, 2B under CFG, one
    call per step run (m + 1 of T); the backward pass adds none (no checkpointing)."""
    torch.manual_seed(0)
    pipe = build_pipeline(TINY_SHAPES)
    config = DRTuneConfig(
        rank=2, lr=1e-2, train_steps=2, early_stop=(0.0, 0.25), batch_size=2, steps=4, guidance=2.0
    )
    trainer = DRTuneTrainer(pipe, red, PROMPTS, config, seed=0)
    unet = trainer.chain.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    text_before = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    info = trainer.step()
    assert info.stop_at in (2, 3) and len(info.train_steps) == 2
    assert info.grad_norm is not None and info.grad_norm > 0
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # moved by the reward, not only weight decay
    assert all(torch.equal(p, text_before[n]) for n, p in pipe.text_encoder.named_parameters())
    assert trainer.train_nfe == config.batch_size * (info.stop_at + 1) * 2
    assert trainer.inference_nfe == 0

    z = trainer.noise(3)
    images = trainer.generate(["a", "b", "c"], z)
    assert images.shape == (3, 3, *trainer.latent_shape[1:])
    assert images.min() >= 0 and images.max() <= 1
    assert trainer.inference_nfe == 3 * 4 * 2
    assert trainer.train_nfe == config.batch_size * (info.stop_at + 1) * 2


def test_a_given_chain_must_use_the_configs_eta():
    torch.manual_seed(0)
    chain = DenoisingChain(build_pipeline(TINY_SHAPES), steps=3, guidance=1.0, eta=1.0)
    with pytest.raises(ConfigError):
        DRTuneTrainer(chain, red, PROMPTS, DRTuneConfig(eta=0.0))
