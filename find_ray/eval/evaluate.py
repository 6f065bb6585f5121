"""Evaluation of a prompt suite: k samples per prompt from fixed seeds, scored and reported.

Eval noise is a pure function of (seed, prompt index, sample index), so two policies compared
on the same seeds see the same base noise (paired comparison).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from find_ray.algo.noise import seeded_normal
from find_ray.algo.policy import NoisePolicy
from find_ray.backends import Backend
from find_ray.config import EvalConfig
from find_ray.images import to_uint8
from find_ray.rewards import RewardFn

# Maps (prompt index, standard-normal eps (k, *shape)) to z_T; the identity is the base policy.
NoiseTransform = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class PromptResult:
    prompt: str
    scores: np.ndarray
    exact: np.ndarray
    colours_present: np.ndarray
    images: list[np.ndarray] = field(repr=False)  # the first grid_samples images
    diversity: float = math.nan  # mean pairwise distance of the k images (see `diversity`)

    def metrics(self) -> dict[str, float]:
        return {
            "mean_score": float(self.scores.mean()),
            "exact": float(self.exact.mean()),
            "colours_present": float(self.colours_present.mean()),
            "best_of_k_exact": float(self.exact.max()),
            "diversity": self.diversity,
        }


EvalJob = tuple[int, int]  # (prompt index, sample index)


def eval_batches(num_prompts: int, k: int, batch_size: int) -> list[list[EvalJob]]:
    """The eval plan: k samples per prompt, batched across prompts in a fixed order."""
    jobs = [(i, j) for i in range(num_prompts) for j in range(k)]
    return [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]


def sample_eval_batch(
    backend: Backend,
    prompts: list[str],
    batch: list[EvalJob],
    n: int,
    k: int,
    seed: int,
    batch_size: int,
    transform: NoiseTransform | None = None,
) -> torch.Tensor:
    """Images of batch `n` of the plan, from its fixed eval noise (optionally transformed)."""
    noise = {}
    for i in sorted({i for i, _ in batch}):
        eps = seeded_normal((k, *backend.latent_shape), seed, i)
        noise[i] = transform(i, eps) if transform is not None else eps
    z = torch.stack([noise[i][j] for i, j in batch])
    return backend.generate(z, [prompts[i] for i, _ in batch], seed=seed + n * batch_size)


DIVERSITY_SIZE = 32  # images are compared at (at most) this many pixels a side


def diversity_features(images: torch.Tensor) -> np.ndarray:
    """Small float16 copies of images (B, 3, H, W) (or video frames (B, F, 3, H, W)), area-
    downsampled to at most DIVERSITY_SIZE pixels a side: what `diversity` compares."""
    flat = images.detach().float().flatten(0, -4) if images.dim() == 5 else images.float()
    h, w = flat.shape[-2:]
    if max(h, w) > DIVERSITY_SIZE:
        scale = DIVERSITY_SIZE / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        flat = torch.nn.functional.interpolate(flat, size=size, mode="area")
    return flat.reshape(images.shape[0], -1).cpu().numpy().astype(np.float16)


def diversity(features: np.ndarray) -> float:
    """Mean pairwise RMS pixel distance between the k images of one prompt (k, D): 0 when
    every image is the same; a policy that collapses to one image shows as a drop."""
    x = torch.from_numpy(features.astype(np.float32))
    if len(x) < 2:
        return math.nan
    d = torch.cdist(x, x) / math.sqrt(x.shape[1])
    return float(d.sum() / (len(x) * (len(x) - 1)))


def grid_rows(batch: list[EvalJob], grid_samples: int) -> list[int]:
    """Rows of a batch whose images go into the grids: each prompt's first samples."""
    return [row for row, (_, j) in enumerate(batch) if j < grid_samples]


def info_value(info: dict, key: str, n: int) -> float:
    """Row n of a reward's extra metric, NaN when the reward has none (e.g. no "exact")."""
    return float(info[key][n]) if key in info else math.nan


