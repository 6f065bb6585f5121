"""LoRA on the UNet's attention projections (peft, through diffusers' `add_adapter`), the
trainable part of the fine-tuning peers (DDPO, DRTune); the base weights stay frozen."""

from __future__ import annotations

import torch

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(
    unet: torch.nn.Module, rank: int = 4, alpha: float | None = None
) -> list[torch.Tensor]:
    """Freezes `unet`, adds rank-`rank` adapters to its attention projections and returns the
    adapters' parameters. peft starts each adapter's B at zero: the UNet is unchanged until a
    step is taken."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha or rank,
            init_lora_weights="gaussian",
            target_modules=list(ATTENTION),
        )
    )
    return [p for p in unet.parameters() if p.requires_grad]
