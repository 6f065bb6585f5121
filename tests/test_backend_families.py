"""The unet families through the backend (the flow-matching ones: test_flow_backends): tiny
random pipelines saved to disk and loaded by `model.path`, bit-exact with the plain pipeline
given the same `latents=`; the cheap checks and their one-line errors; and (marked ray) a few
FIND updates per family through the Ray system.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from find_ray.algo.policy_files import load_policy
from find_ray.backends import PipelineBackend, check_model, denoiser_calls
from find_ray.backends.pipeline import SDXLBackend, VideoBackend
from find_ray.config import ModelConfig
from find_ray.errors import ModelPathError
from tests.tiny_pipelines import SHIPPED, tiny_folders, tiny_run_argv

PROMPTS = ["a red circle", "two blue squares"]
UNET_FAMILIES = ["sd", "turbo", "sdxl", "t2v", "animatediff"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_folders(tmp_path_factory)


SAMPLER = {  # family -> (steps, guidance): turbo is one step without guidance
    "sd": (2, 3.0),
    "sdxl": (2, 3.0),
    "turbo": (1, 0.0),
    "t2v": (2, 3.0),
    "animatediff": (2, 3.0),
}


def backend_for(folder, family: str, **options) -> PipelineBackend:
    steps, guidance = SAMPLER[family]
    cfg = ModelConfig(
        path=str(folder), family=family, steps=steps, guidance=guidance, num_frames=3, **options
    )
    return PipelineBackend.from_config(cfg)


def plain_pipeline(folder, family: str):
    """The same folder loaded by diffusers alone (turbo: with the trailing spacing set here)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    if family == "turbo":
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
    return pipe


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", UNET_FAMILIES)
def test_latent_injection_equals_the_plain_pipeline(tiny, family):
    backend = backend_for(tiny(family), family, eta=0.5)
    video = family in ("t2v", "animatediff")
    assert isinstance(backend, VideoBackend if video else PipelineBackend)
    assert backend.latent_shape == ((4, 3, 8, 8) if video else (4, 8, 8))
    z = torch.randn((2, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
    ours = backend.generate(z, PROMPTS, seed=7)
    steps, guidance = SAMPLER[family]
    output = plain_pipeline(tiny(family), family)(
        PROMPTS,
        latents=z,
        num_inference_steps=steps,
        guidance_scale=guidance,
        eta=0.5,
        generator=seeded(7) if family == "t2v" else [seeded(7), seeded(8)],
        output_type="pt",
        **({"num_frames": 3} if video else {}),
    )
    expected = output.frames if video else output.images
    assert ours.shape == ((2, 3, 3, 16, 16) if video else (2, 3, 16, 16))
    assert torch.equal(ours, expected)
    assert ours.min() >= 0 and ours.max() <= 1
    assert not torch.equal(ours, backend.generate(torch.randn_like(z), PROMPTS, seed=7))


def test_sdxl_prompt_embedding_is_text_encoder_2_pooled(tiny):
    backend = backend_for(tiny("sdxl"), "sdxl")
    assert isinstance(backend, SDXLBackend)
    emb = backend.encode_prompts(PROMPTS)
    pipe = backend.pipe
    ids = pipe.tokenizer_2(
        PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        expected = pipe.text_encoder_2(ids).text_embeds
    assert emb.shape == (2, pipe.text_encoder_2.config.projection_dim)
    assert torch.allclose(emb, expected) and not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize("family", ["sd", "t2v", "animatediff"])
def test_prompt_embedding_is_the_pooled_text_output(tiny, family):
    emb = backend_for(tiny(family), family).encode_prompts(PROMPTS)
    assert emb.shape == (2, 16) and not torch.allclose(emb[0], emb[1])


def test_the_legacy_text_to_video_backend_says_so(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="find_ray.backends"):
        backend_for(tiny("t2v"), "t2v")
    assert "TextToVideoSDPipeline is legacy" in caplog.text and "configs/wan.yaml" in caplog.text


def test_turbo_one_step_without_guidance_is_one_unet_pass(tiny):
    backend = backend_for(tiny("turbo"), "turbo")
    scheduler = backend.pipe.scheduler
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert scheduler.config.timestep_spacing == "trailing"
    batches = []
    backend.pipe.unet.register_forward_hook(lambda _m, args, _o: batches.append(len(args[0])))
    backend.generate(torch.randn(2, *backend.latent_shape), PROMPTS)
    assert batches == [2] == [2 * denoiser_calls(1, 0.0)]  # one pass, CFG not doubled
    assert scheduler is backend.pipe.scheduler and scheduler.timesteps.tolist() == [999.0]


def test_scheduler_height_and_width_options(tiny):
    backend = backend_for(tiny("sd"), "sd", scheduler="ddim", height=24, width=32)
    assert backend.latent_shape == (4, 12, 16)
    assert backend.generate(torch.randn(1, 4, 12, 16), PROMPTS[:1]).shape == (1, 3, 24, 32)
    turbo = backend_for(tiny("turbo"), "turbo", scheduler="ddim")
    assert type(turbo.pipe.scheduler).__name__ == "DDIMScheduler"
    assert turbo.pipe.scheduler.config.timestep_spacing == "trailing"


def test_options_apply_where_they_exist(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="find_ray.backends"):
        backend = backend_for(tiny("sd"), "sd", cpu_offload=True, attention_slicing=True)
    assert "model.cpu_offload ignored" in caplog.text  # no GPU here: placed on the CPU
    assert backend.pipe.device.type == "cpu"
    compiled = backend_for(tiny("sd"), "sd", compile=True)
    assert compiled.pipe.unet._compiled_call_impl is not None  # compiled on first call


def test_loading_draws_no_progress_bars(tiny, capfd):
    import diffusers
    import huggingface_hub
    import transformers

    folder = tiny("sd")
    capfd.readouterr()
    backend_for(folder, "sd")
    err = capfd.readouterr().err
    assert "Loading" not in err and "it/s" not in err
    assert not diffusers.utils.logging.is_progress_bar_enabled()
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert huggingface_hub.utils.are_progress_bars_disabled()


@pytest.mark.parametrize("family", ["sd", "sdxl", "t2v", "animatediff"])
def test_check_model_reads_the_family_from_model_index(tiny, family):
    folder = tiny(family)
    assert check_model(ModelConfig(path=str(folder))) == family
    assert check_model(ModelConfig(path=str(folder), family=family)) == family


def test_check_model_reads_no_weights(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "AnimateDiffPipeline"}))
    assert check_model(ModelConfig(path=str(tmp_path))) == "animatediff"
    assert check_model(ModelConfig(backend="simulated", path=str(tmp_path / "no"))) == ""


@pytest.mark.parametrize(
    ("family", "holds"),
    [("sdxl", "sd"), ("sd", "sdxl"), ("t2v", "sd"), ("turbo", "t2v")],
)
def test_family_mismatch_is_one_line(tiny, family, holds):
    cfg = ModelConfig(path=str(tiny(holds)), family=family)
    for fails in (check_model, PipelineBackend.from_config):
        with pytest.raises(ModelPathError) as e:
            fails(cfg)
        message = str(e.value)
        assert f"model.family {family!r} but {tiny(holds)} holds a " in message
        assert "\n" not in message


def test_unknown_pipeline_class_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    with pytest.raises(ModelPathError, match="holds a QwenImagePipeline; supported: "):
        check_model(ModelConfig(path=str(tmp_path)))


def test_missing_local_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(ModelPathError) as e:
        check_model(ModelConfig(path=str(tmp_path / "sd15")))
    message = str(e.value)
    assert str(tmp_path / "sd15") in message and "model_index.json" in message
    assert "huggingface-cli download" in message and "\n" not in message


def test_offline_hub_id_not_cached_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelPathError) as e:
        check_model(ModelConfig(path="someone/tiny-sd"))
    message = str(e.value)
    assert str(tmp_path / "someone" / "tiny-sd") in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download someone/tiny-sd --local-dir DIR" in message
    assert "\n" not in message


