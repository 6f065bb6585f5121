"""ReNO on the tiny flow shapes pipeline: the norm regulariser, frozen denoiser, NFE, ascent."""

from __future__ import annotations

import math

import pytest
import torch

from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.flow_chain import FlowChain
from find_ray.baselines.nfe import NFECounter
from find_ray.baselines.reno import ReNOConfig, norm_regulariser, optimise_initial_noise
from find_ray.baselines.surrogate import ShapesScoreNet, SurrogateReward
from find_ray.errors import ConfigError
from find_ray.shapes.components import build_pipeline
from tests.conftest import TINY_SHAPES
from tests.tiny_flow import red, tiny_flow

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def flow_pipe():
    return tiny_flow()


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_regulariser_by_hand():
    """||z||^2 / 2 - (d - 1) log ||z|| per latent: z = (3, 4) has norm 5 (d = 2); a 2x2 latent
    of 2s has norm 4 (d = 4). Smallest where ||z||^2 = d - 1, and its gradient pulls there."""
    z = torch.tensor([[3.0, 4.0]])
    assert norm_regulariser(z).item() == pytest.approx(12.5 - math.log(5), rel=1e-6)
    z = torch.full((2, 2, 2), 2.0)
    z[1] = 0.5  # norm 1
    torch.testing.assert_close(norm_regulariser(z), torch.tensor([8 - 3 * math.log(4), 0.5]))
    d = 3072
    radii = torch.tensor([0.5, 1.0, 2.0]) * math.sqrt(d - 1)
    values = norm_regulariser(radii[:, None] * torch.ones(1, d) / math.sqrt(d))
    assert values[1] < values[0] and values[1] < values[2]
    far = (2 * torch.randn(1, d, generator=torch.Generator().manual_seed(0))).requires_grad_()
    norm_regulariser(far).sum().backward()
    assert torch.dot(far.grad.flatten(), far.detach().flatten()) > 0  # descent shrinks it


def test_reno_raises_a_differentiable_reward_and_moves_only_z(flow_pipe):
    """On a toy reward (the red channel) the best reward rises over the start; gradients reach
    z_T only (UNet and text encoder frozen, no grads left on them), and the start is untouched;
    the best latent renders the best image."""
    chain = FlowChain(flow_pipe, steps=3, guidance=1.0, noise_level=0.0)
    z = noise(2, 1)
    start = z.clone()
    result = optimise_initial_noise(chain, PROMPTS, red, z, ReNOConfig(iterations=8, lr=5.0))
    assert torch.equal(z, start)
    assert result.rewards.shape == (8, 2)
    assert (result.best_rewards > result.rewards[0] + 0.01).all()
    assert (result.rewards[-1] > result.rewards[0]).all()
    torch.testing.assert_close(result.best_rewards, result.rewards.max(0).values)
    assert not torch.equal(result.z_T, z)
    with torch.no_grad():
        again = chain.decode(chain.sample(result.z_T, chain.conditions(PROMPTS)).final)
    torch.testing.assert_close(again, result.best_images)
    for module in (flow_pipe.unet, flow_pipe.text_encoder):
        assert all(p.requires_grad for p in module.parameters())  # restored
        assert all(p.grad is None for p in module.parameters())


def test_reno_counts_nfe_exactly(flow_pipe):
    """Each iteration renders every prompt once: B x steps x 2 NFE under guidance; the
    backward passes call no UNet. Snapshots are the best images so far and cost nothing."""
    chain = FlowChain(flow_pipe, steps=2, guidance=2.0, noise_level=0.0)
    counter = NFECounter(flow_pipe.unet)
    try:
        result = optimise_initial_noise(
            chain, PROMPTS, red, noise(2, 2), ReNOConfig(iterations=5), snapshots=(1, 3, 5)
        )
    finally:
        counter.remove()
    assert counter["inference"] == 5 * 2 * 2 * 2
    assert set(result.snapshots) == {1, 3, 5}
    torch.testing.assert_close(result.snapshots[5], result.best_images)
    first = chain.decode(chain.sample(noise(2, 2), chain.conditions(PROMPTS)).final)
    torch.testing.assert_close(result.snapshots[1], first)


def test_reno_steps_are_clipped_sgd_with_the_regulariser(flow_pipe):
    """Two iterations: one step of SGD (momentum buffer = the gradient) on the clipped
    gradient of (1 - reward) + reg_weight * R(z): z_1 = z_0 - lr * clip(grad)."""
    chain = FlowChain(flow_pipe, steps=2, guidance=1.0, noise_level=0.0)
    z0 = noise(1, 3)
    cfg = ReNOConfig(iterations=2, lr=2.0, grad_clip=0.1, reg_weight=0.5, nesterov=False)
    result = optimise_initial_noise(chain, PROMPTS[:1], red, z0, cfg)
    z = z0.clone().requires_grad_()
    images = chain.decode(chain.sample(z, chain.conditions(PROMPTS[:1])).final)
    ((1 - red(images, PROMPTS[:1])) + 0.5 * norm_regulariser(z)).sum().backward()
    grad = z.grad * min(1.0, 0.1 / z.grad.norm().item())
    torch.testing.assert_close(result.final_z, z0 - 2.0 * grad)


def test_reno_on_the_shapes_surrogate(flow_pipe):
    """The shapes surrogate (a random-weight ShapesScoreNet here) is ReNO's differentiable
    reward: the optimisation runs and keeps the best score seen."""
    torch.manual_seed(0)
    surrogate = SurrogateReward(ShapesScoreNet())
    chain = FlowChain(flow_pipe, steps=2, guidance=1.0, noise_level=0.0)
    images = torch.rand(2, 3, 32, 32)
    assert surrogate(images, PROMPTS).shape == (2,)
    z = torch.randn(flow_pipe.latent_shape(2), generator=torch.Generator().manual_seed(4))
    result = optimise_initial_noise(chain, PROMPTS, surrogate, z, ReNOConfig(iterations=3))
    assert result.best_images.shape == (2, 3, 32, 32)
    assert (result.best_rewards >= result.rewards[0]).all()


def test_reno_needs_a_deterministic_sampler():
    torch.manual_seed(0)
    chain = DenoisingChain(build_pipeline(TINY_SHAPES), steps=2, guidance=1.0, eta=1.0)
    with pytest.raises(ValueError, match="deterministic"):
        optimise_initial_noise(chain, PROMPTS[:1], red, noise(1, 0), ReNOConfig(iterations=1))
    with pytest.raises(ConfigError, match="iterations"):
        ReNOConfig(iterations=0)
