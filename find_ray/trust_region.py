"""A per-update trust region on the true distribution change of a per-prompt noise policy.

After the policy steps of one update, each prompt's parameters are pulled back along the
straight line to the previous version until KL(pi_old(.|c) || pi_new(.|c)) <= target_kl
(summed over the latent: the true KL, closed form for diagonal Gaussians). A bisection on the
step fraction keeps only fractions that satisfy the bound, so the target is never exceeded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from find_ray.policy import GaussianNoisePolicy, diagonal_gaussian_kl

BISECTION_STEPS = 30


class TrustRegionStep(NamedTuple):
    kl_raw: Tensor  # (P,) KL of the unconstrained step per prompt
    kl: Tensor  # (P,) KL of the applied step per prompt (<= target_kl)
    scale: Tensor  # (P,) fraction of the step that was kept


def parameters_of(policy: GaussianNoisePolicy) -> tuple[Tensor, Tensor]:
    """Detached copies of (mu, log_sigma): the point a trust region measures from."""
    return policy.mu.detach().clone(), policy.log_sigma.detach().clone()


@torch.no_grad()
def trust_region_(
    policy: GaussianNoisePolicy, old: tuple[Tensor, Tensor], target_kl: float
) -> TrustRegionStep:
    """Scales each prompt's step from `old` = (mu, log_sigma) down, in place, to KL <= target."""
    ids = torch.arange(policy.num_prompts)
    new = parameters_of(policy)

    def kl_at(fraction: Tensor) -> Tensor:
        shape = (-1,) + (1,) * len(policy.shape)
        for param, start, end in zip((policy.mu, policy.log_sigma), old, new, strict=True):
            param.copy_(start + fraction.view(shape) * (end - start))
        mu, sigma = policy.mean_std(ids)
        return diagonal_gaussian_kl(mu_old, sigma_old, mu, sigma)

    for param, start in zip((policy.mu, policy.log_sigma), old, strict=True):
        param.copy_(start)
    mu_old, sigma_old = policy.mean_std(ids)
    ones = torch.ones(policy.num_prompts)
    kl_raw = kl_at(ones)
    over = kl_raw > target_kl
    if not over.any():
        return TrustRegionStep(kl_raw, kl_raw, ones)
    feasible, infeasible = torch.zeros_like(ones), ones.clone()
    for _ in range(BISECTION_STEPS):
        mid = (feasible + infeasible) / 2
        ok = kl_at(torch.where(over, mid, ones)) <= target_kl
        feasible = torch.where(ok, mid, feasible)
        infeasible = torch.where(ok, infeasible, mid)
    scale = torch.where(over, feasible, ones)
    return TrustRegionStep(kl_raw, kl_at(scale), scale)
