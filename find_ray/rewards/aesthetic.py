"""`aesthetic`: the LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor,
`sac+logos+ava1-l14-linearMSE.pth`): an MLP on the L2-normalised CLIP ViT-L/14 image embedding,
scores about 1-10. The prompt is not used.

- `reward.weights_path`: the head file, a state dict `layers.{0,2,4,6,7}.{weight,bias}` (the
  Linear layers of Linear(D,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout,
  Linear(64,16), Linear(16,1); D = the backbone's embedding width, 768 for ViT-L-14); empty:
  downloaded from the predictor's GitHub repo (torch.hub's cached copy, or online).
- `reward.model`: the CLIP backbone, `ARCH` (its "openai" weights, cached or online) or
  `ARCH:FILE` with a local open_clip checkpoint file, e.g.
  `ViT-L-14-quickgelu:/models/open_clip_pytorch_model.bin` (OpenAI's weights need the
  -quickgelu architecture). Default ViT-L-14.

The differentiable form shares the code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from find_ray.config import ScorerConfig
from find_ray.errors import ModelPathError
from find_ray.rewards.batching import Core, register_scorer
from find_ray.rewards.hub import url_file
from find_ray.rewards.open_clip_model import (
    OpenClip,
    check_architecture,
    check_tag,
    load_for,
    tag_remote,
)
from find_ray.rewards.weights import require, resolve_weights

ARCH, TAG = "ViT-L-14", "openai"
HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HOW = f"download {HEAD_URL} and set reward.weights_path to the file"
BACKBONE_HOW = (
    "get an open_clip checkpoint, e.g. `huggingface-cli download "
    "timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin --local-dir DIR`, then "
    "set reward.model=ViT-L-14-quickgelu:DIR/open_clip_pytorch_model.bin"
)


class AestheticHead(nn.Module):
    """The predictor's MLP (no activations, as trained); (B, width) embeddings -> (B,)."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).squeeze(-1)


def backbone(cfg: ScorerConfig) -> tuple[str, str]:
    """(architecture, checkpoint file or "openai") from `reward.model`; one-line errors."""
    arch, _, file = (cfg.model or ARCH).partition(":")
    arch = check_architecture(arch)
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ModelPathError(
                f"reward {cfg.name!r}: no CLIP checkpoint at {path} (reward.model={arch}:FILE); "
                f"{BACKBONE_HOW}"
            )
        return arch, str(path)
    subject = f"reward {cfg.name!r}: reward.model={arch} names no local checkpoint"
    require(tag_remote(arch, TAG), subject, BACKBONE_HOW)
    check_tag(arch, TAG, BACKBONE_HOW)
    return arch, TAG


def head_source(cfg: ScorerConfig) -> str:
    """The head file (`reward.weights_path`) or HEAD_URL (torch.hub's cached copy, or online)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / HEAD_FILE
    return resolve_weights(cfg, HEAD_URL, HOW, url_file(HEAD_URL, cached))


def check_aesthetic(cfg: ScorerConfig) -> None:
    head_source(cfg)
    backbone(cfg)


def load_head(source: str, width: int) -> AestheticHead:
    """The head from a file or URL; one-line ModelPathError if it does not fit `width`."""
    if source == HEAD_URL:
        state = torch.hub.load_state_dict_from_url(
            source, map_location="cpu", file_name=HEAD_FILE, weights_only=True
        )
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
    head = AestheticHead(width)
    try:
        head.load_state_dict(state)
    except (RuntimeError, AttributeError):
        raise ModelPathError(
            f"reward 'aesthetic': {source} (reward.weights_path) is not an aesthetic head for "
            f"a {width}-wide CLIP embedding (reward.model): want a state dict with "
            f"layers.{{0,2,4,6,7}}.{{weight,bias}}, layers.0.weight of shape (1024, {width})"
        ) from None
    return head


def aesthetic_core(clip: OpenClip, head: AestheticHead) -> Core:
    def core(images: torch.Tensor, prompts: list[str]):
        return head(clip.embed_images(images)), {}

    return core


def _core(cfg: ScorerConfig) -> Core:
    source = head_source(cfg)
    clip = load_for(cfg, *backbone(cfg))
    head = load_head(source, clip.embed_dim).to(clip.device, clip.dtype).eval()
    return aesthetic_core(clip, head.requires_grad_(False))


register_scorer("aesthetic", _core, check_aesthetic)
