"""Noise policies pi_theta(z_T | c): the base class and the per-prompt diagonal Gaussian."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from find_ray.algo.gaussian import (
    SIGMA_MIN,
    bounded_log_sigma,
    gaussian_log_prob,
    project_to_shell,
    reparameterise,
    standard_normal_kl,
    unbounded_log_sigma,
)
from find_ray.config import Reduction

SHELLS = ("none", "project", "tied")  # policy.shell, stored as its index in `shell_mode`


class NoisePolicy(nn.Module):
    """A diagonal Gaussian noise policy pi(y | c) = N(mu_c, diag(sigma_c^2)) over the action y,
    c a training prompt index; subclasses define `_mean_std`. sigma stays in ``sigma_range``;
    (SIGMA_MIN, inf) is the unbounded exp parametrisation. The initial latent the denoiser gets
    is `latent(y)`: y itself, or with ``shell="project"`` y rescaled onto the Gaussian shell
    ||z||^2 = d; ``shell="tied"`` ties sigma to mu so that E ||y||^2 = d. Both settings are
    buffers: they travel with the weights.
    """

    kind = ""  # written into saved files; `load_policy` dispatches on it
    independent_prompts = True  # each prompt has its own parameters (rows of dim 0)

    def __init__(
        self,
        num_prompts: int,
        shape: tuple[int, ...] | list[int],
        sigma_range: tuple[float, float],
        shell: str = "none",
    ) -> None:
        super().__init__()
        lo, hi = sigma_range
        if not 0 < lo < 1 < hi:
            raise ValueError(f"sigma_range must hold 0 < min < 1 < max, got {sigma_range}")
        if shell not in SHELLS:
            raise ValueError(f"shell must be one of {SHELLS}, got {shell!r}")
        self.num_prompts = int(num_prompts)
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("sigma_range", torch.tensor([float(lo), float(hi)]))
        self.register_buffer("shell_mode", torch.tensor(SHELLS.index(shell)))
        self.register_load_state_dict_pre_hook(_defaults_if_missing)

    @property
    def shell(self) -> str:
        return SHELLS[int(self.shell_mode)]

    def bounds(self) -> tuple[float, float]:
        lo, hi = self.sigma_range.tolist()
        return lo, hi

    def _mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of the given training prompts from the parameters, each (B, *shape)."""
        raise NotImplementedError

    def mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of the given training prompts, each (B, *shape)."""
        return self.tie(*self._mean_std(prompt_ids))

    def tie(self, mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """With ``shell="tied"``: sigma = sqrt(1 - ||mu||^2 / d) for each prompt (floored at
        sigma_min), so that E ||y||^2 = ||mu||^2 + d sigma^2 = d; else (mu, sigma) as given."""
        if self.shell != "tied":
            return mu, sigma
        energy = mu.pow(2).flatten(1).mean(1).view(-1, *[1] * (mu.dim() - 1))
        return mu, (1 - energy).clamp_min(self.bounds()[0] ** 2).sqrt().expand_as(mu)

    def reparameterise(self, prompt_ids: Tensor, eps: Tensor) -> Tensor:
        """The action y = mu_c + sigma_c * eps, (B, *shape), for standard-normal eps."""
        return reparameterise(*self.mean_std(prompt_ids), eps)

    def latent(self, action: Tensor) -> Tensor:
        """The initial latent z_T the denoiser gets for actions (B, *shape): the action, or
        with ``shell="project"`` the action rescaled to ||z||^2 = d."""
        if self.shell != "project":
            return action
        return project_to_shell(action)

    def noise(self, prompt_ids: Tensor, eps: Tensor) -> Tensor:
        """The initial latents the policy gives for standard-normal eps: latent(action)."""
        return self.latent(self.reparameterise(prompt_ids, eps))

    @torch.no_grad()
    def sample(self, prompt_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw one z ~ pi(.|c) per prompt id (detached, (B, *shape))."""
        shape, device = (len(prompt_ids), *self.shape), self.sigma_range.device
        eps = torch.randn(shape, generator=generator, device=device)
        return self.reparameterise(prompt_ids, eps)

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
        return standard_normal_kl(*self.mean_std(prompt_ids), reduction)

    def regulariser(self, prompt_ids: Tensor) -> Tensor:
        """Scalar mean(mu^2 + (sigma - 1)^2): keeps the policy near pi_0."""
        mu, sigma = self.mean_std(prompt_ids)
        return (mu**2 + (sigma - 1.0) ** 2).mean()

    def metadata(self) -> dict[str, str]:
        """What `load_policy` needs beyond the tensors to rebuild this policy."""
        return {"num_prompts": str(self.num_prompts), "shape": json.dumps(list(self.shape))}

    def save(
        self, path: str | Path, version: int | None = None, prompts: list[str] | None = None
    ) -> None:
        """Write parameters to a safetensors file, with the kind and shape in its metadata and
        the learner version and the prompts (in policy order) when given."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"kind": self.kind, **self.metadata()}
        if version is not None:
            meta["version"] = str(int(version))
        if prompts is not None:
            if len(prompts) != self.num_prompts:
                raise ValueError(f"{len(prompts)} prompts for {self.num_prompts} policies")
            meta["prompts"] = json.dumps(list(prompts))
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> NoisePolicy:
        """Rebuild a policy from its state dict alone."""
        raise NotImplementedError


class PerPromptPolicy(NoisePolicy):
    """Per-prompt diagonal Gaussian N(mu_c, diag(sigma_c^2)) over a latent of shape ``shape``.

    Initialised at pi_0 = N(0, I): mu = 0, log_sigma = 0; sigma = exp(bounded_log_sigma(
    log_sigma)).
    """

    kind = "per_prompt"

    def __init__(
        self,
        num_prompts: int,
        shape: tuple[int, ...] | list[int],
        sigma_range: tuple[float, float] = (SIGMA_MIN, math.inf),
        shell: str = "none",
    ) -> None:
        super().__init__(num_prompts, shape, sigma_range, shell)
        self.mu = nn.Parameter(torch.zeros(self.num_prompts, *self.shape))
        self.log_sigma = nn.Parameter(torch.zeros(self.num_prompts, *self.shape))

    def _mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu[prompt_ids], bounded_log_sigma(
            self.log_sigma[prompt_ids], *self.bounds()
        ).exp()

    def log_sigma_slope(self) -> Tensor:
        """d log sigma / d log_sigma for every parameter (1 where unbounded), detached."""
        with torch.no_grad():
            raw = self.log_sigma.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (slope,) = torch.autograd.grad(bounded_log_sigma(raw, *self.bounds()).sum(), raw)
        return slope

    @classmethod
    @torch.no_grad()
    def copy_of(cls, policy: NoisePolicy) -> PerPromptPolicy:
        """A per-prompt policy equal to `policy` (of any kind) on its training prompts."""
        mu, sigma = policy.mean_std(torch.arange(policy.num_prompts))
        copy = cls(policy.num_prompts, policy.shape, policy.bounds(), policy.shell)
        copy.mu.copy_(mu)
        copy.log_sigma.copy_(unbounded_log_sigma(sigma.log(), *policy.bounds()))
        return copy

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> PerPromptPolicy:
        mu = state["mu"]
        policy = cls(mu.shape[0], tuple(mu.shape[1:]))
        policy.load_state_dict(state)
        return policy


def _defaults_if_missing(module, state_dict, prefix, *args) -> None:
    """Policies saved before sigma_range (or shell_mode) existed load with the unbounded
    parametrisation (and no shell setting)."""
    state_dict.setdefault(prefix + "sigma_range", torch.tensor([SIGMA_MIN, math.inf]))
    state_dict.setdefault(prefix + "shell_mode", torch.tensor(0))
