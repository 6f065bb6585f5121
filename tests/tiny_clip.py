"""A tiny random open_clip CLIP (ViT) registered under its own architecture name and saved
as a checkpoint file (nothing is downloaded; the BPE vocabulary ships with open_clip)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_ARCH = "tiny-find-ray-ViT"
TINY_WIDTH = 16  # the tiny CLIP's embedding width
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny(folder: Path) -> str:
    """Writes the tiny config into `folder` and adds it to open_clip's registry."""
    import open_clip

    path = folder / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return TINY_ARCH


def save_tiny_clip(folder: Path, seed: int = 0, wrap: bool = False) -> Path:
    """A random tiny CLIP's state dict saved with torch.save (`wrap`: as {'state_dict': ...},
    HPSv2's checkpoint format); returns the file."""
    import open_clip

    register_tiny(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_ARCH)
    state = model.state_dict()
    path = folder / f"tiny-clip-{seed}{'-wrapped' if wrap else ''}.pt"
    torch.save({"state_dict": state} if wrap else state, path)
    return path
