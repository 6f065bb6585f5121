"""Evaluation of a prompt suite: k samples per prompt from fixed seeds, scored and reported.

Eval noise is a pure function of (seed, prompt index, sample index), so two policies compared
on the same seeds see the same base noise (paired comparison).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from find_ray.algo.policy import NoisePolicy
from find_ray.backends import Backend
from find_ray.config import EvalConfig
from find_ray.images import image_grid, stack, to_uint8
from find_ray.rewards import RewardFn

# Maps (prompt index, standard-normal eps (k, *shape)) to z_T; the identity is the base policy.
NoiseTransform = Callable[[int, torch.Tensor], torch.Tensor]


def eval_noise(shape: tuple[int, ...], prompt_index: int, k: int, seed: int) -> torch.Tensor:
    """k standard-normal draws for one prompt; the first j draws do not depend on k."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + prompt_index)
    return torch.randn((k, *shape), generator=generator)


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
        eps = eval_noise(backend.latent_shape, i, k, seed)
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


def fmt(value: float, spec: str = ".3f") -> str:
    """A table cell: the number, or "n/a" for a metric the reward does not give."""
    return "n/a" if math.isnan(value) else format(value, spec)


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

    def transform(prompt_index: int, eps: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mu, sigma = policy.mean_std(torch.tensor([prompt_index]))
        return mu + sigma * eps

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


def summarise(results: list[PromptResult]) -> dict[str, float]:
    """Suite means of the per-prompt metrics."""
    rows = [r.metrics() for r in results]
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def markdown_table(results: list[PromptResult]) -> str:
    k = len(results[0].scores)
    lines = [
        f"| prompt | mean score | exact | colours present | best-of-{k} exact |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r.metrics()
        lines.append(
            f"| {r.prompt} | {fmt(m['mean_score'])} | {fmt(m['exact'])} | "
            f"{fmt(m['colours_present'])} | {fmt(m['best_of_k_exact'], '.0f')} |"
        )
    s = summarise(results)
    lines.append(
        f"| **mean** | **{fmt(s['mean_score'])}** | **{fmt(s['exact'])}** | "
        f"**{fmt(s['colours_present'])}** | **{fmt(s['best_of_k_exact'])}** |"
    )
    return "\n".join(lines)


def score_labels(scores: list[float], exact: list[float]) -> list[str]:
    """Image captions for grids: the score, and "ok" on exact matches."""
    return [f"{s:.2f}" + (" ok" if e > 0.5 else "") for s, e in zip(scores, exact, strict=True)]


def suite_grid(results: list[PromptResult]):
    """One labelled row of samples per prompt, each image captioned with its score."""
    return stack(
        [
            image_grid(r.images, score_labels(r.scores.tolist(), r.exact.tolist()), title=r.prompt)
            for r in results
        ]
    )


def write_report(
    results: list[PromptResult], out_dir: str | Path, title: str, settings: dict
) -> Path:
    """Writes report.md, metrics.json and grid.png to out_dir; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite_grid(results).save(out / "grid.png")
    summary = summarise(results)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "summary": summary,
                "prompts": {r.prompt: r.metrics() for r in results},
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"# {title}",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        markdown_table(results),
        "",
        "![samples](grid.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
