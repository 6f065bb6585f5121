"""Tiny random diffusers pipelines of each family, built from configs, with a character-level
CLIP tokenizer written to disk (nothing is downloaded).

`save_tiny(family, folder)` writes one with save_pretrained and returns its folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from find_ray.backends.offline_tokenizer import char_tokenizer

TEXT_DIM = 16  # hidden size of each tiny text encoder
BLOCKS = (8, 16)  # unet / vae channels; the VAE downsamples 2x (latent 8x8 -> image 16x16)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=32,
        projection_dim=TEXT_DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=BLOCKS,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    )


def _unet(cross_attention_dim: int = TEXT_DIM, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=BLOCKS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=8,
        **extra,
    )


def _ddim() -> DDIMScheduler:
    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def tiny_sd(scratch: Path) -> StableDiffusionPipeline:
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_turbo(scratch: Path) -> StableDiffusionPipeline:
    """SD-Turbo-like: an SD pipeline with an ancestral Euler scheduler (spacing set on load)."""
    pipe = tiny_sd(scratch)
    pipe.scheduler = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", steps_offset=1)
    return pipe


def tiny_sdxl(scratch: Path) -> StableDiffusionXLPipeline:
    """Two text encoders (the second with a projection); the unet takes both (concatenated
    per-token states) and the pooled embedding plus 6 size ids as added conditioning."""
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    time_dim = 8
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(
            cross_attention_dim=2 * TEXT_DIM,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + TEXT_DIM,
        ),
        scheduler=_ddim(),
    )


def tiny_t2v(scratch: Path) -> TextToVideoSDPipeline:
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    unet = UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=BLOCKS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    return TextToVideoSDPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
    )


def tiny_animatediff(scratch: Path) -> AnimateDiffPipeline:
    """An SD unet plus a motion adapter (the pipeline merges them into a UNetMotionModel)."""
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    adapter = MotionAdapter(
        block_out_channels=BLOCKS,
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    return AnimateDiffPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        motion_adapter=adapter,
        scheduler=_ddim(),
    )


TINY = {
    "sd": tiny_sd,
    "turbo": tiny_turbo,
    "sdxl": tiny_sdxl,
    "t2v": tiny_t2v,
    "animatediff": tiny_animatediff,
}


def save_tiny(family: str, scratch: Path) -> Path:
    """A tiny random pipeline of `family` (seeded) saved under scratch/pipe; its folder."""
    torch.manual_seed(0)
    pipe: DiffusionPipeline = TINY[family](scratch)
    pipe.save_pretrained(scratch / "pipe")
    return scratch / "pipe"