@pytest.mark.ray
@pytest.mark.parametrize("config", list(SHIPPED))
def test_find_updates_through_ray_from_each_shipped_config(
    ray_local, tiny, tmp_path, config, capsys, caplog
):
    """Two FIND updates on Ray from each shipped GPU config, shrunk to its tiny pipeline and
    scored by the config's own reward (ImageReward, PickScore, CLIPScore, HPSv2, video CLIP):
    the final checkpoint, the run's policy and its metrics."""
    from find_ray import cli
    from find_ray.config import load_config

    run = tmp_path / "run"
    rc = cli.main(tiny_run_argv(tiny, config, tmp_path))
    err = capsys.readouterr().err
    assert rc == 0, f"{err}\n{caplog.text}"
    checkpoint = run / "checkpoint"
    assert json.loads((checkpoint / "meta.json").read_text())["version"] == 2, err
    policy = load_policy(checkpoint / "policy.safetensors")
    assert tuple(policy.shape) == SHIPPED[config][2]
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert torch.equal(load_policy(run / "policy.safetensors").mu, policy.mu)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["rollouts"]["stored"] == 2 * 2 * 4  # every rollout scored by `reward`
    reward = load_config(f"configs/{config}.yaml").reward.name
    assert load_config(run / "config.yaml").reward.name == reward
    assert {"base", "trained"} <= set(metrics["quality"]["quality"])  # aesthetic, beside it


@pytest.mark.parametrize(
    ("config", "override", "says"),
    [
        ("sd15", "reward.weights_path=/nowhere/ImageReward.pt", "no weights at /nowhere/Image"),
        ("sd15", "reward.name=imagereword", "unknown scorer 'imagereword'"),
        ("sd15", "model.family=sdxl", "model.family 'sdxl' but"),
        ("sd15", "model.path=/nowhere/sd15", "/nowhere/sd15"),
        ("sd15", "eval.quality.weights_path=/nowhere/head.pth", "eval.quality 'aesthetic': no"),
        ("sd35", "model.family=flux", "model.family 'flux' but"),
        ("flux-dev", "model.path=/nowhere/FLUX.1-dev", "/nowhere/FLUX.1-dev"),
        ("flux-dev", "reward.weights_path=/nowhere/HPS.pt", "/nowhere/HPS.pt"),
        (
            "flux-schnell",
            "model.height=1000",
            "'model.height': flux (pixels) needs a multiple of 16",
        ),
        ("sd35", "model.eta=1.0", "'model.eta': 1, but flow-matching models"),
        ("wan", "model.num_frames=16", "'model.num_frames': wan (num_frames - 1) needs a multi"),
    ],
)
def test_train_fails_in_one_line_before_any_actor(
    tiny, tmp_path, config, override, says, capsys, monkeypatch
):
    """`find-ray train --config configs/<config>.yaml model.path=DIR` with a bad reward or
    model (a family that does not fit, missing weights, a size FLUX cannot pack, a flow
    family's eta): exit 2, one line naming it, and no Ray started (init is never called)."""
    import ray

    from find_ray import cli

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called before the config was checked")

    monkeypatch.setattr(ray, "init", no_ray)
    folder = tiny(SHIPPED[config][0])
    argv = ["train", "--config", f"configs/{config}.yaml", f"model.path={folder}", override]
    capsys.readouterr()  # the fixture's own output
    assert cli.main([*argv, f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()
