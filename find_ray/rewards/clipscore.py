"""`clipscore`: CLIPScore (Hessel et al. 2021) with open_clip: 2.5 * max(cos(image, text), 0).

- `reward.model`: the open_clip architecture (default ViT-L-14);
- `reward.weights_path`: a local open_clip checkpoint file of it (for OpenAI's weights name
  the `-quickgelu` architecture); empty: the "openai" pretrained tag (cached, or online).

info["cosine"] is the raw cosine. The differentiable form shares the code (see OpenClip).
"""

from __future__ import annotations

import torch

from find_ray.config import ScorerConfig
from find_ray.rewards.batching import Core, register_scorer
from find_ray.rewards.open_clip_model import OpenClip, check_tag, clip_weights, load_for

ARCH = "ViT-L-14"
TAG = "openai"
SCALE = 2.5  # Hessel et al.'s w
HOW = (
    "get an open_clip checkpoint, e.g. `huggingface-cli download "
    "timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin --local-dir DIR`, "
    "then set reward.weights_path=DIR/open_clip_pytorch_model.bin and "
    "reward.model=ViT-L-14-quickgelu"
)


def clip_model_weights(cfg: ScorerConfig) -> tuple[str, str]:
    """(architecture, checkpoint file or "openai"); one-line errors, loads nothing."""
    arch, weights = clip_weights(cfg, ARCH, TAG, HOW)
    if not cfg.weights_path:
        check_tag(arch, weights, HOW)
    return arch, weights


def check_clipscore(cfg: ScorerConfig) -> None:
    clip_model_weights(cfg)


def clipscore_core(clip: OpenClip) -> Core:
    def core(images: torch.Tensor, prompts: list[str]):
        cosine = clip.cosine(images, prompts)
        return SCALE * cosine.clamp(min=0), {"cosine": cosine}

    return core


def _core(cfg: ScorerConfig) -> Core:
    return clipscore_core(load_for(cfg, *clip_model_weights(cfg)))


register_scorer("clipscore", _core, check_clipscore)
