"""The bench's denoising chain and NFE counter on tiny random pipelines."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from find_ray.baselines.chain import DenoisingChain, gaussian_log_prob
from find_ray.baselines.nfe import NFECounter
from find_ray.shapes.components import build_pipeline
from tests.conftest import TINY_SHAPES
from tests.tiny_pipelines import tiny_sd


@pytest.fixture(scope="module")
def shapes_pipe():
    torch.manual_seed(0)
    return build_pipeline(TINY_SHAPES)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_chain_reproduces_the_pipeline(shapes_pipe, guidance):
    """eta = 0: the chain's images equal the pipeline's for the same z_T."""
    chain = DenoisingChain(shapes_pipe, steps=4, guidance=guidance, eta=0.0)
    z = torch.randn(2, *shapes_pipe.latent_shape(1)[1:], generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a blue square"]
    with torch.no_grad():
        ours = chain.decode(chain.sample(z, chain.conditions(prompts)).final)
        theirs = shapes_pipe(
            prompts, num_inference_steps=4, guidance_scale=guidance, latents=z, output_type="pt"
        ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_sd_chain_reproduces_the_pipeline(tmp_path):
    pipe = tiny_sd(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    chain = DenoisingChain(pipe, steps=3, guidance=3.0, eta=0.0)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = chain.decode(chain.sample(z, chain.conditions(["a cat"])).final)
        theirs = pipe(
            ["a cat"],
            num_inference_steps=3,
            guidance_scale=3.0,
            latents=z,
            output_type="pt",
            height=pipe.unet.config.sample_size * pipe.vae_scale_factor,
            width=pipe.unet.config.sample_size * pipe.vae_scale_factor,
        ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_step_is_the_schedulers_with_its_gaussian(shapes_pipe):
    """eta > 0: prev = mean + std * noise equals the scheduler's step with that noise, and the
    log-prob is the Normal's log-density averaged over dimensions."""
    chain = DenoisingChain(shapes_pipe, steps=5, guidance=1.0, eta=1.0)
    g = torch.Generator().manual_seed(3)
    x, out, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    t = chain.timesteps[2]
    step = chain.step(out, t, x, noise)
    reference = DDIMScheduler.from_config(shapes_pipe.scheduler.config)
    reference.set_timesteps(5)
    expected = reference.step(out, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(step.prev, expected)
    assert step.std > 0
    by_hand = torch.distributions.Normal(step.mean, step.std).log_prob(step.prev)
    torch.testing.assert_close(chain.log_prob(step), by_hand.flatten(1).mean(1))
    torch.testing.assert_close(
        gaussian_log_prob(step.mean, step.mean, 2.0)[0],
        torch.tensor(-torch.log(torch.tensor(2.0 * (2 * torch.pi) ** 0.5)).item()),
    )


def test_nfe_counter_counts_images_per_call_and_phase(shapes_pipe):
    """Every UNet call counts its batch: guidance doubles, phases are kept apart, the pipeline
    and the chain count alike."""
    counter = NFECounter(shapes_pipe.unet)
    try:
        z = torch.randn(3, 3, 8, 8)
        guided = DenoisingChain(shapes_pipe, steps=4, guidance=2.0, eta=0.0)
        with torch.no_grad(), counter.phase("train"):
            guided.sample(z, guided.conditions(["a"] * 3))
        assert counter["train"] == 3 * 4 * 2
        with torch.no_grad():
            shapes_pipe(["a"] * 3, num_inference_steps=5, guidance_scale=1.0, latents=z)
        assert counter["inference"] == 3 * 5 and counter["train"] == 24
    finally:
        counter.remove()
    with torch.no_grad():
        shapes_pipe(["a"], num_inference_steps=2, guidance_scale=1.0)
    assert counter["inference"] == 15  # removed: no longer counting


def test_detached_input_stops_gradient_at_the_unet_input(shapes_pipe):
    """With detach_input the UNet never sees a graph-carrying input, yet z_T still gets a
    gradient through the steps' linear path."""
    chain = DenoisingChain(shapes_pipe, steps=3, guidance=1.0, eta=0.0)
    seen = []
    handle = shapes_pipe.unet.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].requires_grad)
    )
    try:
        z = torch.randn(1, 3, 8, 8, requires_grad=True)
        chain.sample(z, chain.conditions(["a"]), detach_input=True).final.sum().backward()
    finally:
        handle.remove()
    assert seen == [False, False, False]
    assert z.grad is not None and z.grad.abs().sum() > 0
