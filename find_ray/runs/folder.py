"""A run folder: what `find-ray train` writes (both paths) and what reads it back.

Written: config.yaml at the start; at the end policy.safetensors, report.md, metrics.json,
before_after.png and per-prompt before/after grids in TensorBoard. Read: a finished run holds
`policy.safetensors`; a run still training holds its latest policy in
`checkpoint/policy.safetensors` (swapped in by renames, so `checkpoint.old/` may hold it for a
moment). The newest of these by learner version is the run's policy.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from find_ray.algo.amortized import AmortizedNoisePolicy
from find_ray.algo.gaussian import reparameterise
from find_ray.algo.policy import NoisePolicy
from find_ray.algo.policy_files import load_policy, read_policy_metadata
from find_ray.config import FindRayConfig, load_saved_config, to_yaml
from find_ray.errors import FindRayError, ModelPathError
from find_ray.eval.evaluate import PromptResult
from find_ray.eval.report import Gains, suite_grid, write_find_report
from find_ray.images import stack
from find_ray.rewards import quality_config
from find_ray.runs.logger import RunLogger

POLICY_FILES = ("policy.safetensors", "checkpoint/policy.safetensors")


@dataclass
class TrainResult:
    run_dir: Path
    report: Path
    history: list[dict[str, float]]  # learner + reward metrics, one dict per update
    gains: Gains


def start_run(cfg: FindRayConfig) -> Path:
    """Creates the run folder `train.out_dir` and writes its config.yaml; returns the folder."""
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    return out


def finish_run(
    cfg: FindRayConfig,
    prompts: list[str],
    policy: NoisePolicy,
    version: int,
    results: tuple[list[PromptResult], list[PromptResult]],
    logger: RunLogger,
    sections: list[str] = (),
    extra: dict | None = None,
) -> TrainResult:
    """The end of a training run: the trained policy, the report of base against trained
    (`results`, on the same eval noise), before/after grids per prompt; closes the logger."""
    out, (before, after) = Path(cfg.train.out_dir), results
    policy.save(out / "policy.safetensors", version, prompts)
    report = write_find_report(cfg, prompts, before, after, out, sections, extra)
    logger.eval_figures(report.figures, version)
    for p, (b, a) in enumerate(zip(before, after, strict=True)):
        grid = stack([suite_grid([b]), suite_grid([a])]).convert("RGB")
        logger.image(f"before_after/p{p:02d}", np.asarray(grid), version)
    logger.close()
    return TrainResult(out, report.path, logger.history, report.gains)


@dataclass
class RunPolicy:
    policy: NoisePolicy
    prompts: list[str]  # the training prompts: policy row i belongs to prompts[i]
    version: int  # learner updates behind it
    path: Path

    @property
    def amortized(self) -> bool:
        return isinstance(self.policy, AmortizedNoisePolicy)

    def covers(self, prompt: str) -> bool:
        """Whether the policy has a distribution for `prompt`: an amortized one for any
        prompt, a per-prompt one for its training prompts only."""
        return self.amortized or prompt in self.prompts

    @torch.no_grad()
    def mean_std(
        self, prompts: list[str], encode: Callable[[list[str]], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """(mu, sigma), each (B, *shape), of prompts it covers; `encode` is the backend's
        `encode_prompts` (the amortized policy's input)."""
        if self.amortized:
            return self.policy.mean_std_of(encode(prompts))
        missing = [p for p in prompts if p not in self.prompts]
        if missing:
            raise ValueError(f"no trained policy for {missing}")
        return self.policy.mean_std(torch.tensor([self.prompts.index(p) for p in prompts]))

    @torch.no_grad()
    def noise(self, prompt: str, eps: Tensor, encode: Callable[[list[str]], Tensor]) -> Tensor:
        """The initial latents for standard-normal eps (B, *shape) under the policy of
        `prompt` (the policy's `latent` of its action), or eps itself, the base, for a prompt
        it does not cover."""
        if not self.covers(prompt):
            return eps
        return self.policy.latent(reparameterise(*self.mean_std([prompt], encode), eps))


def finished_with(run_dir: str | Path, cfg: FindRayConfig) -> bool:
    """Whether `run_dir` holds a finished run (its report's metrics.json) of `cfg` (`runs_as`).
    Benchmarks read such runs back instead of training them again."""
    folder = Path(run_dir)
    config, metrics = folder / "config.yaml", folder / "metrics.json"
    return metrics.is_file() and config.is_file() and runs_as(config.read_text(), cfg)


def runs_as(saved_yaml: str, cfg: FindRayConfig) -> bool:
    """Whether a config a run saved (YAML text) runs as `cfg` does: read with today's defaults
    for keys added since, a quality scorer named "auto" resolved to the one it means."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(saved_yaml)
        file.flush()
        try:
            saved = load_saved_config(file.name)
        except FindRayError:  # a key that no longer exists: not the same run
            return False
    return _resolved_yaml(saved) == _resolved_yaml(cfg)


def _resolved_yaml(cfg: FindRayConfig) -> str:
    quality = quality_config(cfg.eval.quality, cfg.reward)
    name = quality.name if quality is not None else ""
    return to_yaml(
        replace(cfg, eval=replace(cfg.eval, quality=replace(cfg.eval.quality, name=name)))
    )


def read_run_config(run_dir: str | Path) -> FindRayConfig:
    """The run's config.yaml; a missing folder or file is one error naming it."""
    folder = Path(run_dir).expanduser()
    if not folder.is_dir():
        raise ModelPathError(f"run folder not found: {folder}")
    config = folder / "config.yaml"
    if not config.is_file():
        raise ModelPathError(f"not a run folder: no {config} (written by `find-ray train`)")
    try:
        return load_saved_config(config)
    except FindRayError as e:
        raise ModelPathError(f"{config}: {e}") from None


def policy_version(path: Path) -> int:
    """The learner version a policy file was saved at (its metadata, else its checkpoint's)."""
    meta = read_policy_metadata(path)
    if "version" in meta:
        return int(meta["version"])
    sidecar = path.with_name("meta.json")
    if sidecar.is_file():
        return int(json.loads(sidecar.read_text())["version"])
    return 0


def _candidates(folder: Path) -> list[Path]:
    paths = [folder / name for name in POLICY_FILES]
    paths.append(folder / "checkpoint.old" / "policy.safetensors")
    return [p for p in paths if p.is_file()]


def newest_policy_version(run_dir: str | Path) -> int:
    """The newest policy version on disk (-1 if none is readable); cheap: metadata only."""
    versions = []
    for path in _candidates(Path(run_dir)):
        try:
            versions.append(policy_version(path))
        except (OSError, ValueError, KeyError):
            continue  # being swapped or written: the next poll sees it
    return max(versions, default=-1)


def load_run_policy(run_dir: str | Path, prompts: list[str] | None = None) -> RunPolicy:
    """The newest noise policy of a run; a missing or unreadable file is one error naming it.

    `prompts` (the run's, from its config) is used for files saved without their prompts.
    """
    folder = Path(run_dir).expanduser()
    found = _candidates(folder)
    if not found:
        raise ModelPathError(
            f"no noise policy in {folder} (looked for {' and '.join(POLICY_FILES)})"
        )
    runs = []
    for path in found:
        try:
            meta = read_policy_metadata(path)
            policy = load_policy(path)
            names = json.loads(meta["prompts"]) if "prompts" in meta else prompts
            version = policy_version(path)
        except Exception as e:  # safetensors raises its own types for a damaged file
            raise ModelPathError(f"cannot read noise policy {path}: {e}") from None
        if names is None or len(names) != policy.num_prompts:
            raise ModelPathError(
                f"{path} holds {policy.num_prompts} policies but the run names "
                f"{'no' if names is None else len(names)} prompts"
            )
        runs.append(RunPolicy(policy, list(names), version, path))
    return max(runs, key=lambda r: r.version)
