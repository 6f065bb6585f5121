"""Noise policies pi_theta(z_T | c): the per-prompt diagonal Gaussian and its log-densities."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

Reduction = Literal["mean", "sum"]

SIGMA_MIN = 1e-4
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    """Mean or sum over every dim but the first (batch) one -> (B,)."""
    if reduction == "mean":
        return x.flatten(1).mean(1)
    if reduction == "sum":
        return x.flatten(1).sum(1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


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


class GaussianNoisePolicy(nn.Module):
    """Per-prompt diagonal Gaussian N(mu_c, diag(sigma_c^2)) over a latent of shape ``shape``.

    Initialised at pi_0 = N(0, I): mu = 0, log_sigma = 0. sigma = exp(log_sigma) clamped at
    SIGMA_MIN, so it stays > 0 whatever the optimiser does.
    """

    def __init__(self, num_prompts: int, shape: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.num_prompts = int(num_prompts)
        self.shape = tuple(int(s) for s in shape)
        self.mu = nn.Parameter(torch.zeros(self.num_prompts, *self.shape))
        self.log_sigma = nn.Parameter(torch.zeros(self.num_prompts, *self.shape))

    def mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of the given prompts, each (B, *shape)."""
        return self.mu[prompt_ids], self.log_sigma[prompt_ids].exp().clamp_min(SIGMA_MIN)

    @torch.no_grad()
    def sample(self, prompt_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw one z ~ pi(.|c) per prompt id (detached, (B, *shape))."""
        mu, sigma = self.mean_std(prompt_ids)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + sigma * eps

    def log_prob(self, z: Tensor, prompt_ids: Tensor, reduction: Reduction = "mean") -> Tensor:
        """Per-sample log pi(z|c), (B,).

        The default reduction is the per-element *mean* (as in the FIND reference code): the
        sum over thousands of latent dims makes log-prob differences, and so the ratio
        exp(logp_new - logp_old), explode even for tiny parameter changes.
        """
        mu, sigma = self.mean_std(prompt_ids)
        return gaussian_log_prob(z, mu, sigma, reduction)

    def kl_to_standard_normal(self, prompt_ids: Tensor, reduction: Reduction = "mean") -> Tensor:
        """KL(pi(.|c) || N(0, I)) per prompt, (B,), reduced like ``log_prob`` (a metric)."""
        mu, sigma = self.mean_std(prompt_ids)
        elem = 0.5 * (mu**2 + sigma**2 - 1.0) - torch.log(sigma)
        return _reduce(elem, reduction)

    def regulariser(self, prompt_ids: Tensor) -> Tensor:
        """Scalar mean(mu^2 + (sigma - 1)^2): keeps the policy near pi_0."""
        mu, sigma = self.mean_std(prompt_ids)
        return (mu**2 + (sigma - 1.0) ** 2).mean()

    def save(
        self, path: str | Path, version: int | None = None, prompts: list[str] | None = None
    ) -> None:
        """Write parameters to a safetensors file; shape and num_prompts go in its metadata,
        and so do the learner version and the prompts (in policy order) when given."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"kind": "gaussian", "num_prompts": str(self.num_prompts)}
        meta["shape"] = json.dumps(list(self.shape))
        if version is not None:
            meta["version"] = str(int(version))
        if prompts is not None:
            if len(prompts) != self.num_prompts:
                raise ValueError(f"{len(prompts)} prompts for {self.num_prompts} policies")
            meta["prompts"] = json.dumps(list(prompts))
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> GaussianNoisePolicy:
        """Rebuild a policy written by ``save``."""
        meta = read_policy_metadata(path)
        if meta.get("kind") != "gaussian":
            raise ValueError(f"{path} is not a GaussianNoisePolicy file (metadata {meta})")
        policy = cls(int(meta["num_prompts"]), json.loads(meta["shape"]))
        policy.load_state_dict(load_file(str(path)))
        return policy


def read_policy_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a policy file (kind, shape, num_prompts; version, prompts if saved)."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
