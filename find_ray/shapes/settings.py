"""Settings of the shapes model and its pretraining (light: no diffusers import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# `find-ray pretrain-shapes --flow`: the flow-matching model's objective and folders (the
# command line's own overrides come after these, so they still win)
FLOW_OVERRIDES = [
    "pretrain.objective=flow",
    "pretrain.out_dir=find_ray/shapes/model_flow",
    "pretrain.state_dir=runs/pretrain-shapes-flow",
]


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
    # v_prediction: DDIM model (ShapesPipeline); flow: rectified flow, the unet predicts
    # eps - x_0 at x_t = (1 - t) x_0 + t eps, t ~ U(0, 1) (ShapesFlowPipeline)
    objective: Literal["v_prediction", "flow"] = "v_prediction"
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
