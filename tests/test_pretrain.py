"""Pretraining is seeded and resumes exactly; the shipped model loads and follows prompts."""

import pytest
import torch
from safetensors.torch import load_file

from find_ray.backends import PipelineBackend
from find_ray.config import ModelConfig, RewardConfig
from find_ray.rewards import make_reward
from find_ray.shapes.pretrain import PretrainConfig, pretrain
from tests.conftest import TINY_SHAPES


def tiny_run(tmp_path, name: str, steps: int) -> PretrainConfig:
    return PretrainConfig(
        out_dir=str(tmp_path / name / "model"),
        state_dir=str(tmp_path / name / "state"),
        steps=steps,
        batch_size=4,
        warmup_steps=1,
        save_every=2,
        threads=1,
        model=TINY_SHAPES,
    )


def unet_weights(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    return load_file(f"{cfg.out_dir}/unet/diffusion_pytorch_model.safetensors")


def test_pretraining_is_seeded_and_resumes_exactly(tmp_path):
    straight = tiny_run(tmp_path, "a", steps=4)
    pretrain(straight)
    again = tiny_run(tmp_path, "b", steps=4)
    pretrain(again)
    interrupted = tiny_run(tmp_path, "c", steps=4)
    pretrain(interrupted, max_minutes=0.0)  # stops (and saves) after its first step
    pretrain(interrupted)  # resumes from the saved state
    reference = unet_weights(straight)
    for other in (again, interrupted):
        weights = unet_weights(other)
        assert all(torch.equal(reference[k], weights[k]) for k in reference)


@pytest.mark.slow
def test_shipped_model_follows_a_simple_prompt():
    backend = PipelineBackend.from_config(ModelConfig())
    z = torch.randn((8, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
    images = backend.generate(z, ["three blue squares"] * 8)
    scores, info = make_reward(RewardConfig())(images, ["three blue squares"] * 8)
    assert info["colours_present"].mean() >= 0.75 and scores.mean() > 0.5
