"""DNO: Direct Noise Optimization (Tang et al. 2024, "Tuning-Free Alignment of Diffusion Models
with Direct Noise Optimization"; reference code TZW1998/Direct-Noise-Optimization).

DNO leaves the model alone and optimises, per prompt, the noises of a stochastic (DDIM eta > 0)
chain: z_T and every step's Gaussian noise. Each iteration samples the chain from the current
noises, scores the image and takes an AdamW step on the noises, either with the reward's
gradient backpropagated through the chain (gradient checkpointing keeps the memory at one
UNet call) or, for a non-differentiable reward, with a zeroth-order estimate of the reward's
gradient in image space that is then backpropagated through the chain (the reference's nograd
variant). A probability regulariser keeps the noises on the Gaussian shell, where the model
was trained, so that the reward is not hacked by out-of-distribution noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from find_ray.baselines.chain import Conditions, DenoisingChain, ScoreFn


def _randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None):
    """Standard normal draws shaped `shape`, from `generator` on its own device, moved to
    `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return out.to(like.device, like.dtype)


def _shell_terms(rows: torch.Tensor) -> torch.Tensor:
    """The mean and covariance penalties of (K, n, d) blocks of noise, summed per block (K,)."""
    _, n, d = rows.shape
    mean = rows.mean(1)
    mean_term = torch.relu(n * mean.pow(2).sum(-1) / (2 * d) - math.log(2))
    cov = rows.transpose(1, 2) @ rows / n
    eye = torch.eye(d, device=rows.device, dtype=rows.dtype)
    spectral = torch.linalg.eigvalsh(cov - eye).abs().amax(-1)  # ||S - I||_2, S symmetric
    excess = torch.relu(torch.sqrt(1 + spectral) - 1 - math.sqrt(d / n))
    cov_term = torch.relu(n * excess.pow(2) / 2 - math.log(2))
    return mean_term + cov_term


def probability_regulariser(
    noise: torch.Tensor,
    subsample: int,
    generator: torch.Generator | None = None,
    shuffles: int = 100,
) -> torch.Tensor:
    """DNO's probability regulariser of one noise set (any shape, flattened), a scalar >= 0.

    The flattened noise (D values) is cut into n = D // d blocks of d = 4**subsample values
    (a tail of D mod d values is left out), the rows of an (n, d) matrix X. With the block mean
    m = X^T 1 / n and the block covariance S = X^T X / n, i.i.d. N(0, 1) noise has
    P(||m||^2 >= t) <= 2 exp(-n t / (2 d)) and ||S - I||_2 within the random-matrix bound, so
    the reference scores the negative log of those probability bounds, each capped at 1:

        mean(X) = max(0, n ||m||^2 / (2 d) - log 2)
        cov(X)  = max(0, n c^2 / 2 - log 2),  c = max(0, sqrt(1 + ||S - I||_2) - 1 - sqrt(d / n))
        R       = mean(X) + cov(X) + 1/K sum_k [mean(X_k) + cov(X_k)]

    where X_k are the blocks of K = `shuffles` random permutations of the noise, drawn from
    `generator` (or, if it lives on another device, from one on the noise's device that it
    seeds). The reference returns R + 4 log 2 (its log-probabilities are capped at
    -log 2); the constant is dropped here, so R is 0 at its minimum, which genuine Gaussian
    noise reaches or nearly so, and grows quickly as the noise leaves the Gaussian shell
    (scaled, shifted or correlated). Differentiable in `noise`.
    """
    flat = noise.flatten()
    d = 4**subsample
    n = flat.numel() // d
    if n < 1:
        raise ValueError(f"noise of {flat.numel()} values has no block of 4**{subsample} = {d}")
    if generator is not None and generator.device != flat.device:  # permute where noise is
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        generator = torch.Generator(flat.device).manual_seed(seed)
    blocks = [flat[: n * d]]
    for _ in range(shuffles):
        order = torch.randperm(flat.numel(), generator=generator, device=flat.device)
        blocks.append(flat[order[: n * d]])
    terms = _shell_terms(torch.stack(blocks).view(len(blocks), n, d))
    return terms[0] + (terms[1:].mean() if shuffles else 0.0)


def zeroth_order_gradient(
    f: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    mu: float,
    samples: int,
    generator: torch.Generator | None = None,
    *,
    through: Callable[[torch.Tensor], torch.Tensor] | None = None,
    base: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """A zeroth-order (random-direction finite-difference) estimate of the gradient of f.

    With y = g(z) (g = `through`, default the identity) and `samples` directions u_i ~ N(0, I)
    drawn from `generator`, y_i = g(z + mu u_i):

        grad ~ 1 / (samples mu^2) sum_i (f(y_i) - f(y_0)) (y_i - y_0)

    For g the identity this is the Gaussian-smoothing estimate 1/(samples mu) sum_i
    (f(z + mu u_i) - f(z)) u_i of grad f(z) (unbiased for a quadratic f). For a general g it
    is the reference's nograd estimate of the gradient of f in y-space (there g is the chain
    and decoder, z the noises, y the image), which tends to J J^T grad_y f (J the Jacobian of
    g): a preconditioned ascent direction that still points uphill once backpropagated
    through g. f may return a scalar or one value per row of y ((B,): the estimate is then of
    the gradient of f's sum, row by row); it is called under no_grad, samples + 1 times
    (samples times when `base` = (y_0, f(y_0)) is given).
    """
    g = through if through is not None else (lambda x: x)
    with torch.no_grad():
        if base is None:
            y0 = g(z)
            base = y0, f(y0)
        y0, f0 = base
        estimate = torch.zeros_like(y0)
        for _ in range(samples):
            y = g(z + mu * _randn(tuple(z.shape), z, generator))
            df = (f(y) - f0).to(y.dtype)
            if df.dim():
                df = df.reshape(-1, *[1] * (y.dim() - 1))
            estimate += df * (y - y0)
    return estimate / (samples * mu**2)


@dataclass
class DNOResult:
    """Optimised noises per prompt and what they give.

    z_T: (B, *latent) initial latents; noises: per step, (B, *latent) (chain order);
    rewards: (iterations, B), the reward of each iteration's sample, before its update;
    final_images: (B, 3, H, W) in [0, 1], the chain's output from the optimised noises (the
    same as `chain.decode(chain.sample(z_T, conditions, noises=noises).final)`);
    final_rewards: (B,) their reward.
    """

    z_T: torch.Tensor
    noises: list[torch.Tensor]
    rewards: torch.Tensor
    final_images: torch.Tensor
    final_rewards: torch.Tensor
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # iteration -> images


@contextmanager
def frozen(*modules: torch.nn.Module | None) -> Iterator[None]:
    """The modules' parameters without requires_grad inside the block (restored after)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _render(chain: DenoisingChain, noise: torch.Tensor, c: Conditions, dtype: torch.dtype):
    """Images of the chain from a (B, T + 1, *latent) noise set: z_T, then each step's."""
    noise = noise.to(dtype)
    trajectory = chain.sample(noise[:, 0], c, noises=list(noise[:, 1:].unbind(1)), checkpoint=True)
    return chain.decode(trajectory.final)


def _noise_set(
    chain: DenoisingChain,
    z_T: torch.Tensor,
    batch: int,
    noises: list[torch.Tensor] | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The fp32 leaf DNO optimises: z_T and the step noises (drawn from `generator` when not
    given), (B, T + 1, *latent), index 0 is z_T."""
    if not chain.eta > 0:
        raise ValueError(
            f"DNO optimises the step noises of a stochastic chain: needs eta > 0, got {chain.eta}"
        )
    if z_T.shape[0] != batch:
        raise ValueError(f"z_T holds {z_T.shape[0]} latents for {batch} prompts")
    steps = len(chain.timesteps)
    if noises is None:
        noises = [_randn(tuple(z_T.shape), z_T, generator) for _ in range(steps)]
    if len(noises) != steps:
        raise ValueError(f"{len(noises)} step noises for a chain of {steps} steps")
    return torch.stack([z_T, *noises], 1).detach().float().requires_grad_(True)


@torch.no_grad()
def clip_per_prompt_(grad: torch.Tensor, max_norm: float) -> None:
    """Scales each prompt's gradient (rows of dim 0) to norm <= max_norm, in place."""
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    grad.mul_((max_norm / norms).clamp(max=1.0).view(-1, *[1] * (grad.dim() - 1)))


def optimise_noise(
    chain: DenoisingChain,
    prompts: list[str],
    reward_fn: ScoreFn,
    *,
    z_T: torch.Tensor,
    iterations: int = 50,
    lr: float = 0.01,
    gamma: float = 0.0,
    subsample: int = 1,
    gradient: bool = True,
    mu: float = 0.01,
    samples: int = 4,
    generator: torch.Generator | None = None,
    progress: bool = False,
    noises: list[torch.Tensor] | None = None,
    shuffles: int = 100,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    snapshots: Collection[int] = (),
) -> DNOResult:
    """DNO: maximises reward_fn(images, prompts) (B,) - gamma * regulariser over z_T and the
    step noises of the stochastic chain, one noise set per prompt.

    z_T: (B, *latent) starting latents, B = len(prompts); noises: the starting step noises
        (default: drawn from `generator`).
    gradient: backpropagate the reward through the checkpointed chain (the reference's
        dno_stable_diffusion.py); False: reward_fn may be non-differentiable and is called
        under no_grad; its image-space gradient is estimated from `samples` chains at noises
        perturbed by `mu` (`zeroth_order_gradient`), normalised per image, and backpropagated
        through the chain (dno_stable_diffusion_nograd.py).
    gamma, subsample, shuffles: weight and settings of `probability_regulariser`, applied to
        each prompt's whole noise set (z_T and all step noises), as the reference does.

    As in the reference the optimiser is AdamW (torch defaults but `lr`, weight decay 0.01)
    and each prompt's noise gradient is clipped to norm `max_grad_norm` before the step.
    snapshots: iterations after which the images are rendered (one more no-grad chain each,
        but for the last iteration, whose images are `final_images`) into `snapshots`.
    Cost per iteration: B T NFE forward (x2 under guidance) plus the same again recomputed in
    the backward pass, plus B T `samples` NFE without gradient when gradient=False.
    """
    noise = _noise_set(chain, z_T, len(prompts), noises, generator)
    c, dtype = chain.conditions(prompts), z_T.dtype
    optimiser = torch.optim.AdamW([noise], lr=lr, weight_decay=weight_decay)

    def render(x: torch.Tensor) -> torch.Tensor:
        return _render(chain, x, c, dtype)

    def reward(images: torch.Tensor) -> torch.Tensor:
        return reward_fn(images, prompts).float()

    def objective(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to maximise, the rewards): the reward itself, or with gradient=False the
        images' product with the normalised zeroth-order estimate of its gradient."""
        if gradient:
            rewards = reward(images)
            return rewards.sum(), rewards
        with torch.no_grad():
            rewards = reward(images.detach())
        base = (images.detach(), rewards)
        direction = zeroth_order_gradient(
            reward, noise.detach(), mu, samples, generator, through=render, base=base
        )
        norms = direction.flatten(1).norm(dim=1).view(-1, *[1] * (direction.dim() - 1))
        return (direction / (norms + 1e-3) * images).sum(), rewards

    history, taken = [], {}
    bar = tqdm(range(iterations), desc="dno", disable=not progress)
    with frozen(chain.unet, chain.vae):
        if 0 in snapshots:  # the stochastic chain's own sample, before any step
            with torch.no_grad():
                taken[0] = render(noise)
        for i in bar:
            optimiser.zero_grad()
            gain, rewards = objective(render(noise))
            loss = -gain
            if gamma > 0:
                loss = loss + gamma * sum(
                    probability_regulariser(x, subsample, generator, shuffles) for x in noise
                )
            loss.backward()
            clip_per_prompt_(noise.grad, max_grad_norm)
            optimiser.step()
            history.append(rewards.detach())
            if i + 1 in snapshots and i + 1 < iterations:  # the last one is final_images
                with torch.no_grad():
                    taken[i + 1] = render(noise)
            bar.set_postfix(reward=f"{rewards.mean().item():.4f}")
        with torch.no_grad():
            final_images = render(noise)
            final_rewards = reward(final_images)
    final = noise.detach().to(dtype)
    return DNOResult(
        z_T=final[:, 0],
        noises=list(final[:, 1:].unbind(1)),
        rewards=torch.stack(history) if history else torch.empty(0, len(prompts)),
        final_images=final_images,
        final_rewards=final_rewards,
        snapshots={**taken, iterations: final_images} if iterations in snapshots else taken,
    )
