"""Tiny random reward models of the real architectures, saved in their real weight formats (no
downloads), and the config overrides that point a reward at them: for the reward tests and
for runs of the shipped configs through Ray."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BlipVisionConfig, CLIPConfig, CLIPModel

from find_ray.backends.offline_tokenizer import char_tokenizer
from find_ray.rewards import imagereward_blip as blip
from find_ray.rewards.aesthetic import AestheticHead
from find_ray.rewards.imagereward import load_tokenizer
from tests.tiny_clip import TINY_ARCH, TINY_WIDTH, save_tiny_clip

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = [*SPECIAL, "a", "cat", "dog", "red", "blue", "on", "the", "##s", "sofa", "two"]
MED = dict(  # med_config.json's keys, tiny
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=40,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    pad_token_id=0,
    encoder_width=128,
    add_cross_attention=True,
)
VISION = BlipVisionConfig(  # wider than the text, as ViT-L (1024) is than BERT (768)
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=1,
    num_attention_heads=2,  # width // 64, as vision_config infers
    image_size=32,
    patch_size=16,
    layer_norm_eps=1e-6,
)
UNUSED = {  # in the real ImageReward.pt; the reward drops them
    "blip.vision_proj.weight": torch.zeros(4, 128),
    "blip.text_proj.weight": torch.zeros(4, 32),
    "blip.text_encoder.embeddings.position_ids": torch.arange(40)[None],
}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (BlipVisionModel initialises near zero)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def tiny_pickscore_model(tokenizer) -> CLIPModel:
    layer = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            layer,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(layer, image_size=32, patch_size=16),
        projection_dim=8,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval()


def save_tiny_pickscore(folder: Path) -> tuple[Path, CLIPModel, object]:
    """A tiny CLIPModel and its tokenizer saved with save_pretrained (PickScore's format)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = char_tokenizer(folder)
    model = tiny_pickscore_model(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def save_tiny_imagereward(folder: Path) -> tuple[Path, blip.ImageRewardModel, object]:
    """ImageReward.pt in the original key names (plus keys the reward drops), med_config.json
    and a WordPiece vocab.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = load_tokenizer(str(folder))
    med = dict(MED, vocab_size=len(tokenizer))
    model = randomise(blip.ImageRewardModel(VISION, blip.text_config(med, VISION.hidden_size)))
    (folder / "med_config.json").write_text(json.dumps(med))
    torch.save({**blip.to_original(model.state_dict()), **UNUSED}, folder / "ImageReward.pt")
    return folder, model, tokenizer


def tiny_reward(name: str, folder: Path, key: str = "reward") -> list[str]:
    """Writes a tiny model for scorer `name` into `folder`; returns the overrides that point
    config section `key` (reward, eval.quality, quality) at it."""
    folder.mkdir(parents=True, exist_ok=True)
    if name in ("clipscore", "video_clip", "hpsv2"):
        weights = save_tiny_clip(folder, wrap=name == "hpsv2")
        return [f"{key}.weights_path={weights}", f"{key}.model={folder / TINY_ARCH}.json"]
    if name == "aesthetic":
        backbone = save_tiny_clip(folder, seed=3)
        torch.manual_seed(3)
        head = folder / "head.pth"
        torch.save(AestheticHead(TINY_WIDTH).state_dict(), head)
        return [f"{key}.weights_path={head}", f"{key}.model={folder / TINY_ARCH}.json:{backbone}"]
    if name == "pickscore":
        return [f"{key}.weights_path={save_tiny_pickscore(folder)[0]}"]
    if name == "imagereward":
        return [f"{key}.weights_path={save_tiny_imagereward(folder)[0]}"]
    raise ValueError(f"no tiny model for scorer {name!r}")
