"""Every model family through the backend: tiny random pipelines saved to disk and loaded by
`model.path`, bit-exact with the plain pipeline given the same `latents=`; the cheap checks and
their one-line errors; and (marked ray) a few FIND updates per family through the Ray system.
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
from tests.tiny_pipelines import TINY, save_tiny
from tests.tiny_rewards import tiny_reward

PROMPTS = ["a red circle", "two blue squares"]
SAMPLER = {  # family -> (steps, guidance): turbo is one step without guidance
    "sd": (2, 3.0),
    "sdxl": (2, 3.0),
    "turbo": (1, 0.0),
    "t2v": (2, 3.0),
    "animatediff": (2, 3.0),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> folder of its tiny pipeline, each built once per module."""
    folders: dict[str, object] = {}

    def get(family: str):
        if family not in folders:
            folders[family] = save_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return folders[family]

    return get


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


@pytest.mark.parametrize("family", list(TINY))
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
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelPathError, match="holds a FluxPipeline; supported: "):
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


CONFIGS = {"sd": "sd15", "sdxl": "sdxl", "turbo": "sd-turbo", "t2v": "t2v"}
TINY_RUN = [  # the shipped GPU config, shrunk to the tiny model on 2 CPU cores
    "model.device=cpu",
    "model.dtype=float32",
    "model.height=0",
    "model.width=0",
    "model.num_frames=2",
    "reward.device=cpu",
    "reward.dtype=float32",
    "eval.quality.device=cpu",
    "ray.rollout_num_gpus=0",
    "ray.reward_num_gpus=0",
    "ray.rollout_num_cpus=0.5",
    "ray.num_rollout_actors=1",
    "ray.rollouts_per_task=4",
    "ray.grid_every=0",
    "ray.max_restarts=0",
    "train.prompts=[a red circle,two blue squares]",
    "train.iterations=2",
    "train.samples_per_prompt=4",
    "train.rollout_batch_size=4",
    "eval.samples_per_prompt=2",
    "eval.batch_size=4",
    "learner.drcm_pool=2",
    "learner.drcm_steps=2",
    "learner.loss.drcm_hidden=8",
]


@pytest.mark.ray
@pytest.mark.parametrize("family", ["sd", "sdxl", "turbo", "t2v"])
def test_find_updates_through_ray_on_each_family(ray_local, tiny, tmp_path, family, capsys, caplog):
    """Two FIND updates on Ray from the shipped config, shrunk to the tiny model and scored by
    the config's own reward (ImageReward, PickScore, CLIPScore, video CLIP) with tiny weights
    in their real formats: the final checkpoint, the run's policy and its metrics."""
    from find_ray import cli
    from find_ray.config import load_config

    run, config = tmp_path / "run", f"configs/{CONFIGS[family]}.yaml"
    argv = ["train", "--config", config, *TINY_RUN]
    argv += [f"model.path={tiny(family)}", f"model.steps={SAMPLER[family][0]}"]
    reward = load_config(config).reward.name
    argv += tiny_reward(reward, tmp_path / "reward")
    argv += tiny_reward("aesthetic", tmp_path / "quality", key="eval.quality")
    rc = cli.main([*argv, f"train.out_dir={run}"])
    err = capsys.readouterr().err
    assert rc == 0, f"{err}\n{caplog.text}"
    checkpoint = run / "checkpoint"
    assert json.loads((checkpoint / "meta.json").read_text())["version"] == 2, err
    policy = load_policy(checkpoint / "policy.safetensors")
    assert tuple(policy.shape) == ((4, 2, 8, 8) if family == "t2v" else (4, 8, 8))
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert torch.equal(load_policy(run / "policy.safetensors").mu, policy.mu)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["rollouts"]["stored"] == 2 * 2 * 4  # every rollout scored by `reward`
    assert load_config(run / "config.yaml").reward.name == reward
    assert {"base", "trained"} <= set(metrics["quality"]["quality"])  # aesthetic, beside it


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("reward.weights_path=/nowhere/ImageReward.pt", "no weights at /nowhere/ImageReward.pt"),
        ("reward.name=imagereword", "unknown scorer 'imagereword'"),
        ("model.family=sdxl", "model.family 'sdxl' but"),
        ("model.path=/nowhere/sd15", "/nowhere/sd15"),
        ("eval.quality.weights_path=/nowhere/head.pth", "eval.quality 'aesthetic': no weights"),
    ],
)
def test_train_fails_in_one_line_before_any_actor(
    tiny, tmp_path, override, says, capsys, monkeypatch
):
    """`find-ray train --config configs/sd15.yaml model.path=DIR` with a bad reward or model:
    exit 2, one line naming it, and no Ray started (init is never called)."""
    import ray

    from find_ray import cli

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called before the config was checked")

    monkeypatch.setattr(ray, "init", no_ray)
    argv = ["train", "--config", "configs/sd15.yaml", f"model.path={tiny('sd')}", override]
    capsys.readouterr()  # the fixture's own output
    assert cli.main([*argv, f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()
