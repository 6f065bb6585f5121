"""Settings of the shapes model and its pretraining (light: no diffusers import)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShapesModelConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_heads: int = 4
    text_hidden_size: int = 64
    text_layers: int = 2
    max_prompt_tokens: int = 16


@dataclass
class PretrainConfig:
    out_dir: str = "find_ray/shapes/model"  # the shipped pipeline folder
    state_dir: str = "runs/pretrain-shapes"  # resumable training state (not shipped)
    seed: int = 0
    steps: int = 4500
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    save_every: int = 250
    threads: int = 2
    bf16: bool = False  # CPU autocast: measured 0.80 vs 0.85 s/step here, not worth the precision
    model: ShapesModelConfig = field(default_factory=ShapesModelConfig)
