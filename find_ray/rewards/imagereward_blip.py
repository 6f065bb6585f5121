"""ImageReward's network on transformers' BLIP classes, and its checkpoint's key names.

THUDM/ImageReward (ImageReward/ImageReward.py) is BLIP's ViT (`blip.visual_encoder`, timm
style, LayerNorm eps 1e-6, fused qkv) + BLIP's BERT text encoder with cross-attention
(`blip.text_encoder`, med.py) + a linear MLP head (`mlp.layers`: 768 -> 1024 -> 128 -> 64 ->
16 -> 1, dropouts between, no activations). The score is the head of the text encoder's
[CLS] state (last layer, position 0) after cross-attending to every image token (the ViT's
CLS + patches after its final norm, none masked), then (score - MEAN) / STD.

`BlipVisionModel` has the same layout as BLIP's ViT (its qkv is fused the same way; the names
follow transformers' convert_blip_original_pytorch_to_hf.py) and `BlipTextModel` (built with
`is_decoder=True` for the cross-attention layers, run bidirectionally) has med.py's names.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

MEAN = 0.16717362830052426
STD = 1.0333394966054072
HEAD_WIDTHS = (1024, 128, 64, 16)
HEAD_DROPOUTS = (0.2, 0.2, 0.1, 0.0)

# BLIP's med_config.json (bert-base-uncased + [DEC] and [ENC]), used when the folder has none.
MED_DEFAULTS = {
    "vocab_size": 30524,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# (original prefix, our prefix); a key under none of them or DROPPED is unexpected.
PREFIXES = (
    ("blip.visual_encoder.", "vision."),
    ("blip.text_encoder.", "text."),
    ("mlp.layers.", "head."),
)
# Trained-but-unused (BLIP's contrastive projections) and a buffer transformers rebuilds.
DROPPED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
# BLIP ViT (timm) -> BlipVisionModel names below the prefixes; {i} is a block index.
VISION_NAMES = (
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("norm.", "post_layernorm."),
    ("blocks.{i}.norm1.", "encoder.layers.{i}.layer_norm1."),
    ("blocks.{i}.norm2.", "encoder.layers.{i}.layer_norm2."),
    ("blocks.{i}.attn.qkv.", "encoder.layers.{i}.self_attn.qkv."),
    ("blocks.{i}.attn.proj.", "encoder.layers.{i}.self_attn.projection."),
    ("blocks.{i}.mlp.", "encoder.layers.{i}.mlp."),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "(?P<rest>.*)")


def _rename_vision(name: str, forward: bool) -> str:
    for original, ours in VISION_NAMES:
        source, target = (original, ours) if forward else (ours, original)
        match = _pattern(source).fullmatch(name)
        if match:
            index = match.groupdict().get("i")
            return (target.replace("{i}", index) if index else target) + match["rest"]
    return name


def _rename(key: str, forward: bool) -> str | None:
    for original, ours in PREFIXES:
        source, target = (original, ours) if forward else (ours, original)
        if key.startswith(source):
            rest = key[len(source) :]
            return target + (_rename_vision(rest, forward) if ours == "vision." else rest)
    return None


def from_original(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """ImageReward.pt's state dict -> ours, and the keys it could not place (DROPPED go)."""
    renamed, unexpected = {}, []
    for key, value in state.items():
        if key.startswith(DROPPED):
            continue
        new = _rename(key, forward=True)
        if new is None:
            unexpected.append(key)
        else:
            renamed[new] = value
    return renamed, unexpected


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> ImageReward.pt's key names (the inverse of `from_original`)."""
    renamed = {_rename(key, forward=False): value for key, value in state.items()}
    if None in renamed:
        raise KeyError(f"keys outside {[ours for _, ours in PREFIXES]}: {list(state)}")
    return renamed


def vision_config(state: dict[str, torch.Tensor]) -> BlipVisionConfig:
    """The ViT's config from an original-format state dict's shapes (ViT-L/16 at 224 for the
    real checkpoint): heads of width 64 as in ViT-B/L, LayerNorm eps 1e-6 as in BLIP."""
    prefix = "blip.visual_encoder."
    width = state[prefix + "cls_token"].shape[-1]
    patch = state[prefix + "patch_embed.proj.weight"].shape[-1]
    grid = round((state[prefix + "pos_embed"].shape[1] - 1) ** 0.5)
    blocks = {int(k.split(".")[3]) for k in state if k.startswith(prefix + "blocks.")}
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state[prefix + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(blocks),
        num_attention_heads=max(1, width // 64),
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def text_config(med: dict | None, encoder_width: int) -> BlipTextConfig:
    """BlipTextConfig from med_config.json's values (BLIP's defaults where absent); the
    cross-attention reads `encoder_width` (the ViT's width, as BLIP_Pretrain sets it)."""
    values = {**MED_DEFAULTS, **{k: v for k, v in (med or {}).items() if k in MED_DEFAULTS}}
    return BlipTextConfig(
        **values,
        encoder_hidden_size=encoder_width,
        is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally
        bos_token_id=None,  # ids for generation, which ImageReward never does
        eos_token_id=None,
        sep_token_id=None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _head(width: int) -> nn.Sequential:
    """ImageReward's MLP: Linear/Dropout pairs with no activation (keys 0, 2, 4, 6, 7)."""
    layers: list[nn.Module] = []
    for out, drop in zip(HEAD_WIDTHS, HEAD_DROPOUTS, strict=True):
        layers.append(nn.Linear(width, out))
        if drop:
            layers.append(nn.Dropout(drop))
        width = out
    return nn.Sequential(*layers, nn.Linear(width, 1))


class ImageRewardModel(nn.Module):
    """(pixels (B, 3, S, S) normalised, input_ids, attention_mask) -> (B,) ImageReward."""

    def __init__(self, vision: BlipVisionConfig, text: BlipTextConfig):
        super().__init__()
        self.vision = BlipVisionModel(vision)
        self.text = BlipTextModel(text, add_pooling_layer=False)
        self.head = _head(text.hidden_size)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image = self.vision(pixel_values=pixels).last_hidden_state  # CLS + patches, normed
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return (self.head(text[:, 0]).squeeze(-1) - MEAN) / STD
