"""Builds the untrained shapes pipelines: a unet, a tiny text encoder, a word tokenizer and the
DDIM scheduler (ShapesPipeline) or the flow-matching Euler scheduler (ShapesFlowPipeline)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    UNet2DConditionModel,
)
from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModel

from find_ray.shapes.captions import VOCABULARY
from find_ray.shapes.flow_pipeline import ShapesFlowPipeline
from find_ray.shapes.pipeline import ShapesPipeline, ShapesPipelineBase
from find_ray.shapes.settings import ShapesModelConfig
from find_ray.shapes.world import IMAGE_SIZE

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","]
# Shared by the training noise schedule and the DDIM sampler saved with the model.
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": True,
}
# The flow model's sampler: SD3's scheduler without its resolution shift (32x32 pixels).
FLOW_SCHEDULE = {"num_train_timesteps": 1000, "shift": 1.0}


def build_tokenizer() -> BertTokenizer:
    """A word-level tokenizer: every grammar word is one token."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + VOCABULARY) + "\n")
        return BertTokenizer.from_pretrained(tmp, do_lower_case=True)


def build_text_encoder(cfg: ShapesModelConfig, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden_size,
            intermediate_size=2 * cfg.text_hidden_size,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=cfg.max_prompt_tokens,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )


def build_unet(cfg: ShapesModelConfig) -> UNet2DConditionModel:
    """Plain resnets at full resolution, cross-attention at the coarser ones."""
    levels = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=8,
    )


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**NOISE_SCHEDULE)


def _assemble(
    pipeline: type[ShapesPipelineBase], scheduler: SchedulerMixin, cfg: ShapesModelConfig | None
) -> ShapesPipelineBase:
    cfg = cfg or ShapesModelConfig()
    tokenizer = build_tokenizer()
    return pipeline(
        unet=build_unet(cfg),
        scheduler=scheduler,
        text_encoder=build_text_encoder(cfg, len(tokenizer)),
        tokenizer=tokenizer,
    )


def build_pipeline(cfg: ShapesModelConfig | None = None) -> ShapesPipeline:
    scheduler = DDIMScheduler(**NOISE_SCHEDULE, timestep_spacing="trailing")
    return _assemble(ShapesPipeline, scheduler, cfg)  # type: ignore[return-value]


def build_flow_pipeline(cfg: ShapesModelConfig | None = None) -> ShapesFlowPipeline:
    """The same unet, text encoder and tokenizer as `build_pipeline`, with the flow-matching
    Euler scheduler: the unet is to predict the velocity (rectified flow)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULE)
    return _assemble(ShapesFlowPipeline, scheduler, cfg)  # type: ignore[return-value]
