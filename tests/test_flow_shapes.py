"""The flow-matching shapes pipeline and its one-step-at-a-time chain, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from find_ray.backends import make_backend
from find_ray.baselines.dno import optimise_noise
from find_ray.baselines.flow_chain import FlowChain
from find_ray.config import ModelConfig
from find_ray.errors import ConfigError
from find_ray.shapes.components import build_pipeline
from find_ray.shapes.flow_pipeline import ShapesFlowPipeline
from tests.conftest import TINY_SHAPES
from tests.tiny_flow import red, tiny_flow

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    """tiny_flow() saved with save_pretrained: the tests load it through from_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-flow")
    tiny_flow().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flow_pipe(flow_dir):
    pipe = ShapesFlowPipeline.from_pretrained(flow_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=gen(seed))


def test_saved_pipeline_loads_with_its_parts(flow_dir, flow_pipe):
    """save_pretrained writes the pipeline class and a flow scheduler; from_pretrained gives
    back the same weights."""
    assert '"ShapesFlowPipeline"' in (flow_dir / "model_index.json").read_text()
    assert isinstance(flow_pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    built = tiny_flow()
    for name, weight in built.unet.state_dict().items():
        assert torch.equal(flow_pipe.unet.state_dict()[name], weight)


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_same_latents_give_the_same_images_bit_for_bit(flow_pipe, guidance):
    z = noise(2)

    def run() -> torch.Tensor:
        return flow_pipe(
            PROMPTS, num_inference_steps=5, guidance_scale=guidance, latents=z, output_type="pt"
        ).images

    first = run()
    assert first.shape == (2, 3, 8, 8) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, run())
    other = flow_pipe(
        PROMPTS, num_inference_steps=5, guidance_scale=guidance, latents=noise(2, 2)
    ).images  # PIL by default
    assert len(other) == 2 and other[0].size == (8, 8)


def test_the_pipeline_is_euler_on_the_guided_velocity_by_hand(flow_pipe):
    """x <- x + (sigma_{i+1} - sigma_i) v(x, 1000 sigma_i), v = v_u + g (v_c - v_u), from
    sigma = 1 to 0 (the scheduler's sigmas: linspace(1, 1/1000, N) then 0); image = x / 2 + 1/2."""
    g, steps, z = 2.0, 4, noise(2)
    with torch.no_grad():
        cond = flow_pipe.encode_prompt(PROMPTS)
        uncond = flow_pipe.encode_prompt(["", ""])
        sigmas = torch.cat([torch.linspace(1.0, 0.001, steps), torch.zeros(1)])
        x = z.clone()
        for i in range(steps):
            t = 1000 * sigmas[i]
            v_u = flow_pipe.unet(x, t, encoder_hidden_states=uncond).sample
            v_c = flow_pipe.unet(x, t, encoder_hidden_states=cond).sample
            x = x + (sigmas[i + 1] - sigmas[i]) * (v_u + g * (v_c - v_u))
        images = flow_pipe(
            PROMPTS, num_inference_steps=steps, guidance_scale=g, latents=z, output_type="pt"
        ).images
    torch.testing.assert_close(flow_pipe.scheduler.sigmas, sigmas)
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)


def test_generator_draws_the_latents_when_none_are_given(flow_pipe):
    """Without latents= the pipeline draws z_T from the generator (randn of the latent shape)."""
    g = torch.Generator().manual_seed(7)
    drawn = flow_pipe(PROMPTS, num_inference_steps=3, generator=g, output_type="pt").images
    z = torch.randn(flow_pipe.latent_shape(2), generator=torch.Generator().manual_seed(7))
    given = flow_pipe(PROMPTS, num_inference_steps=3, latents=z, output_type="pt").images
    assert torch.equal(drawn, given)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_chain_at_noise_level_zero_reproduces_the_pipeline(flow_pipe, guidance):
    """The chain's ODE (noise level 0) is the pipeline's sampler: same z_T, same bits."""
    chain = FlowChain(flow_pipe, steps=4, guidance=guidance, noise_level=0.0)
    z = noise(2, 3)
    with torch.no_grad():
        trajectory = chain.sample(z, chain.conditions(PROMPTS))
        theirs = flow_pipe(
            PROMPTS, num_inference_steps=4, guidance_scale=guidance, latents=z, output_type="pt"
        ).images
    assert torch.equal(chain.decode(trajectory.final), theirs)
    assert all(step.std == 0 for step in trajectory.steps)
    with pytest.raises(ValueError, match="deterministic"):
        chain.log_prob(trajectory.steps[0])


def test_chain_needs_a_flow_model():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="FlowMatchEulerDiscreteScheduler"):
        FlowChain(build_pipeline(TINY_SHAPES), steps=3, guidance=1.0, noise_level=0.7)


def test_the_flow_backend_drives_the_pipeline_bit_for_bit(flow_dir, flow_pipe):
    """Loaded by model.path through the backend, z_T enters by latents=: the backend's images
    are the plain pipeline's, bit for bit."""
    backend = make_backend(ModelConfig(path=str(flow_dir), steps=4, guidance=1.5, eta=0.0))
    assert backend.latent_shape == (3, 32, 32)
    z = torch.randn(2, *backend.latent_shape, generator=torch.Generator().manual_seed(5))
    theirs = flow_pipe(
        PROMPTS, num_inference_steps=4, guidance_scale=1.5, latents=z, output_type="pt"
    ).images
    assert torch.equal(backend.generate(z, PROMPTS), theirs)


def test_dno_optimises_the_noises_of_the_flow_sde(flow_pipe):
    """DNO runs on the flow chain's SDE unchanged (z_T and each step's noise): the reward
    rises, and the chain regenerates the final images from the optimised noises."""
    chain = FlowChain(flow_pipe, steps=3, guidance=1.0, noise_level=0.7)
    result = optimise_noise(
        chain, PROMPTS, red, z_T=noise(2, 8), iterations=5, lr=0.05, generator=gen(9)
    )
    assert (result.final_rewards > result.rewards[0]).all()
    with torch.no_grad():
        again = chain.sample(result.z_T, chain.conditions(PROMPTS), noises=result.noises)
    torch.testing.assert_close(chain.decode(again.final), result.final_images)
