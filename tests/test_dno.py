"""DNO: the probability regulariser, the zeroth-order gradient, noise optimisation end to end."""

from __future__ import annotations

import math

import pytest
import torch

from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.dno import (
    DNOResult,
    optimise_noise,
    probability_regulariser,
    zeroth_order_gradient,
)
from find_ray.baselines.nfe import NFECounter
from find_ray.shapes.components import build_pipeline
from tests.conftest import TINY_SHAPES

LOG2 = math.log(2)


@pytest.fixture(scope="module")
def shapes_pipe():
    torch.manual_seed(0)
    return build_pipeline(TINY_SHAPES)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_regulariser_hand_computed_constant_noise():
    """8 values a = 2, blocks of d = 4 (n = 2): every permutation gives the same blocks, with
    mean a 1 and covariance a^2 1 1^T, ||S - I||_2 = 4 a^2 - 1 = 15."""
    noise = torch.full((2, 4), 2.0)
    mean_term = 2 * 16 / (2 * 4) - LOG2  # n ||m||^2 / (2 d) - log 2
    c = math.sqrt(1 + 15) - 1 - math.sqrt(4 / 2)
    cov_term = 2 * c**2 / 2 - LOG2
    expected = 2 * (mean_term + cov_term)  # sequential + average over identical shuffles
    value = probability_regulariser(noise, subsample=1, generator=gen(0), shuffles=7)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_regulariser_hand_computed_sequential_blocks():
    """Blocks (5, 0, 0, 0) and (-5, 0, 0, 0): zero mean, S = diag(25, 0, 0, 0), ||S - I|| = 24;
    a 9th value is left out (D mod d). A mean-only violation is caught too."""
    noise = torch.tensor([5.0, 0, 0, 0, -5, 0, 0, 0, 100])
    c = math.sqrt(25) - 1 - math.sqrt(2)
    value = probability_regulariser(noise, subsample=1, shuffles=0)
    assert value.item() == pytest.approx(2 * c**2 / 2 - LOG2, rel=1e-5)
    # d = 1 (subsample 0), n = 4 values 1.5: mean term 4 * 2.25 / 2 - log 2, S = 2.25,
    # c = sqrt(2.25) - 1 - sqrt(1/4) = 0: no covariance term
    shifted = probability_regulariser(torch.full((4,), 1.5), subsample=0, shuffles=0)
    assert shifted.item() == pytest.approx(4 * 2.25 / 2 - LOG2, rel=1e-5)


def test_regulariser_small_on_gaussian_large_off_the_shell():
    x = torch.randn(20_000, generator=gen(1))
    reg = lambda v: probability_regulariser(v, subsample=2, generator=gen(2)).item()  # noqa: E731
    assert 0 <= reg(x) < 0.1
    assert reg(3 * x) > 1000  # too far out
    assert reg(0.5 * x) > 10  # too far in
    assert reg(x + 0.5) > 1000  # shifted
    assert reg(torch.randn(20_000, generator=gen(3))) < 0.1


def test_regulariser_is_differentiable_and_its_descent_returns_to_the_shell():
    x = (3 * torch.randn(5_000, generator=gen(4))).requires_grad_(True)
    before = probability_regulariser(x, subsample=1, generator=gen(5), shuffles=10)
    before.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gradient shrinks a too-large noise: it points along x
    assert torch.dot(x.grad, x.detach()) > 0
    with torch.no_grad():
        y = x - 1e-3 * x.grad / x.grad.norm() * x.norm()
    after = probability_regulariser(y, subsample=1, generator=gen(5), shuffles=10)
    assert after < before


def test_zeroth_order_gradient_matches_a_quadratic():
    """f(z) = 1/2 z^T A z + b^T z: the estimate is close to A z + b."""
    g = gen(6)
    m = torch.randn(8, 8, generator=g)
    a, b, z = m @ m.T / 8 + torch.eye(8), torch.randn(8, generator=g), torch.randn(8, generator=g)
    f = lambda v: 0.5 * v @ a @ v + b @ v  # noqa: E731
    true = a @ z + b
    est = zeroth_order_gradient(f, z, mu=1e-2, samples=4000, generator=gen(7))
    assert torch.cosine_similarity(est, true, dim=0) > 0.99
    assert (est - true).norm() / true.norm() < 0.1
    few = zeroth_order_gradient(f, z, mu=1e-2, samples=3, generator=gen(7))
    assert (few - true).norm() > (est - true).norm()  # more samples, better estimate


def test_zeroth_order_gradient_per_row_and_through_a_map():
    """Per-row values give each row its own gradient; through a map g = A (linear) with a linear
    f = c^T y the estimate tends to A A^T c, the reference's image-space preconditioning."""
    g = gen(8)
    z, w = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    est = zeroth_order_gradient(lambda v: (w * v).sum(1), z, 1e-2, 3000, gen(9))
    assert torch.cosine_similarity(est, w, dim=1).min() > 0.97

    a, c = torch.randn(5, 6, generator=g), torch.randn(5, generator=g)
    est = zeroth_order_gradient(
        lambda y: c @ y, torch.randn(6, generator=g), 1e-2, 3000, gen(10), through=lambda x: a @ x
    )
    assert est.shape == (5,)
    assert torch.cosine_similarity(est, a @ a.T @ c, dim=0) > 0.97


