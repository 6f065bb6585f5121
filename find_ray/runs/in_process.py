"""FIND training in one process (`find-ray train --no-ray`): worker -> reward -> learner.

The same plain classes are what the Ray actors wrap; this loop is the synchronous reference.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from find_ray.backends import Backend, make_backend
from find_ray.config import FindRayConfig
from find_ray.errors import ConfigError
from find_ray.eval.evaluate import PromptResult, evaluate_policy, fmt, suite_grid
from find_ray.images import stack
from find_ray.algo.learner import Learner
from find_ray.rewards import RewardFn, check_prompts, make_reward
from find_ray.algo.rollout import RolloutWorker, iteration_prompt_ids, score_rollouts
from find_ray.prompts import load_suite
from find_ray.eval.stats import paired_bootstrap_ci
from find_ray.algo.store import prompt_table


def train_prompts(cfg: FindRayConfig) -> list[str]:
    """The prompts to learn, checked against the reward before anything is loaded."""
    prompts = list(cfg.train.prompts) or load_suite(cfg.train.suite)
    prompts = prompts[: cfg.train.max_prompts] if cfg.train.max_prompts else prompts
    check_prompts(cfg.reward, prompts)
    try:
        prompt_table(prompts)
    except ValueError as e:
        raise ConfigError(f"train.prompts: {e}") from None
    return prompts


@dataclass
class TrainResult:
    run_dir: Path
    report: Path
    history: list[dict[str, float]]  # learner + reward metrics, one dict per iteration
    gains: dict[str, tuple[float, float, float]]  # metric -> (gain, low, high), paired CI


class FindLoop:
    """The in-process FIND loop: each iteration draws rollouts of the current policy, scores
    them, stores them and updates the learner; iterating yields each iteration's metrics."""

    def __init__(
        self, cfg: FindRayConfig, backend: Backend, reward: RewardFn, prompts: list[str]
    ) -> None:
        self.cfg, self.reward, self.prompts = cfg, reward, prompts
        self.learner = Learner(
            cfg.learner,
            backend.latent_shape,
            prompts,
            backend.encode_prompts(prompts),
            cfg.train.seed,
            cfg.policy,
        )
        self.worker = RolloutWorker(
            backend,
            prompts,
            cfg.train.rollout_batch_size,
            cfg.learner.loss.logp_reduction,
            cfg.train.seed,
        )
        self.rollouts = 0  # drawn so far (the next rollout's id)

    def __iter__(self) -> Iterator[dict[str, float]]:
        t, drops = self.cfg.train, Counter[str]()
        for it in range(t.iterations):
            ids = iteration_prompt_ids(
                len(self.prompts), t.samples_per_prompt, t.prompts_per_iteration, it, t.seed
            )
            self.worker.set_weights(*self.learner.weights())
            rollout_ids = list(range(self.rollouts, self.rollouts + len(ids)))
            rollouts, images = self.worker.rollout(ids, rollout_ids)
            self.rollouts += len(ids)
            scored, dropped = score_rollouts(self.reward, rollouts, images)
            drops.update({reason: len(ids) for reason, ids in dropped.items()})
            self.learner.add(scored)
            metrics = self.learner.update()
            rewards = [r.reward for r in scored]
            rows = [self.learner.prompt_rows[r.prompt] for r in scored]
            metrics.update(reward_metrics(rewards, rows))
            for reason, n in drops.items():
                metrics[f"drops/{reason}"] = float(n)
            yield metrics


def train_in_process(cfg: FindRayConfig) -> TrainResult:
    """Runs FIND, evaluates before/after on the same seeds and writes the report."""
    prompts = train_prompts(cfg)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    backend = make_backend(cfg.model)
    reward = make_reward(cfg.reward)
    writer = SummaryWriter(str(out / "tensorboard"))
    history = []
    loop = FindLoop(cfg, backend, reward, prompts)
    bar = tqdm(loop, "find", cfg.train.iterations, unit="it")
    for it, metrics in enumerate(bar):
        history.append(metrics)
        for key, value in metrics.items():
            writer.add_scalar(key, value, it)
        bar.set_postfix(
            reward=f"{metrics['reward_mean']:.3f}", clip=f"{metrics.get('clip_fraction', 0):.2f}"
        )
    loop.learner.policy.save(out / "policy.safetensors", cfg.train.iterations, prompts)
    torch.save(loop.learner.state_dict(), out / "learner.pt")
    before = evaluate_policy(backend, reward, prompts, cfg.eval)
    after = evaluate_policy(backend, reward, prompts, cfg.eval, loop.learner.policy)
    report, gains = write_find_report(cfg, prompts, before, after, out)
    writer.close()
    return TrainResult(out, report, history, gains)


