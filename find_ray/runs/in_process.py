"""FIND training in one process (`find-ray train --no-ray`): the reference loop, no Ray."""

from __future__ import annotations

import torch

from find_ray.algo.loop import FindLoop
from find_ray.backends import make_backend, model_devices
from find_ray.config import FindRayConfig
from find_ray.errors import ConfigError
from find_ray.eval.evaluate import evaluate_policy
from find_ray.prompts import train_prompts
from find_ray.rewards import check_scorers, scorer_devices, scorers
from find_ray.runs.folder import TrainResult, finish_run, start_run
from find_ray.runs.logger import RunLogger


def cuda_problems(devices: dict[str, str], gpus: int) -> list[str]:
    """The devices (config key -> device) on a CUDA GPU this machine lacks (it has `gpus`)."""
    problems = []
    for key, device in devices.items():
        if not device.startswith("cuda"):
            continue
        index = device.partition(":")[2]
        if gpus == 0:
            problems.append(
                f"config key '{key}': {device} but torch sees no CUDA GPU on this machine "
                f"(torch.cuda.is_available() is False); set {key}=cpu"
            )
        elif index.isdigit() and int(index) >= gpus:
            problems.append(
                f"config key '{key}': {device} but torch sees {gpus} CUDA GPU(s), "
                f"cuda:0 to cuda:{gpus - 1}; set {key}=cuda:0"
            )
    return problems


def check_local_devices(cfg: FindRayConfig) -> None:
    """One-line ConfigError when the model or a learned scorer is put on a GPU not here."""
    devices = {**model_devices(cfg.model), **scorer_devices(cfg)}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = cuda_problems(devices, gpus)
    if problems:
        raise ConfigError("; also ".join(problems))


def train_in_process(cfg: FindRayConfig) -> TrainResult:
    """Runs FIND, evaluates base and trained policy on the same eval noise, writes the run."""
    prompts = train_prompts(cfg)
    check_scorers(cfg)
    check_local_devices(cfg)  # a CUDA device this machine lacks: one line, before any load
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
