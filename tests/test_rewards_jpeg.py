"""JPEG compressibility rewards: exact kB values against PIL, sign, flat beats noise."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from find_ray.config import RewardConfig
from find_ray.rewards import make_reward


def _pil_kb(hwc: np.ndarray) -> float:
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="JPEG", quality=95)
    return len(buffer.getvalue()) / 1000


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 32, 48), 0.5)
    ramp = torch.linspace(0, 1, 48).expand(3, 32, 48)
    noise = torch.rand(3, 32, 48, generator=g)
    return torch.stack([flat, ramp, noise])


def test_jpeg_sizes_match_pil_exactly_and_signs_are_opposite():
    images = _images()
    expected = [
        _pil_kb((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images
    ]
    inc, info = make_reward(RewardConfig(name="jpeg_incompressibility"))(images, ["a"] * 3)
    comp, _ = make_reward(RewardConfig(name="jpeg_compressibility"))(images, ["a"] * 3)
    assert inc.tolist() == torch.tensor(expected, dtype=torch.float32).tolist()
    assert torch.equal(comp, -inc) and torch.equal(info["jpeg_kb"], inc)
    assert comp[0] > comp[1] > comp[2]  # flat < ramp < noise in bytes


def test_jpeg_scores_videos_per_frame_and_averages():
    video = _images().unsqueeze(0)  # one video of three frames
    scores, _ = make_reward(RewardConfig(name="jpeg_incompressibility"))(video, ["a"])
    frames, _ = make_reward(RewardConfig(name="jpeg_incompressibility"))(video[0], ["a"] * 3)
    assert scores.shape == (1,) and torch.allclose(scores, frames.mean().reshape(1))


def test_a_reward_without_exact_match_trains_and_reports(tmp_path):
    # the shapes reward's "exact" is one reward's extra metric: the loop and report do without
    from find_ray.config import load_config
    from find_ray.runs.in_process import train_in_process

    overrides = [
        "model.backend=simulated",
        "reward.name=jpeg_compressibility",
        "train.prompts=[p one, p two]",
        "train.samples_per_prompt=4",
        "train.iterations=2",
        "eval.samples_per_prompt=4",
        "learner.loss.drcm_hidden=8",
        f"train.out_dir={tmp_path}",
    ]
    train_in_process(load_config(None, overrides))
    report = (tmp_path / "report.md").read_text()
    assert "**scores gain**" in report and "exact gain" not in report
    assert "| p one |" in report and "n/a" in report
