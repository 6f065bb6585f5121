"""`video_clip`: frame-averaged CLIP text-video similarity for text-to-video.

A video (F, 3, H, W) in [0, 1] scores the mean over its frames of cos(frame embedding, text
embedding) (raw cosines in [-1, 1]); info["cosine_min"] is the worst frame's. 4-D images count
as 1-frame videos. The function is marked `takes_videos`, so `make_reward` hands it the videos
(B, F, 3, H, W) instead of averaging frame by frame itself. `reward.batch_size` counts frames
per forward pass.

`reward.model` / `reward.weights_path` as for `clipscore` (default ViT-L-14, "openai" online).
"""

from __future__ import annotations

import torch

from find_ray.config import ScorerConfig
from find_ray.rewards.batching import Core, as_differentiable, as_reward
from find_ray.rewards.clipscore import clip_model_weights
from find_ray.rewards.open_clip_model import OpenClip, load_for
from find_ray.rewards.registry import (
    DifferentiableRewardFn,
    RewardFn,
    register,
    register_differentiable,
)


def check_video_clip(cfg: ScorerConfig) -> None:
    clip_model_weights(cfg)


def video_clip_core(clip: OpenClip, batch_size: int) -> Core:
    """Embeds at most `batch_size` frames per forward pass."""

    def core(videos: torch.Tensor, prompts: list[str]):
        if videos.dim() == 4:
            videos = videos.unsqueeze(1)
        b, f = videos.shape[:2]
        chunks = videos.flatten(0, 1).split(batch_size)
        frames = torch.cat([clip.embed_images(chunk) for chunk in chunks]).view(b, f, -1)
        cosine = (frames * clip.embed_texts(prompts).unsqueeze(1)).sum(-1)
        return cosine.mean(1), {"cosine_min": cosine.min(1).values}

    return core


def _core(cfg: ScorerConfig) -> Core:
    return video_clip_core(load_for(cfg, *clip_model_weights(cfg)), cfg.batch_size)


@register("video_clip", check=check_video_clip)
def video_clip_reward(cfg: ScorerConfig) -> RewardFn:
    score = as_reward(_core(cfg), cfg.batch_size)
    score.takes_videos = True
    return score


@register_differentiable("video_clip")
def video_clip_differentiable(cfg: ScorerConfig) -> DifferentiableRewardFn:
    return as_differentiable(_core(cfg), cfg.batch_size)
