"""`imagereward`: ImageReward (THUDM/ImageReward), BLIP fine-tuned on human preferences.

The pip package `image-reward` pins timm==0.6.13 (this venv has timm 1.x) and fairscale, and
its med.py imports helpers transformers 5 no longer has, so the network is rebuilt on
transformers' BLIP classes (`imagereward_blip`) and the original checkpoint renamed on load.

Where the weights come from:

- `reward.weights_path`: ImageReward.pt, or a folder with it (and med_config.json, BLIP's text
  encoder config; BLIP's defaults without it), e.g. `huggingface-cli download THUDM/ImageReward
  ImageReward.pt med_config.json --local-dir DIR`; empty: that hub repo (cached, or online).
- the tokenizer (bert-base-uncased + [DEC]/[ENC], as BLIP's init_tokenizer): `reward.model` if
  set (a folder or hub id), else the weights folder if it has vocab.txt, else (online)
  bert-base-uncased.

Prompts are tokenised as ImageReward.score/score_gard do (padding to 35, truncation; input_ids
as the tokenizer gives them, [CLS] first: unlike BLIP's ITM, ImageReward does not write [ENC]
there). Pixels go through `clip_pixels` (bicubic resize to the
ViT's image size, 224, centre crop, OpenAI mean/std: ImageReward's transform), so the
differentiable form shares the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from find_ray.config import ScorerConfig
from find_ray.errors import ModelPathError
from find_ray.rewards.batching import register_scorer
from find_ray.rewards.clip_pixels import clip_pixels
from find_ray.rewards.hub import hub_file
from find_ray.rewards.weights import require, resolve_weights

REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER = "bert-base-uncased"
MAX_LENGTH = 35
HOW = (
    f"get it with `huggingface-cli download {REPO} {CHECKPOINT} {MED_CONFIG} --local-dir DIR` "
    f"(and `huggingface-cli download {TOKENIZER} --local-dir TOK`), then set "
    "reward.weights_path=DIR (and reward.model=TOK if DIR has no vocab.txt)"
)


def _folder_files(cfg: ScorerConfig, path: Path) -> tuple[Path, Path | None]:
    """(ImageReward.pt, med_config.json or None) inside a weights folder, or a file itself."""
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        raise ModelPathError(
            f"reward {cfg.name!r}: no {CHECKPOINT} in {path} (reward.weights_path); {HOW}"
        )
    med = checkpoint.parent / MED_CONFIG
    return checkpoint, med if med.is_file() else None


def sources(cfg: ScorerConfig) -> tuple[Path | None, Path | None, str]:
    """(checkpoint, med_config, tokenizer); checkpoint None means the hub (cached or online).
    One-line ModelPathError if unusable. Loads nothing."""
    resolve_weights(cfg, REPO, HOW, hub_file(REPO, CHECKPOINT))
    checkpoint = med = None
    if cfg.weights_path:
        checkpoint, med = _folder_files(cfg, Path(cfg.weights_path).expanduser())
    if cfg.model:
        if not Path(cfg.model).expanduser().exists():
            subject = f"reward {cfg.name!r}: no tokenizer folder at {cfg.model} (reward.model)"
            require(hub_file(cfg.model, "vocab.txt"), subject, HOW)
        return checkpoint, med, cfg.model
    if checkpoint is not None and (checkpoint.parent / "vocab.txt").is_file():
        return checkpoint, med, str(checkpoint.parent)
    where = f"no vocab.txt beside {checkpoint}" if checkpoint else "reward.weights_path is empty"
    subject = f"reward {cfg.name!r}: {where} and reward.model is empty"
    require(hub_file(TOKENIZER, "vocab.txt"), subject, HOW)
    return checkpoint, med, TOKENIZER


def check_imagereward(cfg: ScorerConfig) -> None:
    sources(cfg)


def load_model(checkpoint: Path, med: Path | None):
    """ImageRewardModel from ImageReward.pt (original key names) and med_config.json."""
    import find_ray.rewards.imagereward_blip as blip

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        vision = blip.vision_config(state)
    except (KeyError, IndexError) as err:
        raise ModelPathError(
            f"{checkpoint} (reward.weights_path) is not an ImageReward checkpoint "
            f"(no BLIP ViT key {err}); {HOW}"
        ) from None
    med_values = json.loads(med.read_text()) if med else None
    model = blip.ImageRewardModel(vision, blip.text_config(med_values, vision.hidden_size))
    renamed, unexpected = blip.from_original(state)
    missing = sorted(set(model.state_dict()) - set(renamed))
    if unexpected or missing:
        raise ModelPathError(
            f"{checkpoint} (reward.weights_path) does not match ImageReward "
            f"(unexpected keys {unexpected[:3]}, missing {missing[:3]}); {HOW}"
        )
    try:
        model.load_state_dict(renamed)
    except RuntimeError as err:
        shapes = str(err).splitlines()[1:2]
        raise ModelPathError(
            f"{checkpoint} (reward.weights_path) does not fit {med or 'BLIP defaults'} "
            f"({' '.join(s.strip() for s in shapes)}); {HOW}"
        ) from None
    return model


def load_tokenizer(source: str):
    """BLIP's init_tokenizer: BertTokenizer + bos [DEC] + additional special [ENC]."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def _download() -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(REPO, CHECKPOINT)), Path(hf_hub_download(REPO, MED_CONFIG))


class ImageReward:
    """The scorer core: a chunk of (B, 3, H, W) in [0, 1] and prompts -> ((B,) scores, {}),
    differentiable in the images (the model itself is frozen); `batching` chunks and places."""

    def __init__(self, cfg: ScorerConfig):
        checkpoint, med, tokenizer = sources(cfg)
        if checkpoint is None:
            checkpoint, med = _download()
        self.model = load_model(checkpoint, med).to(cfg.device, getattr(torch, cfg.dtype))
        self.model.eval().requires_grad_(False)
        self.tokenizer = load_tokenizer(tokenizer)
        self.size = self.model.vision.config.image_size

    def __call__(self, images: torch.Tensor, prompts: list[str]):
        param = self.model.head[0].weight
        work = torch.promote_types(images.dtype, torch.float32)  # float64 stays (gradcheck)
        pixels = clip_pixels(images.to(param.device, work), self.size).to(param.dtype)
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        ).to(param.device)
        return self.model(pixels, tokens.input_ids, tokens.attention_mask), {}


register_scorer("imagereward", ImageReward, check_imagereward)
