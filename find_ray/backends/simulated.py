"""A simulated backend: a fixed per-batch latency instead of a diffusion model.

It stands in for a GPU pipeline where only the system is under test (the scale benchmark, the
Ray fault tests): `generate` sleeps `latency_s`, so 2 cores can host many actors, and returns
sigmoid(z) as the "image", so the `brightness` reward still gives FIND something to learn.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import torch

from find_ray.config import ModelConfig

SIMULATED_SHAPE = (3, 8, 8)
EMBEDDING_DIM = 16


class SimulatedBackend:
    """Same interface as PipelineBackend: latent_shape, encode_prompts, generate."""

    def __init__(self, latency_s: float = 0.0, latent_shape: tuple[int, ...] = SIMULATED_SHAPE):
        self.latency_s = latency_s
        self.latent_shape = tuple(latent_shape)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SimulatedBackend:
        return cls(cfg.latency_s)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """A fixed random embedding per prompt text (seeded by its CRC32)."""
        return torch.stack(
            [
                torch.randn(
                    EMBEDDING_DIM, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))
                )
                for p in prompts
            ]
        )

    def generate(
        self, z_T: torch.Tensor, prompts: list[str], seed: int | Sequence[int] = 0, **_
    ) -> torch.Tensor:
        """Sleeps for the batch latency; the image is sigmoid(z_T) (B, 3, H, W) in [0, 1]."""
        if z_T.shape[0] != len(prompts) or tuple(z_T.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"z_T {tuple(z_T.shape)} does not fit {len(prompts)} prompts x {self.latent_shape}"
            )
        time.sleep(self.latency_s)
        return torch.sigmoid(z_T.float())
