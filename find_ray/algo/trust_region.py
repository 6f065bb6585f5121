"""A per-update trust region on the true distribution change of a noise policy.

After the policy steps of one update, the parameters are pulled back along the straight line
to the previous version until KL(pi_old(.|c) || pi_new(.|c)) <= target_kl for every training
prompt c (summed over the latent: the true KL, closed form for diagonal Gaussians). A
per-prompt policy gets one step fraction per prompt; an amortized one, whose network every
prompt shares, one fraction for all (set by its largest KL). A bisection on the fraction keeps
only fractions that satisfy the bound, so the target is never exceeded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from find_ray.algo.gaussian import diagonal_gaussian_kl
from find_ray.algo.policy import NoisePolicy

BISECTION_STEPS = 30


class TrustRegionStep(NamedTuple):
    kl_raw: Tensor  # (P,) KL of the unconstrained step per prompt
    kl: Tensor  # (P,) KL of the applied step per prompt (<= target_kl)
    scale: Tensor  # (P,) fraction of the step that was kept


def parameters_of(policy: NoisePolicy) -> list[Tensor]:
    """Detached copies of the parameters: the point a trust region measures from."""
    return [p.detach().clone() for p in policy.parameters()]


@torch.no_grad()
def trust_region_(policy: NoisePolicy, old: list[Tensor], target_kl: float) -> TrustRegionStep:
    """Scales the step from `old` (see `parameters_of`) down, in place, to KL <= target."""
    ids = torch.arange(policy.num_prompts)
    params, new = list(policy.parameters()), parameters_of(policy)
    per_prompt = policy.independent_prompts

    def kl_at(fraction: Tensor) -> Tensor:
        """KL per prompt with `fraction` (P,) of the step applied (one shared if amortized)."""
        for param, start, end in zip(params, old, new, strict=True):
            f = fraction.view((-1,) + (1,) * (param.dim() - 1)) if per_prompt else fraction[0]
            param.copy_(start + f * (end - start))
        mu, sigma = policy.mean_std(ids)
        return diagonal_gaussian_kl(mu_old, sigma_old, mu, sigma)

    for param, start in zip(params, old, strict=True):
        param.copy_(start)
    mu_old, sigma_old = policy.mean_std(ids)
    ones = torch.ones(policy.num_prompts)
    kl_raw = kl_at(ones)
    over = kl_raw > target_kl if per_prompt else (kl_raw > target_kl).any().expand_as(ones)
    if not over.any():
        return TrustRegionStep(kl_raw, kl_raw, ones)
    feasible, infeasible = torch.zeros_like(ones), ones.clone()
    for _ in range(BISECTION_STEPS):
        mid = (feasible + infeasible) / 2
        kl = kl_at(torch.where(over, mid, ones))
        ok = kl <= target_kl if per_prompt else (kl <= target_kl).all().expand_as(ones)
        feasible = torch.where(ok, mid, feasible)
        infeasible = torch.where(ok, infeasible, mid)
    scale = torch.where(over, feasible, ones)
    return TrustRegionStep(kl_raw, kl_at(scale), scale)