class EvalCollector:
    """Gathers scored eval batches (in any order) into one PromptResult per prompt."""

    def __init__(self, prompts: list[str], k: int, grid_samples: int) -> None:
        self.prompts, self.grid_samples = prompts, grid_samples
        self.scores = np.zeros((len(prompts), k))
        self.exact = np.zeros((len(prompts), k))
        self.colours = np.zeros((len(prompts), k))
        self.images: dict[EvalJob, np.ndarray] = {}
        self.features: dict[EvalJob, np.ndarray] = {}

    def add(
        self,
        batch: list[EvalJob],
        scores: torch.Tensor,
        info: dict,
        thumbnails: np.ndarray,
        features: np.ndarray,
    ) -> None:
        """`thumbnails`: uint8 images of the batch's `grid_rows`, in that order; `features`:
        `diversity_features` of every image of the batch."""
        for n, (i, j) in enumerate(batch):
            self.features[i, j] = features[n]
            self.scores[i, j] = float(scores[n])
            self.exact[i, j] = info_value(info, "exact", n)
            self.colours[i, j] = info_value(info, "colours_present", n)
        for row, image in zip(grid_rows(batch, self.grid_samples), thumbnails, strict=True):
            self.images[batch[row]] = image

    def results(self) -> list[PromptResult]:
        return [
            PromptResult(
                prompt,
                self.scores[i],
                self.exact[i],
                self.colours[i],
                [self.images[i, j] for j in range(self.grid_samples) if (i, j) in self.images],
                diversity(np.stack([self.features[i, j] for j in range(self.scores.shape[1])])),
            )
            for i, prompt in enumerate(self.prompts)
        ]


def score_eval_batch(
    reward: RewardFn, images: torch.Tensor, prompts: list[str], rows: list[int]
) -> tuple[torch.Tensor, dict, np.ndarray, np.ndarray]:
    """The reward of an eval batch, the uint8 thumbnails of `rows` (see grid_rows) and the
    diversity features of every image."""
    scores, info = reward(images, prompts)
    return scores, info, to_uint8(images[rows]), diversity_features(images)


def score_plan(
    reward: RewardFn,
    prompts: list[str],
    k: int,
    images_of: Callable[[int, list[EvalJob]], torch.Tensor],
    batch_size: int = 64,
    grid_samples: int = 8,
) -> list[PromptResult]:
    """Scores the eval plan (k samples per prompt, batched across prompts) batch by batch;
    `images_of(n, batch)` gives batch n's images."""
    collector = EvalCollector(prompts, k, grid_samples)
    batches = eval_batches(len(prompts), k, batch_size)
    for n, batch in enumerate(tqdm(batches, desc="eval", unit="batch")):
        batch_prompts = [prompts[i] for i, _ in batch]
        scored = score_eval_batch(
            reward, images_of(n, batch), batch_prompts, grid_rows(batch, grid_samples)
        )
        collector.add(batch, *scored)
    return collector.results()


def evaluate(
    backend: Backend,
    reward: RewardFn,
    prompts: list[str],
    k: int,
    seed: int,
    batch_size: int = 64,
    grid_samples: int = 8,
    transform: NoiseTransform | None = None,
) -> list[PromptResult]:
    """Samples k images per prompt (batched across prompts) and scores them."""

    def images_of(n: int, batch: list[EvalJob]) -> torch.Tensor:
        return sample_eval_batch(backend, prompts, batch, n, k, seed, batch_size, transform)

    return score_plan(reward, prompts, k, images_of, batch_size, grid_samples)


def policy_transform(policy: NoisePolicy) -> NoiseTransform:
    """Maps eval noise eps to z = mu_c + sigma_c * eps (reparameterised: paired with the base)."""

    @torch.no_grad()
    def transform(prompt_index: int, eps: torch.Tensor) -> torch.Tensor:
        return policy.reparameterise(torch.tensor([prompt_index]), eps)

    return transform


def evaluate_policy(
    backend: Backend,
    reward: RewardFn,
    prompts: list[str],
    cfg: EvalConfig,
    policy: NoisePolicy | None = None,
) -> list[PromptResult]:
    """The eval suite under a trained policy (None: the base N(0, I)), on the eval seeds."""
    transform = policy_transform(policy) if policy is not None else None
    run = (cfg.samples_per_prompt, cfg.seed, cfg.batch_size, cfg.grid_samples)
    return evaluate(backend, reward, prompts, *run, transform=transform)
