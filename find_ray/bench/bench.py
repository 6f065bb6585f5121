"""What every method of the bench shares: config, prompts, the exact reward, the base's eval,
the surrogate reward, and the table's row (`Point`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from find_ray.algo.noise import seeded_normal
from find_ray.backends import make_backend, model_denoiser_calls
from find_ray.bench.config import BenchConfig, BenchSettings
from find_ray.eval.evaluate import PromptResult, evaluate, score_plan
from find_ray.prompts import load_suite
from find_ray.rewards import (
    make_differentiable_reward,
    make_reward,
    make_scorer,
    quality_config,
    with_quality,
)


@dataclass
class Point:
    """One evaluated result of a method: a row of the table, a point of the plot."""

    method: str
    label: str  # e.g. "N=4", "16000 NFE", "10 it"
    train_nfe: int
    inference_nfe: float  # per eval image
    wall_s: float  # training (or optimisation) time up to this point
    exact: float
    exact_gain: tuple[float, float, float]  # vs base: (gain, low, high), paired 95 % CI
    score: float
    score_gain: tuple[float, float, float]
    diversity_ratio: float  # mean over prompts of this point's diversity / the base's
    kl: float = math.nan  # KL of the result's noise distribution from N(0, I), where defined
    quality: float = math.nan  # the quality scorer's mean score (eval.quality)
    quality_gain: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    shell: float = math.nan  # ||z_T||^2 / d of the eval noise, where the method draws it
    train_reward: float = math.nan  # the training samples' mean reward (Evaluation.train_reward)
    seeds: int = 1  # training seeds behind the row (its figures are their mean)
    exact_gain_sd: float = math.nan  # spread (sd) of the exact gain across those seeds


def eval_prompts(settings: BenchSettings) -> list[str]:
    """The prompts a bench evaluates: its explicit ones, else its suite's; the first
    `max_prompts` of them (0: all)."""
    prompts = list(settings.prompts) or load_suite(settings.suite)
    return prompts[: settings.max_prompts or None]


class Bench:
    """What every method shares: config, prompts, the exact reward, the base's eval."""

    def __init__(self, cfg: BenchConfig, progress: bool = True):
        self.cfg, self.settings, self.progress = cfg, cfg.bench, progress
        self.prompts = eval_prompts(self.settings)
        self.reward = make_reward(cfg.reward)  # what the training methods follow
        self.eval_reward = self.reward  # what evaluates: with the quality figures beside it
        quality = quality_config(cfg.quality, cfg.reward)
        if quality is not None:
            self.eval_reward = with_quality(self.reward, make_scorer(quality))
        self.out = Path(self.settings.out_dir)
        self.calls = model_denoiser_calls(cfg.model)
        self._base: list[PromptResult] | None = None
        self._surrogate: Callable | None = None

    def backend(self):
        """A freshly loaded pipeline backend (methods that tune the UNet get their own)."""
        return make_backend(self.cfg.model)

    def chain(self, pipe: Any, eta: float) -> Any:
        """`pipe`'s sampler one step at a time (its steps and guidance): the flow SDE with noise
        level `eta` for a flow-matching model, else DDIM with `eta`."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from find_ray.baselines.chain import DenoisingChain
        from find_ray.baselines.flow_chain import FlowChain

        m = self.cfg.model
        flow = isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
        return (FlowChain if flow else DenoisingChain)(pipe, m.steps, m.guidance, eta)

    def scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The exact reward's scores (B,), for methods that train on it."""
        return self.reward(images, prompts)[0]

    def evaluate(self, backend, transform=None) -> list[PromptResult]:
        """The eval suite through `backend` (its pipeline as trained), paired eval noise."""
        s = self.settings
        return evaluate(
            backend,
            self.eval_reward,
            self.prompts,
            s.eval_samples,
            s.eval_seed,
            transform=transform,
        )

    def eval_z(self, shape: tuple[int, ...]) -> torch.Tensor:
        """All eval noise, prompt-major (P * k, *shape): what `evaluate` draws."""
        k = self.settings.eval_samples
        return torch.cat(
            [
                seeded_normal((k, *shape), self.settings.eval_seed, i)
                for i in range(len(self.prompts))
            ]
        )

    def results_of(self, images: torch.Tensor) -> list[PromptResult]:
        """Scores prompt-major images (P * k, ...) like `evaluate` does."""

        def images_of(n: int, batch: list) -> torch.Tensor:
            return images[n * 64 : n * 64 + len(batch)]

        return score_plan(self.eval_reward, self.prompts, self.settings.eval_samples, images_of, 64)

    @property
    def base(self) -> list[PromptResult]:
        if self._base is None:
            self._base = self.evaluate(self.backend())
        return self._base

    def differentiable_reward(self) -> Callable:
        """The reward DNO and DRTune follow: the reward's own differentiable form, or on the
        shapes world (whose detector has none) the surrogate, trained once and cached in
        out/surrogate."""
        if self.cfg.reward.name != "shapes":
            return make_differentiable_reward(self.cfg.reward)
        if self._surrogate is None:
            from find_ray.baselines.surrogate import (
                SurrogateReward,
                load_surrogate,
                save_surrogate,
                train_surrogate,
            )

            folder = self.out / "surrogate"
            if not (folder / "surrogate.json").is_file():
                images = self._surrogate_images()
                net, report = train_surrogate(
                    images,
                    self.prompts,
                    epochs=self.settings.surrogate.epochs,
                    lr=self.settings.surrogate.lr,
                    seed=self.settings.surrogate.seed,
                    progress=self.progress,
                )
                save_surrogate(net, folder, report)
            self._surrogate = SurrogateReward(load_surrogate(folder))
        return self._surrogate

    def surrogate_report(self) -> dict:
        """The surrogate's held-out accuracy as saved beside it ({} when it was not trained)."""
        saved = self.out / "surrogate" / "surrogate.json"
        return json.loads(saved.read_text()).get("report") or {} if saved.is_file() else {}

    def _surrogate_images(self) -> torch.Tensor:
        """Base images of the bench prompts from noise seeds apart from the eval's."""
        backend, n = self.backend(), self.settings.surrogate.images_per_prompt
        generator = torch.Generator().manual_seed(self.settings.surrogate.seed + 7_777)
        images = []
        for prompt in self.prompts:
            for start in range(0, n, 32):
                m = min(32, n - start)
                z = torch.randn((m, *backend.latent_shape), generator=generator)
                images.append(backend.generate(z, [prompt] * m, seed=start))
        return torch.cat(images)
