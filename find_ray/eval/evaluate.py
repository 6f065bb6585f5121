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
from find_ray.eval.shell import shell_radius
from find_ray.images import to_uint8
from find_ray.rewards import RewardFn

# Maps (prompt index, standard-normal eps (k, *shape)) to z_T; the identity is the base policy.
NoiseTransform = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class PromptResult:
    """One policy's k eval samples of one prompt: per-sample figures, grid images, diversity."""

    prompt: str
    scores: np.ndarray
    exact: np.ndarray
    colours_present: np.ndarray
    images: list[np.ndarray] = field(repr=False)  # the first grid_samples images
    diversity: float = math.nan  # mean pairwise distance of the k images (see `diversity`)
    quality: np.ndarray | None = None  # the quality scorer's score per sample (None: no scorer)
    figures: dict[str, np.ndarray] = field(default_factory=dict)  # the quality scorer's info
    shell: np.ndarray | None = None  # ||z_T||^2 / d of each sample's initial noise
    latent_dim: int = 0  # d

    def metrics(self) -> dict[str, float]:
        metrics = {
            "mean_score": float(self.scores.mean()),
            "exact": float(self.exact.mean()),
            "colours_present": float(self.colours_present.mean()),
            "best_of_k_exact": float(self.exact.max()),
            "diversity": self.diversity,
        }
        if self.quality is not None:
            metrics["quality"] = float(self.quality.mean())
            metrics.update({k: float(v.mean()) for k, v in self.figures.items()})
        if self.shell is not None:
            metrics["shell_mean"] = float(self.shell.mean())
        return metrics


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


def best_of_picks(scores: np.ndarray, best_of: int) -> np.ndarray:
    """The index of the best-scored sample of each consecutive group of `best_of`: which
    candidate a reward-picked best-of-N keeps (a NaN score, a failed scorer's, never wins)."""
    groups = np.asarray(scores, dtype=float).reshape(-1, best_of)
    groups = np.where(np.isnan(groups), -np.inf, groups)
    return np.arange(len(groups)) * best_of + groups.argmax(1)


class EvalCollector:
    """Gathers scored eval batches (in any order) into one PromptResult per prompt. With
    `best_of` N, each group of N consecutive samples of a prompt yields the one the reward
    scores highest (its figures, image and diversity features)."""

    def __init__(self, prompts: list[str], k: int, grid_samples: int, best_of: int = 1) -> None:
        self.prompts, self.grid_samples, self.best_of = prompts, grid_samples, best_of
        self.values: dict[str, np.ndarray] = {}  # per-sample figures, (prompts, k * best_of)
        self.shape = (len(prompts), k * best_of)
        self.images: dict[EvalJob, np.ndarray] = {}
        self.features: dict[EvalJob, np.ndarray] = {}
        self.shell: np.ndarray | None = None  # (prompts, k * best_of), set by the caller
        self.latent_dim = 0

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
        figures = {"scores": scores, **info}
        for key in ("exact", "colours_present"):
            figures.setdefault(key, torch.full_like(scores, math.nan))
        for key, value in figures.items():
            column = self.values.setdefault(key, np.full(self.shape, math.nan))
            for n, (i, j) in enumerate(batch):
                column[i, j] = float(value[n])
        for n, job in enumerate(batch):
            self.features[job] = features[n]
        rows = grid_rows(batch, self.grid_samples * self.best_of)
        for row, image in zip(rows, thumbnails, strict=True):
            self.images[batch[row]] = image

    def chosen(self, i: int) -> list[int]:
        """Prompt i's samples that stand for it: the best-scored of each group of best_of."""
        return best_of_picks(self.values["scores"][i], self.best_of).tolist()

    def results(self) -> list[PromptResult]:
        results = []
        for i, prompt in enumerate(self.prompts):
            pick = self.chosen(i)
            v = {key: column[i, pick] for key, column in self.values.items()}
            quality = v.get("quality")
            results.append(
                PromptResult(
                    prompt,
                    v["scores"],
                    v["exact"],
                    v["colours_present"],
                    [self.images[i, j] for j in pick[: self.grid_samples] if (i, j) in self.images],
                    diversity(np.stack([self.features[i, j] for j in pick])),
                    quality,
                    {k[8:]: x for k, x in v.items() if k.startswith("quality/")},
                    None if self.shell is None else self.shell[i, pick],
                    self.latent_dim,
                )
            )
        return results


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
    best_of: int = 1,
    shell: tuple[np.ndarray, int] | None = None,
) -> list[PromptResult]:
    """Scores the eval plan (k * best_of samples per prompt, batched across prompts) batch by
    batch; `images_of(n, batch)` gives batch n's images; `shell` the samples' ||z||^2 / d
    (prompts, k * best_of) and d (`eval_shell`)."""
    collector = EvalCollector(prompts, k, grid_samples, best_of)
    if shell is not None:
        collector.shell, collector.latent_dim = shell
    batches = eval_batches(len(prompts), k * best_of, batch_size)
    for n, batch in enumerate(tqdm(batches, desc="eval", unit="batch")):
        batch_prompts = [prompts[i] for i, _ in batch]
        rows = grid_rows(batch, grid_samples * best_of)
        collector.add(batch, *score_eval_batch(reward, images_of(n, batch), batch_prompts, rows))
    return collector.results()


def eval_shell(
    shape: tuple[int, ...], prompts: int, k: int, seed: int, transform: NoiseTransform | None
) -> tuple[np.ndarray, int]:
    """||z||^2 / d of every eval noise, (prompts, k), and d: the base's eps, or the latents a
    policy makes of them."""
    rows = []
    for i in range(prompts):
        eps = seeded_normal((k, *shape), seed, i)
        rows.append(shell_radius(transform(i, eps) if transform is not None else eps))
    return np.stack(rows), math.prod(shape)


def evaluate(
    backend: Backend,
    reward: RewardFn,
    prompts: list[str],
    k: int,
    seed: int,
    batch_size: int = 64,
    grid_samples: int = 8,
    transform: NoiseTransform | None = None,
    best_of: int = 1,
) -> list[PromptResult]:
    """Samples k images per prompt (batched across prompts) and scores them; with `best_of` N,
    each of the k is the reward's pick of N samples (N times the denoiser calls)."""
    n = k * best_of

    def images_of(b: int, batch: list[EvalJob]) -> torch.Tensor:
        return sample_eval_batch(backend, prompts, batch, b, n, seed, batch_size, transform)

    shell = eval_shell(backend.latent_shape, len(prompts), n, seed, transform)
    return score_plan(reward, prompts, k, images_of, batch_size, grid_samples, best_of, shell)


def policy_transform(policy: NoisePolicy) -> NoiseTransform:
    """Maps eval noise eps to the policy's latent for it (`NoisePolicy.noise`): paired with the
    base, which gets eps itself."""

    @torch.no_grad()
    def transform(prompt_index: int, eps: torch.Tensor) -> torch.Tensor:
        return policy.noise(torch.tensor([prompt_index]), eps)

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
    return evaluate(backend, reward, prompts, *run, transform=transform, best_of=cfg.best_of)
