"""`find-ray sample`: n images of one prompt from the base or a run's policy, each the reward's
pick of `best_of` candidates (the noise of a seed is the same as Serve's for that seed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from find_ray.algo.noise import candidate_seeds, normals_by_index
from find_ray.backends import make_backend, model_denoiser_calls
from find_ray.config import FindRayConfig
from find_ray.eval.evaluate import best_of_picks
from find_ray.eval.shell import shell_radius
from find_ray.rewards import check_prompts, evaluation_reward
from find_ray.runs.folder import RunPolicy


@dataclass
class Sample:
    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    scores: torch.Tensor  # (n,) the reward of each kept image
    info: dict[str, torch.Tensor]  # the reward's and quality scorer's figures, and "shell"
    seeds: list[int]  # each kept image's noise seed
    calls_per_image: int  # denoiser passes spent per kept image (best_of x the sampler's)
    policy: str  # trained | base


def sample(
    cfg: FindRayConfig,
    prompt: str,
    n: int,
    seed: int,
    best_of: int = 1,
    run: RunPolicy | None = None,
) -> Sample:
    """The images of `prompt` under the run's policy (the base without a run, or for a prompt
    its policy does not cover), each the best-rewarded of `best_of` candidates."""
    check_prompts(cfg.reward, [prompt])
    backend, reward = make_backend(cfg.model), evaluation_reward(cfg)
    seeds = candidate_seeds(seed, n, best_of)
    z = normals_by_index(backend.latent_shape, seeds)
    trained = run is not None and run.covers(prompt)
    if trained:
        z = run.noise(prompt, z, backend.encode_prompts)
    images = backend.generate(z, [prompt] * len(seeds), seed=seeds)
    scores, info = reward(images, [prompt] * len(seeds))
    info = {**info, "shell": torch.from_numpy(shell_radius(z))}
    picks = torch.from_numpy(best_of_picks(scores.numpy(), best_of))
    calls = best_of * model_denoiser_calls(cfg.model)
    return Sample(
        images[picks],
        scores[picks],
        {k: v[picks] for k, v in info.items()},
        [seeds[i] for i in picks.tolist()],
        calls,
        "trained" if trained else "base",
    )


def describe(result: Sample, best_of: int) -> str:
    """One line: how the images were made and what they score."""
    exact = result.info.get("exact")
    parts = [f"{result.policy} policy", f"mean score {result.scores.mean():.3f}"]
    if exact is not None:
        parts.append(f"exact {exact.mean():.3f}")
    if "quality" in result.info:
        parts.append(f"quality {result.info['quality'].mean():.4f}")
    parts.append(f"‖z‖²/d {np.mean(result.info['shell'].numpy()):.3f}")
    if best_of > 1:
        parts.append(f"each the reward's pick of {best_of}")
    parts.append(f"{result.calls_per_image} denoiser calls per image")
    return ", ".join(parts)
