"""Pretraining (both objectives) is seeded and resumes exactly; the shipped model loads and
follows prompts."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from find_ray.backends import PipelineBackend, make_backend
from find_ray.cli import main
from find_ray.config import ModelConfig, RewardConfig
from find_ray.errors import ConfigError
from find_ray.rewards import make_reward
from find_ray.shapes.components import build_flow_pipeline
from find_ray.shapes.flow_pipeline import ShapesFlowPipeline
from find_ray.shapes.pretrain import PretrainConfig, flow_loss, make_batch, pretrain
from tests.conftest import TINY_SHAPES


def tiny_run(tmp_path, name: str, steps: int, objective: str = "v_prediction") -> PretrainConfig:
    return PretrainConfig(
        out_dir=str(tmp_path / name / "model"),
        state_dir=str(tmp_path / name / "state"),
        objective=objective,
        steps=steps,
        batch_size=4,
        warmup_steps=1,
        save_every=2,
        threads=1,
        model=TINY_SHAPES,
    )


def unet_weights(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    return load_file(f"{cfg.out_dir}/unet/diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("objective", ["v_prediction", "flow"])
def test_pretraining_is_seeded_and_resumes_exactly(tmp_path, objective):
    straight = tiny_run(tmp_path, "a", steps=4, objective=objective)
    pretrain(straight)
    again = tiny_run(tmp_path, "b", steps=4, objective=objective)
    pretrain(again)
    interrupted = tiny_run(tmp_path, "c", steps=4, objective=objective)
    pretrain(interrupted, max_minutes=0.0)  # stops (and saves) after its first step
    pretrain(interrupted)  # resumes from the saved state
    reference = unet_weights(straight)
    for other in (again, interrupted):
        weights = unet_weights(other)
        assert all(torch.equal(reference[k], weights[k]) for k in reference)
    index = json.loads((tmp_path / "a" / "model" / "model_index.json").read_text())
    flow = objective == "flow"
    assert index["_class_name"] == ("ShapesFlowPipeline" if flow else "ShapesPipeline")
    assert index["scheduler"][1] == ("FlowMatchEulerDiscreteScheduler" if flow else "DDIMScheduler")


def test_flow_training_state_does_not_resume_another_objective(tmp_path):
    """A state folder holds one objective: resuming it with the other is a one-line error."""
    pretrain(tiny_run(tmp_path, "a", steps=2, objective="flow"), max_minutes=0.0)
    with pytest.raises(ConfigError, match="pretrain.objective"):
        pretrain(tiny_run(tmp_path, "a", steps=2, objective="v_prediction"))


def test_flow_loss_is_the_rectified_flow_objective():
    """x_t = (1 - t) x_0 + t eps, the unet fed 1000 t: an oracle answering (x_t - x_0) / t =
    eps - x_0 scores ~0, one answering the reversed velocity x_0 - eps scores 4 E[(eps - x_0)^2]."""
    import random

    pipe = build_flow_pipeline(TINY_SHAPES)
    x0, captions = make_batch(random.Random(0), 4, 0.0)

    def oracle(sign: float):
        def unet(noisy, timestep, encoder_hidden_states):
            t = (timestep / 1000).view(-1, 1, 1, 1)
            return SimpleNamespace(sample=sign * (noisy - x0) / t)

        return SimpleNamespace(
            unet=unet, encode_prompt=pipe.encode_prompt, scheduler=pipe.scheduler
        )

    torch.manual_seed(1)
    assert flow_loss(oracle(1.0), x0, captions).item() < 1e-8
    torch.manual_seed(1)
    noise = torch.randn_like(x0)  # what flow_loss draws first
    torch.manual_seed(1)
    reversed_loss = flow_loss(oracle(-1.0), x0, captions).item()
    assert reversed_loss == pytest.approx(4 * ((noise - x0) ** 2).mean().item(), rel=1e-4)


def test_cli_flow_flag_trains_the_flow_model(tmp_path, capsys):
    """`find-ray pretrain-shapes --flow` picks the flow objective and folders; the user's own
    overrides still win (here: tiny folders, size and steps)."""
    out = tmp_path / "flow-model"
    code = main(
        [
            "pretrain-shapes",
            "--flow",
            f"pretrain.out_dir={out}",
            f"pretrain.state_dir={tmp_path / 'state'}",
            "pretrain.steps=1",
            "pretrain.batch_size=2",
            "pretrain.threads=1",
            "pretrain.model.block_out_channels=[8,16]",
            "pretrain.model.attention_heads=2",
            "pretrain.model.text_hidden_size=16",
            "pretrain.model.text_layers=1",
        ]
    )
    assert code == 0 and f"saved {out}" in capsys.readouterr().out
    pipe = ShapesFlowPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert json.loads((out / "training.json").read_text())["config"]["objective"] == "flow"
    code = main(["pretrain-shapes", "pretrain.objective=diffusion"])
    assert code == 2 and "pretrain.objective" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_model_follows_a_simple_prompt():
    backend = PipelineBackend.from_config(ModelConfig())
    z = torch.randn((8, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
    images = backend.generate(z, ["three blue squares"] * 8)
    scores, info = make_reward(RewardConfig())(images, ["three blue squares"] * 8)
    assert info["colours_present"].mean() >= 0.75 and scores.mean() > 0.5


SHIPPED_FLOW = Path(__file__).resolve().parent.parent / "find_ray" / "shapes" / "model_flow"


@pytest.mark.slow
def test_shipped_flow_model_is_small_and_follows_a_simple_prompt():
    """The shipped flow model (Euler 20 steps, CFG 1.5) loads with from_pretrained, stays
    under 8 MB and draws what a simple prompt asks for."""
    size = sum(f.stat().st_size for f in SHIPPED_FLOW.rglob("*") if f.is_file())
    assert size <= 8 * 2**20
    pipe = ShapesFlowPipeline.from_pretrained(SHIPPED_FLOW)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["three blue squares"] * 8
    z = torch.randn(pipe.latent_shape(8), generator=torch.Generator().manual_seed(0))
    images = pipe(
        prompts, num_inference_steps=20, guidance_scale=1.5, latents=z, output_type="pt"
    ).images
    scores, info = make_reward(RewardConfig())(images, prompts)
    assert info["colours_present"].mean() >= 0.75 and scores.mean() > 0.5
    # model.path=shapes-flow names it; z_T enters by latents=, so the backend's images are these
    backend = make_backend(ModelConfig(path="shapes-flow", steps=20, guidance=1.5, eta=0.0))
    assert torch.equal(backend.generate(z, prompts), images)
