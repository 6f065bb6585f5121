"""The amortized noise policy: mu_phi(e_c), sigma_phi(e_c) from a prompt's text embedding.

A small network maps the frozen text embedding e_c (the backend's `encode_prompts`) to a
low-resolution map of mu and raw log sigma, which a learned transposed convolution upsamples
to the latent's spatial size (leading latent dims, e.g. channels x frames, are the map's
channels). Its last layer starts at zero, so the policy is N(0, I) exactly at initialisation;
it generates for any prompt through `mean_std_of(embeddings)`. The training prompts'
embeddings are a buffer, so `mean_std(prompt_ids)` works as for the per-prompt policy and the
weights travel (and are saved) with them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from find_ray.algo.gaussian import SIGMA_MIN, bounded_log_sigma
from find_ray.algo.policy import NoisePolicy


def low_resolution(size: int, grid: int) -> int:
    """The map's size along one latent dim: `grid`, or the dim itself when smaller; it must
    divide the dim (the upsampling is a whole factor)."""
    low = min(size, grid)
    if size % low:
        raise ValueError(f"policy.grid {grid} does not divide the latent size {size}")
    return low


class AmortizedNoisePolicy(NoisePolicy):
    """N(mu_phi(e_c), diag(sigma_phi(e_c)^2)) over a latent of shape ``shape`` (>= 2 dims).

    ``learn_sigma=False`` keeps sigma = 1 (mu alone is learned), as the per-prompt policy's.
    """

    kind = "amortized"
    independent_prompts = False  # one network serves every prompt

    def __init__(
        self,
        embeddings: Tensor,
        shape: tuple[int, ...] | list[int],
        sigma_range: tuple[float, float] = (SIGMA_MIN, math.inf),
        hidden: int = 256,
        grid: int = 8,
        learn_sigma: bool = True,
        shell: str = "none",
    ) -> None:
        super().__init__(embeddings.shape[0], shape, sigma_range, shell)
        if len(self.shape) < 2:
            raise ValueError(f"the amortized policy needs a latent with 2 spatial dims: {shape}")
        self.register_buffer("embeddings", embeddings.detach().float().clone())
        self.register_buffer("latent_shape", torch.tensor(self.shape))
        self.register_buffer("learn_sigma", torch.tensor(float(learn_sigma)))  # 0: sigma = 1
        channels, (height, width) = math.prod(self.shape[:-2]), self.shape[-2:]
        self.low = (low_resolution(height, grid), low_resolution(width, grid))
        factor = (height // self.low[0], width // self.low[1])
        embed_dim = embeddings.shape[1]
        self.net = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * channels * self.low[0] * self.low[1]),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.upsample: nn.Module = nn.Identity()
        if factor != (1, 1):
            self.upsample = nn.ConvTranspose2d(
                2 * channels, 2 * channels, kernel_size=factor, stride=factor
            )
            nn.init.zeros_(self.upsample.bias)  # zero in, zero out: N(0, I) stays exact

    def mean_std_of(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma), each (B, *shape), of prompts given by their embeddings (B, E)."""
        return self.tie(*self._network(embeddings))

    def _network(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        b = embeddings.shape[0]
        out = self.net(embeddings.float()).view(b, -1, *self.low)
        mu, raw = self.upsample(out).view(b, 2, *self.shape).unbind(1)
        return mu, bounded_log_sigma(raw * self.learn_sigma, *self.bounds()).exp()

    def _mean_std(self, prompt_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self._network(self.embeddings[prompt_ids])

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "grid": str(max(self.low))}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> AmortizedNoisePolicy:
        """Sizes come from the tensors: embeddings (P, E), latent_shape, the MLP and the
        upsampling weights (hidden width, map size)."""
        shape = tuple(int(s) for s in state["latent_shape"].tolist())
        hidden = state["net.1.weight"].shape[0]
        cells = state["net.5.weight"].shape[0] // (2 * math.prod(shape[:-2]))
        up = state.get("upsample.weight")
        low_h = shape[-2] // up.shape[2] if up is not None else shape[-2]
        grid = max(low_h, cells // low_h)
        policy = cls(state["embeddings"], shape, hidden=hidden, grid=grid)
        policy.load_state_dict(state)
        return policy
