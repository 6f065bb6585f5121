"""LoRA adapters: start as the identity, train alone."""

from __future__ import annotations

import torch

from find_ray.baselines.lora import add_lora
from find_ray.shapes.components import build_pipeline
from tests.conftest import TINY_SHAPES


def test_lora_starts_as_the_base_unet_and_only_it_trains():
    torch.manual_seed(0)
    unet = build_pipeline(TINY_SHAPES).unet
    x, t, text = torch.randn(2, 3, 8, 8), torch.tensor(500), torch.randn(2, 5, 16)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
    params = add_lora(unet, rank=2)
    assert params and all("lora" in n for n, p in unet.named_parameters() if p.requires_grad)
    out = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(out, before)
    out.square().mean().backward()
    assert all(p.grad is None for p in unet.parameters() if not p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in params)
