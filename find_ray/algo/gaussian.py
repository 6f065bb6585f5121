"""Diagonal-Gaussian math of the noise policies: log-densities, closed-form KLs, bounded sigma."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from find_ray.config import Reduction

SIGMA_MIN = 1e-4
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    """Mean or sum over every dim but the first (batch) one -> (B,)."""
    if reduction == "mean":
        return x.flatten(1).mean(1)
    if reduction == "sum":
        return x.flatten(1).sum(1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def reparameterise(mu: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps: standard-normal eps mapped to N(mu, sigma^2). Base and trained
    policies fed the same eps are a paired draw."""
    return mu + sigma * eps


def project_to_shell(z: Tensor) -> Tensor:
    """Each sample of z (B, ...) rescaled to ||z||^2 = d, its dimension: onto the shell where
    N(0, I) samples concentrate."""
    flat = z.flatten(1)
    scale = math.sqrt(flat.shape[1]) / flat.norm(dim=1).clamp_min(1e-12)
    return z * scale.view(-1, *[1] * (z.dim() - 1))


def gaussian_log_prob(
    z: Tensor, mu: Tensor | float, sigma: Tensor | float, reduction: Reduction = "mean"
) -> Tensor:
    """Diagonal-Gaussian log-density of each sample of z (B, ...), reduced to (B,).

    Equals ``Normal(mu, sigma).log_prob(z)`` averaged ("mean") or summed ("sum") over all
    non-batch dims; mu and sigma broadcast against z.
    """
    mu = torch.as_tensor(mu, dtype=z.dtype, device=z.device)
    sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device)
    elem = -0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - _LOG_SQRT_2PI
    return _reduce(elem.expand_as(z), reduction)


def initial_log_prob(z: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Log-density of z under the initial policy pi_0 = N(0, I), reduced to (B,)."""
    return gaussian_log_prob(z, 0.0, 1.0, reduction)


def diagonal_gaussian_kl(
    mu0: Tensor, sigma0: Tensor, mu1: Tensor, sigma1: Tensor, reduction: Reduction = "sum"
) -> Tensor:
    """KL(N(mu0, sigma0^2) || N(mu1, sigma1^2)) of diagonal Gaussians (B, ...) -> (B,).

    "sum" is the true KL between the two distributions; "mean" divides it by the dimension.
    """
    elem = torch.log(sigma1 / sigma0) + (sigma0**2 + (mu0 - mu1) ** 2) / (2 * sigma1**2) - 0.5
    return _reduce(elem, reduction)


def standard_normal_kl(mu: Tensor, sigma: Tensor, reduction: Reduction = "sum") -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) of diagonal Gaussians (B, ...) -> (B,)."""
    return _reduce(0.5 * (mu**2 + sigma**2 - 1.0) - torch.log(sigma), reduction)


def bounded_log_sigma(raw: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """log sigma from the raw parameter, squashed into [log sigma_min, log sigma_max].

    h * tanh(raw / h) with h = log sigma_max above 0 and -log sigma_min below: the identity
    near raw = 0 (sigma = 1 exactly at initialisation, slope 1), smooth, and never outside the
    bounds whatever the optimiser does. sigma_max = inf gives exp(raw) clamped at SIGMA_MIN.
    """
    if math.isinf(sigma_max):
        return raw.clamp_min(math.log(SIGMA_MIN))
    h = torch.where(raw >= 0, math.log(sigma_max), -math.log(sigma_min))
    return h * torch.tanh(raw / h)


def unbounded_log_sigma(log_sigma: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """The raw parameter whose `bounded_log_sigma` is `log_sigma` (its inverse; values at or
    beyond a bound map to the raw value of a point just inside it)."""
    if math.isinf(sigma_max):
        return log_sigma.clamp_min(math.log(SIGMA_MIN))
    h = torch.where(log_sigma >= 0, math.log(sigma_max), -math.log(sigma_min))
    return h * torch.atanh((log_sigma / h).clamp(-1 + 1e-6, 1 - 1e-6))
