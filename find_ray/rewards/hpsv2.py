"""`hpsv2`: Human Preference Score v2 / v2.1 (tgxs002/HPSv2), an open_clip ViT-H-14 fine-tuned
on human preferences. Score = cos(image embedding, text embedding), i.e. the diagonal of
normalised image features @ normalised text features.T, as hpsv2/img_score.py computes it.

- `reward.weights_path`: the HPS checkpoint file (`HPS_v2.1_compressed.pt` or
  `HPS_v2_compressed.pt` from the hub repo xswu/HPSv2: a torch file {'state_dict': the open_clip
  model's state dict}, which open_clip loads as is); empty: v2.1 from the hub (cached, or online).
- `reward.model`: the open_clip architecture (default ViT-H-14).

HPSv2's preprocessing resizes the longer side and pads to a square with black; here images are
padded to a square first (the same up to resampling), then go through `clip_pixels`.
No dependency on the `hpsv2` package. The differentiable form shares the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from find_ray.config import ScorerConfig
from find_ray.rewards.batching import Core, register_scorer
from find_ray.rewards.hub import hub_file
from find_ray.rewards.open_clip_model import OpenClip, clip_weights, load_for

ARCH = "ViT-H-14"
REPO, FILE = "xswu/HPSv2", "HPS_v2.1_compressed.pt"
HOW = (
    f"get it with `huggingface-cli download {REPO} {FILE} --local-dir DIR`, then set "
    f"reward.weights_path=DIR/{FILE}"
)


def checkpoint(cfg: ScorerConfig) -> tuple[str, str]:
    """(architecture, checkpoint file or the hub default); one-line errors, loads nothing."""
    return clip_weights(cfg, ARCH, f"{REPO}/{FILE}", HOW, hub_file(REPO, FILE))


def check_hpsv2(cfg: ScorerConfig) -> None:
    checkpoint(cfg)


def pad_square(images: torch.Tensor) -> torch.Tensor:
    """Centres (B, 3, H, W) images on a black square (differentiable)."""
    h, w = images.shape[-2:]
    pad_h, pad_w = max(w - h, 0), max(h - w, 0)
    if not pad_h and not pad_w:
        return images
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def hpsv2_core(clip: OpenClip) -> Core:
    def core(images: torch.Tensor, prompts: list[str]):
        return clip.cosine(pad_square(images), prompts), {}

    return core


def _core(cfg: ScorerConfig) -> Core:
    arch, path = checkpoint(cfg)
    if not cfg.weights_path:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(REPO, FILE)
    return hpsv2_core(load_for(cfg, arch, path))


register_scorer("hpsv2", _core, check_hpsv2)