def reward_metrics(rewards: list[float], prompt_ids: list[int]) -> dict[str, float]:
    """Mean and std of the fresh rewards, overall and per prompt by its row (`reward_mean/p03`)."""
    if not rewards:
        return {}
    rewards, prompt_ids = torch.tensor(rewards), torch.tensor(prompt_ids)
    metrics = {"reward_mean": rewards.mean().item(), "reward_std": rewards.std().item()}
    for p in prompt_ids.unique().tolist():
        mine = rewards[prompt_ids == p]
        metrics[f"reward_mean/p{p:02d}"] = mine.mean().item()
        metrics[f"reward_std/p{p:02d}"] = mine.std().item()
    return metrics


MEANS = ("score_before", "score_after", "exact_before", "exact_after")


def write_find_report(
    cfg: FindRayConfig,
    prompts: list[str],
    before: list[PromptResult],
    after: list[PromptResult],
    out: Path,
    sections: list[str] = (),
    extra: dict | None = None,
    header: list[str] | None = None,
) -> tuple[Path, dict[str, tuple[float, float, float]]]:
    """Base vs trained policy on the same eval seeds: table, paired bootstrap CIs, image
    diversity, grids. `header` replaces the training run's title and description."""
    e = cfg.eval
    gains = {
        metric: paired_bootstrap_ci(_matrix(before, metric), _matrix(after, metric))
        for metric in ("scores", "exact")
        if np.isfinite(_matrix(before, metric)).all()  # rewards without "exact" skip it
    }
    stack([suite_grid(before), suite_grid(after)]).save(out / "before_after.png")
    header = header or [
        "# FIND run",
        "",
        f"{len(prompts)} prompts, {cfg.train.iterations} iterations x "
        f"{cfg.train.samples_per_prompt} samples per prompt; evaluated with "
        f"{e.samples_per_prompt} samples per prompt on seed {e.seed} (same noise before/after).",
    ]
    diversity = {
        "base": float(np.mean([r.diversity for r in before])),
        "trained": float(np.mean([r.diversity for r in after])),
    }
    diversity["ratio"] = diversity["trained"] / diversity["base"]
    lines = [
        *header,
        "",
        "| prompt | score before | score after | exact before | exact after |",
        "|---|---:|---:|---:|---:|",
    ]
    for b, a in zip(before, after, strict=True):
        lines.append(
            f"| {b.prompt} | {fmt(b.scores.mean())} | {fmt(a.scores.mean())} | "
            f"{fmt(b.exact.mean())} | {fmt(a.exact.mean())} |"
        )
    means = [
        float(np.mean([r.scores.mean() for r in before])),
        float(np.mean([r.scores.mean() for r in after])),
        float(np.mean([r.exact.mean() for r in before])),
        float(np.mean([r.exact.mean() for r in after])),
    ]
    lines.append("| **mean** | " + " | ".join(f"**{fmt(m)}**" for m in means) + " |")
    for metric, (gain, low, high) in gains.items():
        lines.append(
            f"\n**{metric} gain**: {gain:+.3f} (95 % paired bootstrap CI [{low:+.3f}, {high:+.3f}])"
        )
    lines.append(
        f"\n**Diversity** (mean pairwise RMS distance of a prompt's {e.samples_per_prompt} "
        f"images): base {diversity['base']:.3f}, trained {diversity['trained']:.3f}, "
        f"ratio {diversity['ratio']:.2f}"
    )
    lines += [*sections]
    lines += ["", "Top: base policy; bottom: trained policy.", "", "![](before_after.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    summary = {m: dict(zip(("gain", "low", "high"), g, strict=True)) for m, g in gains.items()}
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "gains": summary,
                "means": dict(zip(MEANS, means, strict=True)),
                "diversity": diversity,
                "eval": asdict(e),
                "prompts": prompts,
                **(extra or {}),
            },
            indent=2,
        )
        + "\n"
    )
    return out / "report.md", gains


def _matrix(results: list[PromptResult], metric: str) -> np.ndarray:
    return np.stack([getattr(r, metric) for r in results])
