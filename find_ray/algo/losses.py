"""FIND losses: importance ratio, clipped surrogate, DRCM reward calibration, policy loss."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from find_ray.algo.gaussian import initial_log_prob
from find_ray.algo.policy import NoisePolicy
from find_ray.config import FindLossConfig, SurrogateForm

MAX_LOG_RATIO = 20.0


def ratio(logp_new: Tensor, logp_ref: Tensor) -> Tensor:
    """Importance ratio rho = pi_new(z) / pi_ref(z) from log-probs, with log rho clamped to
    +-MAX_LOG_RATIO: with summed log-densities it can overflow float32, and inf * 0 in the
    clipped branch's backward pass would turn the whole gradient into NaN. Clipped samples
    (|rho - 1| > eps) are unaffected; an unclipped one beyond e^20 gets no gradient."""
    return torch.exp((logp_new - logp_ref).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


class Surrogate(NamedTuple):
    loss: Tensor  # scalar, to minimise
    clip_fraction: Tensor  # scalar, fraction of samples with |rho - 1| > eps


def clipped_surrogate(
    rho: Tensor, advantage: Tensor, eps: float = 0.2, form: SurrogateForm = "ppo"
) -> Surrogate:
    """Ratio-clipped policy-gradient loss.

    "ppo":   -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A))  (pessimistic bound)
    "clamp": -mean(clip(rho, 1 - eps, 1 + eps) * A)  (FIND reference code)
    """
    clipped = rho.clamp(1.0 - eps, 1.0 + eps)
    if form == "ppo":
        loss = -torch.min(rho * advantage, clipped * advantage).mean()
    elif form == "clamp":
        loss = -(clipped * advantage).mean()
    else:
        raise ValueError(f"form must be 'ppo' or 'clamp', got {form!r}")
    clip_fraction = ((rho - 1.0).abs() > eps).float().mean()
    return Surrogate(loss, clip_fraction)


class DRCM(nn.Module):
    """Dynamic Reward Calibration Module g(mu, sigma, e_c) -> predicted reward (a baseline).

    An MLP on concat(flatten(mu), flatten(sigma), e_c). With ``pool`` set, mu and sigma are
    average-pooled over their last two (spatial) dims to a pool x pool grid first, so a
    4x64x64 latent gives 2 * 4 * pool^2 inputs instead of 32k. ``embed_dim`` 0 = no text.
    """

    def __init__(
        self,
        latent_shape: tuple[int, ...] | list[int],
        embed_dim: int = 0,
        hidden: int = 256,
        pool: int | None = None,
    ) -> None:
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        self.embed_dim = int(embed_dim)
        self.pool = pool
        if pool is None:
            latent_dim = math.prod(self.latent_shape)
        elif len(self.latent_shape) >= 2:
            latent_dim = math.prod(self.latent_shape[:-2]) * pool * pool
        else:
            raise ValueError(f"pool needs a latent with 2 spatial dims, got {self.latent_shape}")
        self.net = nn.Sequential(
            nn.Linear(2 * latent_dim + self.embed_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def _features(self, x: Tensor) -> Tensor:
        """(B, *latent_shape) -> (B, latent_dim), pooled if configured."""
        if self.pool is not None:
            b, (h, w) = x.shape[0], x.shape[-2:]
            x = F.adaptive_avg_pool2d(x.reshape(b, -1, h, w), self.pool)
        return x.flatten(1)

    def forward(self, mu: Tensor, sigma: Tensor, emb: Tensor | None = None) -> Tensor:
        """Predicted reward, (B,)."""
        parts = [self._features(mu), self._features(sigma)]
        if self.embed_dim:
            if emb is None:
                raise ValueError(f"DRCM was built with embed_dim={self.embed_dim}; pass emb")
            parts.append(emb.flatten(1))
        return self.net(torch.cat(parts, dim=1)).squeeze(1)


def calibration_step(
    drcm: DRCM,
    optimizer: torch.optim.Optimizer,
    mu: Tensor,
    sigma: Tensor,
    emb: Tensor | None,
    rewards: Tensor,
) -> float:
    """One MSE step of the DRCM on observed rewards; returns the loss before the step."""
    pred = drcm(mu.detach(), sigma.detach(), None if emb is None else emb.detach())
    loss = F.mse_loss(pred, rewards.to(pred.dtype))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def advantages(
    drcm: DRCM, mu: Tensor, sigma: Tensor, emb: Tensor | None, rewards: Tensor
) -> Tensor:
    """Calibrated advantage A = r - g(mu, sigma, e_c), detached, (B,)."""
    return rewards - drcm(mu, sigma, emb).to(rewards.dtype)


def advantage_variance_report(rewards: Tensor, advantages: Tensor) -> dict[str, float]:
    """Variance of the mean-baseline advantage vs the DRCM-calibrated one."""
    return {
        "adv_var_raw": (rewards - rewards.mean()).var(unbiased=False).item(),
        "adv_var_calibrated": advantages.var(unbiased=False).item(),
    }


def policy_loss(
    policy: NoisePolicy,
    z: Tensor,
    prompt_ids: Tensor,
    behaviour_logp: Tensor,
    advantage: Tensor,
    cfg: FindLossConfig,
) -> tuple[Tensor, dict[str, float]]:
    """FIND policy loss: clipped surrogate + reg_weight * regulariser, and its metrics.

    ``behaviour_logp`` is log pi_behaviour(z) as stored with the rollout (same reduction as
    ``cfg.logp_reduction``); with ``ratio_reference="initial"`` pi_0 = N(0, I) is used instead.
    """
    logp_new = policy.log_prob(z, prompt_ids, cfg.logp_reduction)
    if cfg.ratio_reference == "behaviour":
        logp_ref = behaviour_logp.to(logp_new.dtype)
    elif cfg.ratio_reference == "initial":
        logp_ref = initial_log_prob(z, cfg.logp_reduction)
    else:
        raise ValueError(f"ratio_reference must be 'behaviour' or 'initial': {cfg.ratio_reference}")
    if cfg.normalise_advantages and advantage.numel() > 1:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    rho = ratio(logp_new, logp_ref)
    pg_loss, clip_fraction = clipped_surrogate(rho, advantage, cfg.eps, cfg.surrogate)
    reg_loss = policy.regulariser(prompt_ids)
    kl_loss = policy.kl_to_standard_normal(prompt_ids).mean()  # per latent element
    loss = pg_loss + cfg.reg_weight * reg_loss + cfg.kl_weight * kl_loss
    with torch.no_grad():
        log_rho = logp_new - logp_ref
        approx_kl = ((rho - 1.0) - log_rho).mean()
    metrics = {
        "loss": loss.item(),
        "pg_loss": pg_loss.item(),
        "reg_loss": reg_loss.item(),
        "kl_loss": kl_loss.item(),
        "clip_fraction": clip_fraction.item(),
        "ratio_mean": rho.mean().item(),
        "approx_kl": approx_kl.item(),
    }
    return loss, metrics
