"""FIND training in one process (`find-ray train --no-ray`): the reference loop, no Ray."""

from __future__ import annotations

import torch

from find_ray.algo.loop import FindLoop
from find_ray.backends import make_backend
from find_ray.config import FindRayConfig
from find_ray.eval.evaluate import evaluate_policy
from find_ray.prompts import train_prompts
from find_ray.rewards import check_scorers, scorers
from find_ray.runs.folder import TrainResult, finish_run, start_run
from find_ray.runs.logger import RunLogger


def train_in_process(cfg: FindRayConfig) -> TrainResult:
    """Runs FIND, evaluates base and trained policy on the same eval noise, writes the run."""
    prompts = train_prompts(cfg)
    check_scorers(cfg)
    out = start_run(cfg)
    backend, (reward, scorer) = make_backend(cfg.model), scorers(cfg)
    logger = RunLogger(out, cfg.train.iterations)
    loop = FindLoop(cfg, backend, reward, prompts)
    for version, metrics in enumerate(loop, start=1):
        logger.log(version, metrics, clip=f"{metrics.get('clip_fraction', 0):.2f}")
    torch.save(loop.learner.state_dict(), out / "learner.pt")
    before = evaluate_policy(backend, scorer, prompts, cfg.eval)
    after = evaluate_policy(backend, scorer, prompts, cfg.eval, loop.learner.policy)
    policy, version = loop.learner.policy, loop.learner.version
    return finish_run(cfg, prompts, policy, version, (before, after), logger)
