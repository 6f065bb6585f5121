"""`find-ray pretrain-shapes [--flow]`: trains the tiny text-to-image models of the shapes world.

One loop trains either model; `pretrain.objective` picks the pipeline and its loss: the DDIM
model's v-prediction or the flow model's rectified-flow velocity. Seeded and resumable: the EMA
pipeline is saved (diffusers format) every `save_every` steps and the full training state
beside it, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from find_ray.errors import ConfigError
from find_ray.shapes.captions import caption_for
from find_ray.shapes.components import build_flow_pipeline, build_pipeline, training_scheduler
from find_ray.shapes.pipeline import ShapesPipeline, ShapesPipelineBase
from find_ray.shapes.settings import PretrainConfig
from find_ray.shapes.world import render, sample_scene

STATE_FILE = "training_state.pt"


def make_batch(
    rng: random.Random, batch_size: int, caption_dropout: float
) -> tuple[torch.Tensor, list[str]]:
    """Random scenes as (B, 3, 32, 32) in [-1, 1] and their captions (some dropped to '')."""
    scenes = [sample_scene(rng) for _ in range(batch_size)]
    images = np.stack([render(s) for s in scenes])
    captions = [
        "" if rng.random() < caption_dropout else caption_for(s.multiset, rng) for s in scenes
    ]
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x0, captions


def diffusion_loss(
    pipe: ShapesPipeline, schedule: DDPMScheduler, x0: torch.Tensor, captions: list[str]
) -> torch.Tensor:
    """v-prediction MSE at uniformly drawn timesteps."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, schedule.config.num_train_timesteps, (x0.shape[0],))
    noisy = schedule.add_noise(x0, noise, t)
    target = schedule.get_velocity(x0, noise, t)
    pred = pipe.unet(noisy, t, encoder_hidden_states=pipe.encode_prompt(captions)).sample
    return F.mse_loss(pred.float(), target)


def flow_loss(pipe: ShapesPipelineBase, x0: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Rectified-flow MSE: at x_t = (1 - t) x_0 + t eps, t ~ U(0, 1), the unet (fed the
    sampler's timestep for t, num_train_timesteps * t) predicts the velocity eps - x_0."""
    noise = torch.randn_like(x0)
    t = torch.rand(x0.shape[0])
    sigma = t.view(-1, *[1] * (x0.dim() - 1))
    noisy = (1 - sigma) * x0 + sigma * noise
    timestep = t * pipe.scheduler.config.num_train_timesteps
    pred = pipe.unet(noisy, timestep, encoder_hidden_states=pipe.encode_prompt(captions)).sample
    return F.mse_loss(pred.float(), noise - x0)


Loss = Callable[[ShapesPipelineBase, torch.Tensor, list[str]], torch.Tensor]


def model_and_loss(cfg: PretrainConfig) -> tuple[ShapesPipelineBase, Loss]:
    """The untrained pipeline `pretrain.objective` names and its training loss."""
    if cfg.objective == "flow":
        return build_flow_pipeline(cfg.model), flow_loss
    if cfg.objective != "v_prediction":
        raise ConfigError(
            f"config key 'pretrain.objective': {cfg.objective!r}; use v_prediction or flow"
        )
    pipe = build_pipeline(cfg.model)
    schedule = training_scheduler()  # built once: the hot loop only indexes it
    return pipe, lambda p, x0, captions: diffusion_loss(p, schedule, x0, captions)


def pretrain(cfg: PretrainConfig, max_minutes: float | None = None) -> Path:
    """Trains (or resumes) and returns the folder of the saved EMA pipeline."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    pipe, loss_of = model_and_loss(cfg)
    params = [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay)
    state_dir, out_dir = Path(cfg.state_dir), Path(cfg.out_dir)
    start, wall_before = _resume(cfg, pipe, optimizer, lr_schedule, ema, rng)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    began = time.monotonic()
    desc = "pretrain-shapes" + (" --flow" if cfg.objective == "flow" else "")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc)
    for step in bar:
        x0, captions = make_batch(rng, cfg.batch_size, cfg.caption_dropout)
        with autocast:
            loss = loss_of(pipe, x0, captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_schedule.get_last_lr()[0]:.2e}")
        done = step + 1
        out_of_time = max_minutes is not None and time.monotonic() - began > 60 * max_minutes
        if done % cfg.save_every == 0 or done == cfg.steps or out_of_time:
            wall = wall_before + time.monotonic() - began
            _save(cfg, pipe, optimizer, lr_schedule, ema, rng, done, wall, state_dir, out_dir)
        if out_of_time:
            break
    return out_dir


def _save(cfg, pipe, optimizer, lr_schedule, ema, rng, step, wall, state_dir, out_dir) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "step": step,
            "objective": cfg.objective,
            "wall_seconds": wall,
            "unet": pipe.unet.state_dict(),
            "text_encoder": pipe.text_encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            "ema": ema.state_dict(),
            "python_rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        },
        state_dir / STATE_FILE,
    )
    params = [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]
    ema.store(params)
    ema.copy_to(params)
    pipe.save_pretrained(out_dir)
    ema.restore(params)
    meta = {"step": step, "wall_minutes": round(wall / 60, 1), "config": asdict(cfg)}
    (out_dir / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def _resume(cfg, pipe, optimizer, lr_schedule, ema, rng) -> tuple[int, float]:
    """Restores the training state if there is one; returns (step, wall seconds so far)."""
    path = Path(cfg.state_dir) / STATE_FILE
    if not path.exists():
        return 0, 0.0
    state = torch.load(path, weights_only=False)
    saved = state.get("objective", "v_prediction")  # states saved before the flow model
    if saved != cfg.objective:
        raise ConfigError(
            f"config key 'pretrain.objective' is {cfg.objective!r} but {path} holds a "
            f"{saved!r} training state; set pretrain.state_dir to another folder"
        )
    pipe.unet.load_state_dict(state["unet"])
    pipe.text_encoder.load_state_dict(state["text_encoder"])
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    ema.load_state_dict(state["ema"])
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state.get("wall_seconds", 0.0))
