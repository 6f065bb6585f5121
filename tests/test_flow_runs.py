"""Runs on the flow-matching families from their shipped configs, shrunk to tiny pipelines:
the amortized policy on each (its text embedding from the family's encoder), and a FLUX run
served (the generator, and marked ray the Serve app over HTTP on 127.0.0.1).

(FIND updates through Ray from each shipped config: test_backend_families.)
"""

from __future__ import annotations

import base64
import io
import socket

import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from find_ray import cli
from find_ray.algo.amortized import AmortizedNoisePolicy
from find_ray.backends import make_backend
from find_ray.config import load_config
from find_ray.images import to_uint8
from find_ray.runs.folder import load_run_policy
from find_ray.serve.app import png_bytes
from find_ray.serve.generator import AlignedGenerator
from tests.tiny_pipelines import SHIPPED, pack, tiny_folders, tiny_run_argv

FLOW_CONFIGS = ["sd35", "flux-schnell", "flux-dev", "wan"]
AMORTIZED = [
    "policy.kind=amortized",
    "policy.hidden=16",
    "learner.optimizer=adamw",
    "learner.loss.policy_lr=0.05",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_folders(tmp_path_factory)


def train_without_ray(tiny, config: str, folder, *overrides: str):
    """`find-ray train --no-ray --config configs/<config>.yaml model.path=DIR ...` on its tiny
    pipeline; the run folder."""
    argv = tiny_run_argv(tiny, config, folder)
    assert cli.main([argv[0], "--no-ray", *argv[1:], *overrides]) == 0
    return folder / "run"


@pytest.mark.slow
@pytest.mark.parametrize("config", FLOW_CONFIGS)
def test_the_amortized_policy_on_each_flow_family(tiny, tmp_path, config):
    """Trained from the family's own prompt embeddings (pooled CLIP for SD3 and FLUX, mean
    umT5 for Wan), it moves away from N(0, I) and maps a prompt it never saw, by that prompt's
    embedding, to a noise the pipeline denoises."""
    run = train_without_ray(tiny, config, tmp_path, *AMORTIZED)
    cfg = load_config(run / "config.yaml")
    policy = load_run_policy(run, cfg.train.prompts).policy
    backend = make_backend(cfg.model)
    assert isinstance(policy, AmortizedNoisePolicy)
    assert tuple(policy.shape) == backend.latent_shape == SHIPPED[config][2]
    torch.testing.assert_close(policy.embeddings, backend.encode_prompts(cfg.train.prompts))
    with torch.no_grad():
        mu, sigma = policy.mean_std_of(backend.encode_prompts(["a green triangle"]))
    assert mu.abs().max() > 0  # moved from N(0, I), also for an unseen prompt
    z = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    out = backend.generate(z, ["a green triangle"])
    assert out.shape[0] == 1 and torch.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


@pytest.fixture(scope="module")
def flux_run(tiny, tmp_path_factory):
    """A per-prompt FIND run of configs/flux-schnell.yaml on a tiny FLUX pipeline."""
    return train_without_ray(tiny, "flux-schnell", tmp_path_factory.mktemp("flux-run"))


@pytest.mark.slow
def test_a_flux_run_serves_its_noise_through_the_packing(flux_run, tiny):
    """The served images are the plain FluxPipeline's (with the config's options) for the
    trained noise, packed."""
    gen = AlignedGenerator(str(flux_run))
    info = gen.describe()
    prompt = info.prompts[0]
    job = info.job(prompt, 2, 5)
    assert job.policy == "trained" and gen.backend.latent_shape == (16, 8, 8)
    (result,) = gen.generate([job])
    z = gen.noise(job, gen.run)
    plain = DiffusionPipeline.from_pretrained(tiny("flux-schnell"))
    plain.vae.enable_slicing()  # the config's model.vae_slicing
    expected = plain(
        [prompt] * 2,
        latents=pack(z),
        num_inference_steps=info.steps,
        guidance_scale=info.guidance,
        height=16,
        width=16,
        max_sequence_length=256,
        output_type="pt",
    ).images
    assert torch.equal(result.images, expected)
    base = gen.generate([info.job(prompt, 2, 5, policy="base")])[0]
    assert not torch.equal(base.images, result.images)


# per config: the denoiser passes a served image costs at 2 steps, and its decoded shape
SERVED = {
    "sd35": (4, (3, 16, 16)),  # CFG 4.5 doubles each step
    "flux-dev": (2, (3, 16, 16)),  # guidance-distilled: one pass a step at guidance 3.5
    "wan": (4, (5, 3, 32, 32)),  # CFG 5; a video of 5 frames
}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(SERVED))
def test_the_generator_serves_a_run_of_each_family(tiny, tmp_path, config):
    """A run of each shipped flow config is served: trained noise, the denoiser calls its
    family spends, a video as a film strip of its frames in the response's PNG."""
    run = train_without_ray(tiny, config, tmp_path)
    gen = AlignedGenerator(str(run))
    info = gen.describe()
    job = info.job(info.prompts[0], 1, 0)
    calls, shape = SERVED[config]
    assert job.policy == "trained" and job.calls_per_image == calls
    (result,) = gen.generate([job])
    assert tuple(result.images.shape[1:]) == shape and torch.isfinite(result.images).all()
    png = Image.open(io.BytesIO(png_bytes(to_uint8(result.images)[0])))
    frames = shape[0] if len(shape) == 4 else 1
    assert png.size == (shape[-1] * frames, shape[-2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_serve_on_a_flux_run(ray_local, flux_run):
    import httpx
    from ray import serve

    from find_ray.serve.launch import deploy
    from find_ray.serve.schema import ServeArgs

    args = ServeArgs(run_dir=str(flux_run), num_cpus=0.5, max_batch_size=4)
    url, args = deploy(args, "127.0.0.1", free_port())
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            assert client.get("/healthz").json() == {"status": "ok", "policy_version": 2}
            prompt = client.get("/prompts").json()["prompts"][0]
            response = client.post("/generate", json={"prompt": prompt, "n": 2, "seed": 3})
            assert response.status_code == 200, response.text
            images = response.json()["images"]
            assert [i["policy"] for i in images] == ["trained", "trained"]
            png = Image.open(io.BytesIO(base64.b64decode(images[0]["png_base64"])))
            assert png.size == (16, 16)
            bad = client.post("/generate", json={"prompt": prompt, "steps": 0})
            assert bad.status_code == 422
    finally:
        serve.shutdown()