def red(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return images[:, 0].mean((1, 2))


def test_dno_raises_a_differentiable_reward(shapes_pipe):
    chain = DenoisingChain(shapes_pipe, steps=3, guidance=1.0, eta=1.0)
    prompts = ["a red circle", "a blue square"]
    z = torch.randn(2, 3, 8, 8, generator=gen(11))
    counter = NFECounter(shapes_pipe.unet)
    try:
        result = optimise_noise(
            chain,
            prompts,
            red,
            z_T=z,
            iterations=6,
            lr=0.05,
            gamma=0.1,
            subsample=1,
            generator=gen(12),
        )
    finally:
        counter.remove()
    # per iteration B T forward, recomputed once in the backward (checkpointing); final run
    assert counter["inference"] == 6 * 2 * (2 * 3) + 2 * 3
    assert isinstance(result, DNOResult)
    assert result.rewards.shape == (6, 2)
    assert (result.final_rewards > result.rewards[0] + 0.02).all()
    assert (result.rewards[-1] > result.rewards[0]).all()
    assert not torch.equal(result.z_T, z)
    # the result regenerates its images; the UNet is left trainable as it was
    with torch.no_grad():
        again = chain.decode(
            chain.sample(result.z_T, chain.conditions(prompts), noises=result.noises).final
        )
    torch.testing.assert_close(again, result.final_images)
    torch.testing.assert_close(red(again, prompts), result.final_rewards)
    assert all(p.requires_grad for p in shapes_pipe.unet.parameters())
    assert all(p.grad is None for p in shapes_pipe.unet.parameters())


def test_dno_snapshot_zero_is_the_stochastic_chains_own_sample(shapes_pipe):
    """Snapshot 0 is the chain's sample of the starting noises, before any step: one more
    chain, counted; it is what the first iteration scored."""
    chain = DenoisingChain(shapes_pipe, steps=3, guidance=1.0, eta=1.0)
    prompts = ["a red circle", "a blue square"]
    z = torch.randn(2, 3, 8, 8, generator=gen(21))
    noises = [torch.randn(2, 3, 8, 8, generator=gen(22 + i)) for i in range(3)]
    counter = NFECounter(shapes_pipe.unet)
    try:
        result = optimise_noise(
            chain, prompts, red, z_T=z, noises=noises, iterations=2, lr=0.05, snapshots=(0, 2)
        )
    finally:
        counter.remove()
    assert counter["inference"] == 2 * 2 * (2 * 3) + 2 * (2 * 3)  # + snapshot 0 and final
    with torch.no_grad():
        start = chain.decode(chain.sample(z, chain.conditions(prompts), noises=noises).final)
    torch.testing.assert_close(result.snapshots[0], start)
    torch.testing.assert_close(result.rewards[0], red(start, prompts))
    assert torch.equal(result.snapshots[2], result.final_images)


def test_dno_zeroth_order_runs_with_a_non_differentiable_reward(shapes_pipe):
    chain = DenoisingChain(shapes_pipe, steps=3, guidance=2.0, eta=1.0)
    prompts = ["a red circle", "a blue square"]

    def rounded_red(images, prompts):  # no gradient through round()
        assert not torch.is_grad_enabled()
        return (images[:, 0] * 255).round().mean((1, 2)) / 255

    counter = NFECounter(shapes_pipe.unet)
    try:
        result = optimise_noise(
            chain,
            prompts,
            rounded_red,
            z_T=torch.randn(2, 3, 8, 8, generator=gen(13)),
            iterations=4,
            lr=0.05,
            gradient=False,
            mu=0.05,
            samples=6,
            generator=gen(14),
        )
    finally:
        counter.remove()
    # guided (x2): per iteration the sample and its recomputation, 6 perturbed chains (the
    # unperturbed one is reused); final run
    assert counter["inference"] == 2 * (4 * (2 + 6) * (2 * 3) + 2 * 3)
    assert result.rewards.shape == (4, 2) and result.final_rewards.shape == (2,)
    assert result.z_T.shape == (2, 3, 8, 8) and result.final_images.shape == (2, 3, 8, 8)
    assert len(result.noises) == 3 and all(n.shape == (2, 3, 8, 8) for n in result.noises)
    assert (result.final_rewards > result.rewards[0]).all()


def test_dno_needs_a_stochastic_chain(shapes_pipe):
    chain = DenoisingChain(shapes_pipe, steps=3, guidance=1.0, eta=0.0)
    with pytest.raises(ValueError, match="eta"):
        optimise_noise(chain, ["a"], red, z_T=torch.randn(1, 3, 8, 8), iterations=1)
