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


class NoisePolicy(nn.Module):
    """A diagonal Gaussian noise policy pi(z_T | c) = N(mu_c, diag(sigma_c^2)), c a training
    prompt index; subclasses define `mean_std`. sigma stays in ``sigma_range`` (a buffer, so it
    travels with the weights); (SIGMA_MIN, inf) is the unbounded exp parametrisation.
    """

    kind = ""  # written into saved files; `load_policy` dispatches on it
    independent_prompts = True  # each prompt has its own parameters (rows of dim 0)

    def __init__(
        self, num_prompts: int, shape: tuple[int, ...] | list[int], sigma_range: tuple[float, float]
    ) -> None:
        super().__init__()
        lo, hi = sigma_range
        if not 0 < lo < 1 < hi:
            raise ValueError(f"sigma_range must hold 0 < min < 1 < max, got {sigma_range}")
        self.num_prompts = int(num_prompts)
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("sigma_range", torch.tensor([float(lo), float(hi)]))
        self.register_load_state_dict_pre_hook(_unbounded_if_missing)

    def bounds(self) -> tuple[float, float]:
        lo, hi = self.sigma_range.tolist()
        return lo, hi

    def mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of the given training prompts, each (B, *shape)."""
        raise NotImplementedError

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
    def load(cls, path: str | Path) -> NoisePolicy:
        """Rebuild a policy written by ``save`` (of this class)."""
        meta = read_policy_metadata(path)
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{path} is not a {cls.__name__} file (metadata {meta})")
        return cls.from_state(load_file(str(path)))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> NoisePolicy:
        """Rebuild a policy from its state dict alone."""
        raise NotImplementedError


class GaussianNoisePolicy(NoisePolicy):
    """Per-prompt diagonal Gaussian N(mu_c, diag(sigma_c^2)) over a latent of shape ``shape``.

    Initialised at pi_0 = N(0, I): mu = 0, log_sigma = 0; sigma = exp(bounded_log_sigma(
    log_sigma)).
    """

    kind = "gaussian"

    def __init__(
        self,
        num_prompts: int,
        shape: tuple[int, ...] | list[int],
        sigma_range: tuple[float, float] = (SIGMA_MIN, math.inf),
    ) -> None:
        super().__init__(num_prompts, shape, sigma_range)
        self.mu = nn.Parameter(torch.zeros(self.num_prompts, *self.shape))
        self.log_sigma = nn.Parameter(torch.zeros(self.num_prompts, *self.shape))

    def mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
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
    def copy_of(cls, policy: NoisePolicy) -> GaussianNoisePolicy:
        """A per-prompt policy equal to `policy` (of any kind) on its training prompts."""
        mu, sigma = policy.mean_std(torch.arange(policy.num_prompts))
        copy = cls(policy.num_prompts, policy.shape, policy.bounds())
        copy.mu.copy_(mu)
        copy.log_sigma.copy_(unbounded_log_sigma(sigma.log(), *policy.bounds()))
        return copy

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> GaussianNoisePolicy:
        mu = state["mu"]
        policy = cls(mu.shape[0], tuple(mu.shape[1:]))
        policy.load_state_dict(state)
        return policy


def policy_from_state(state: dict[str, Tensor]) -> NoisePolicy:
    """A per-prompt or amortized policy rebuilt from its state dict (weights travel this way)."""
    from find_ray.algo.amortized import AmortizedNoisePolicy

    return (AmortizedNoisePolicy if "embeddings" in state else GaussianNoisePolicy).from_state(
        state
    )


def load_policy(path: str | Path) -> NoisePolicy:
    """The policy in a file written by ``NoisePolicy.save``, whichever its kind."""
    from find_ray.algo.amortized import AmortizedNoisePolicy

    kinds = {cls.kind: cls for cls in (GaussianNoisePolicy, AmortizedNoisePolicy)}
    kind = read_policy_metadata(path).get("kind")
    if kind not in kinds:
        raise ValueError(f"{path}: unknown policy kind {kind!r} (known: {', '.join(kinds)})")
    return kinds[kind].load(path)


def _unbounded_if_missing(module, state_dict, prefix, *args) -> None:
    """Policies saved before sigma_range existed load with the unbounded parametrisation."""
    state_dict.setdefault(prefix + "sigma_range", torch.tensor([SIGMA_MIN, math.inf]))


def read_policy_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a policy file (kind, shape, num_prompts; version, prompts if saved)."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
